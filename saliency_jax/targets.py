"""Host-side checks for targets that name a unit of a layer, shared by attribution and maximisation.

A unit is (layer name, channel[, position]): `channel` indexes the layer's last
axis and `position` = (row, col) its spatial grid. `shapes` maps each layer
name to its per-image activation shape (`[h,w,K]`, or `[K]` for non-spatial
layers such as "pool"); it is empty for a bare logit function.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

TOP1 = -1  # target value meaning "the image's own top-1 class"


def indices(values, what: str):
    """An int or ints [T] as int32 (tracers checked by dtype and rank only); ValueError otherwise."""
    if isinstance(values, jax.Array):  # also a tracer (inside jit/vmap)
        if not jnp.issubdtype(values.dtype, jnp.integer) or values.ndim > 1:
            raise ValueError(f"{what} must be an int or a sequence of ints, got {values!r}")
        return values.astype(jnp.int32)
    array = np.asarray(values)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer) or array.ndim > 1:
        raise ValueError(f"{what} must be an int or a sequence of ints, got {values!r}")
    if array.ndim == 1 and len(array) == 0:
        raise ValueError(f"{what}: expected at least one index")
    return jnp.asarray(array, jnp.int32)


def positions(position, what: str):
    """(row, col) or [B,2] ints as int32; ValueError otherwise."""
    array = np.asarray(position)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer) or array.shape[-1:] != (2,) \
            or array.ndim > 2:
        raise ValueError(f"{what} must be (row, col) or [B,2] ints, got {array.tolist()!r}"[:200])
    return jnp.asarray(array, jnp.int32)


def check_targets(targets, batch: int, num_classes: int):
    """'top1' / int / ints [B] -> int32 [B] (TOP1 = -1 for 'top1'), or a one-line ValueError."""
    if isinstance(targets, str):
        if targets != "top1":
            raise ValueError(f"targets must be 'top1', an int or ints [B]; got {targets[:40]!r}")
        return jnp.full((batch,), TOP1, jnp.int32)
    t = np.asarray(targets)
    if not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"targets must be integer class indices; got dtype {t.dtype}")
    if t.ndim == 0:
        t = np.full((batch,), int(t))
    if t.shape != (batch,):
        raise ValueError(f"targets must have shape [{batch}] (one per image); got {t.shape}")
    if t.min() < 0 or t.max() >= num_classes:
        raise ValueError(f"targets must lie in [0, {num_classes}); got {t.min()}..{t.max()}")
    return jnp.asarray(t, jnp.int32)


def check_layer(layer: str, shapes: dict) -> tuple:
    """The per-image shape of `layer`; ValueError naming the valid layers if it has none."""
    if layer not in shapes:
        if not shapes:
            raise ValueError(
                f"target needs layer {layer!r}, but a bare logit function has no named features: pass a Model"
            )
        raise ValueError(f"unknown layer {layer!r}; choose one of {', '.join(shapes)}")
    return tuple(shapes[layer])


def check_unit(layer: str, channels, position, shapes: dict, *, center: bool = False) -> None:
    """Raises ValueError unless channel(s) and position(s) exist in `layer`.

    Args:
      layer: a key of `shapes`.
      channels: int or ints [T] (host values).
      position: None, (row, col) or [T,2] in the layer's own grid.
      shapes: {layer: per-image activation shape}.
      center: the target takes the middle of the grid (spatial layers only).
    """
    shape = check_layer(layer, shapes)
    index = np.asarray(channels)
    if index.min() < 0 or index.max() >= shape[-1]:
        bad = index[(index < 0) | (index >= shape[-1])].tolist()
        raise ValueError(f"channel {show(bad)} out of range for layer {layer!r} with {shape[-1]} channels")
    if len(shape) == 1 and (position is not None or center):
        raise ValueError(f"layer {layer!r} has no spatial positions (shape {shape})")
    if position is not None:
        pos = np.asarray(position)
        if pos.shape[-1:] != (2,):
            raise ValueError(f"position must be (row, col), got shape {pos.shape}")
        rows, cols = pos[..., 0], pos[..., 1]
        if rows.min() < 0 or cols.min() < 0 or rows.max() >= shape[0] or cols.max() >= shape[1]:
            raise ValueError(
                f"position {pos.tolist()} out of range for layer {layer!r} of size {shape[0]}x{shape[1]}"
            )


def show(values: list) -> str:
    """One value bare, several as a list (for error messages)."""
    return str(values[0]) if len(values) == 1 else str(values)


REDUCTIONS: dict[str, Callable] = {"sum": jnp.sum, "max": jnp.max, "mean": jnp.mean}
"""How a whole channel (no position) becomes one number: its sum, max or mean over the layer's grid.

One vocabulary for both readers of a channel: attribution's `unit(reduce=...)`
(default "sum", the total activation) and maximisation's
`objectives.channel(reduce=...)` (default "mean", Lucid's channel objective,
whose scale does not grow with the grid)."""


def check_reduce(reduce, what: str) -> str:
    """`reduce` if it is a key of `REDUCTIONS`; ValueError naming the choices otherwise."""
    if not isinstance(reduce, str) or reduce not in REDUCTIONS:
        raise ValueError(f"{what}: reduce must be one of {', '.join(REDUCTIONS)}, got {reduce!r}")
    return reduce
