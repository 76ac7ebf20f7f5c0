"""Receptive fields: which input pixels can influence a unit of a named layer.

For a unit at (y, x) of a layer the field is the window

    rows [offset_y + y * stride_y, offset_y + y * stride_y + size_y)   (columns alike)

of the input, clipped to the image (`ReceptiveField.window`). `receptive_field`
measures size, stride and offset for any `Model`, with no knowledge of its
code: it probes a copy of the model whose weights are all positive (uniform,
normalised by fan-in) and whose biases are zero, at an all-zero input, with the
deconvnet backward rule. There every activation is 0, every ReLU passes
max(g, 0) back whatever its input, and every product of positive weights is
positive: the gradient of a unit is positive exactly at the pixels some path
of the architecture connects to it, with no cancellation and no dead ReLU
(ReLU6's upper clip is inactive at 0). Max-pooling would send the gradient to
one element of each window at those ties, so the probe spreads it over the
whole window instead (`rules.field_probe`). The support of two neighbouring
units' gradients gives the size, the stride and the offset. When the field is
larger than the image (late layers of a deep network), the probe runs at 2x,
4x, 8x the input size, which keeps every "SAME" padding, and thus the offset,
the same when the input size is a multiple of the layer's total stride.

Uniform positive weights rather than |w|: the field is the architecture's
(a tap whose trained weight happens to be 0 still counts), and products of
fan-in-normalised weights neither overflow nor underflow float32 in deep
networks (|w| sums grow ~40x per 1x1 layer of EfficientNet).

For a plain stack of convolutions the field is analytic
(`analytic_receptive_field`): size 1 + sum_l (k_l - 1) prod_{j<l} s_j,
stride prod_l s_l.

Assumed of the model: which pixels reach a unit does not depend on the input
values (convolutions, pooling, residual adds, elementwise nonlinearities; not
input-dependent routing such as attention).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.attribution.rules import field_probe
from saliency_jax.models.inspect import architecture_key, layer_activation, layer_shapes
from saliency_jax.checkpoints.cache import atomic_write, cache_dir
from saliency_jax.models.model import Model
from saliency_jax.targets import check_layer

MAX_SCALE = 8  # largest input size probed, as a multiple of the model's input size


class ReceptiveField(NamedTuple):
    """Receptive field of a layer's units, in input pixels: (rows, cols) pairs.

    Unit (y, x) sees rows offset[0] + y * stride[0] + [0, size[0]) and columns
    alike, before clipping to the image (offset < 0 where padding is seen).
    """

    size: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]

    def window(self, y: int, x: int, image_hw: Sequence[int]) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1), ends exclusive, of unit (y, x)'s field clipped to an image of size image_hw."""
        y0 = self.offset[0] + int(y) * self.stride[0]
        x0 = self.offset[1] + int(x) * self.stride[1]
        h, w = int(image_hw[0]), int(image_hw[1])
        return max(y0, 0), min(y0 + self.size[0], h), max(x0, 0), min(x0 + self.size[1], w)


def crop(image, window: Sequence[int]):
    """image[y0:y1, x0:x1] for a window (y0, y1, x0, x1): [H,W,...] -> [y1-y0, x1-x0, ...]."""
    y0, y1, x0, x1 = (int(v) for v in window)
    return image[y0:y1, x0:x1]


def analytic_receptive_field(kernels: Sequence[int], strides: Sequence[int], pads: Sequence[int] | None = None):
    """(size, stride, offset) along one axis of a plain stack of convolutions/poolings.

    size = 1 + sum_l (k_l - 1) * J_l, stride = J_L, offset = -sum_l pad_l * J_l,
    with J_l = prod_{j<l} s_j the input-pixel distance between layer l's inputs.

    Args:
      kernels, strides: per layer, input to output.
      pads: per layer, the padding added before the first input row ("low"
        padding; TF "SAME": `layers.same_padding(...)[0]`); None = "VALID".

    Example:
      >>> analytic_receptive_field([3, 3, 3], [2, 1, 1])   # (11, 2, 0)
    """
    if len(kernels) != len(strides) or (pads is not None and len(pads) != len(kernels)):
        raise ValueError("kernels, strides (and pads) must have one entry per layer")
    jumps = [math.prod(strides[:i]) for i in range(len(kernels))]
    size = 1 + sum((k - 1) * j for k, j in zip(kernels, jumps))
    offset = -sum(p * j for p, j in zip(pads or [0] * len(kernels), jumps))
    return size, math.prod(strides), offset


def support_window(grad) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1), ends exclusive, bounding the non-zero entries of grad [H,W] or [H,W,C].

    Raises:
      ValueError: grad is zero everywhere.
    """
    mask = np.asarray(grad) != 0
    if mask.ndim == 3:
        mask = mask.any(axis=-1)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("the gradient is zero everywhere: no support")
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def receptive_field(model: Model, layer: str, *, input_size: Sequence[int] | None = None) -> ReceptiveField:
    """Measured receptive field of `layer`'s units (see the module docstring); cached per model and layer.

    Args:
      model: any `Model`; only its architecture matters, not its weight values.
      layer: a spatial feature name (e.g. "block5").
      input_size: (H, W) the unit positions refer to; default `model.input_size`.

    Returns:
      `ReceptiveField(size, stride, offset)`, each (rows, cols).

    Raises:
      ValueError: unknown or non-spatial layer, or a field larger than
        MAX_SCALE times the input.
    """
    if not isinstance(model, Model):
        raise ValueError("receptive_field needs a Model with named layers, not a bare logit function")
    hw = tuple(int(v) for v in (input_size or model.input_size))
    shape = check_layer(layer, layer_shapes(model, (*hw, model.channels)))
    if len(shape) != 3:
        raise ValueError(f"layer {layer!r} has no spatial positions (shape {shape}): no receptive field")
    key = (architecture_key(model), layer, hw)
    if key not in _CACHE:
        disk_key = _disk_key(model, layer, hw)
        stored = _read_disk(disk_key)
        _CACHE[key] = stored if stored is not None else _measure(model, layer, hw)
        if stored is None:
            _write_disk(disk_key, _CACHE[key])
    return _CACHE[key]


_CACHE: dict = {}

# ---- on-disk cache (zoo models only) ----------------------------------------------------
# Measuring a late layer's field takes seconds (probes at 2-4x the input size); a zoo model's
# architecture is fixed by this package's code, so its fields are kept across processes in
# `cache_dir()/receptive_fields.json`, keyed by package version, module class and fields,
# variable shapes, layer and input size. A user's own module (whose code can change without
# its name or shapes changing) is only cached in memory.
_DISK_FILE = "receptive_fields.json"


def _disk_key(model: Model, layer: str, hw: tuple[int, int]) -> str | None:
    from saliency_jax import __version__  # the package imports this module

    module = model.module
    cls = type(module)
    if not cls.__module__.startswith("saliency_jax.models.") or cls.__module__ == "saliency_jax.models.custom":
        return None
    fields = []
    for f in dataclasses.fields(module):
        if f.name in ("parent", "name"):
            continue
        value = getattr(module, f.name)
        text = (f"{getattr(value, '__module__', '?')}.{getattr(value, '__name__', type(value).__name__)}"
                if callable(value) else repr(value))
        if " at 0x" in text:  # an address: not stable across processes
            return None
        fields.append(f"{f.name}={text}")
    _, treedef, shapes = architecture_key(model)
    text = "|".join([__version__, f"{cls.__module__}.{cls.__qualname__}", *fields, str(treedef), str(shapes),
                     layer, str(hw)])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _read_disk(disk_key: str | None) -> ReceptiveField | None:
    if disk_key is None:
        return None
    try:
        entry = json.loads((cache_dir() / _DISK_FILE).read_text())[disk_key]
        return ReceptiveField(*(tuple(int(v) for v in pair) for pair in entry))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_disk(disk_key: str | None, field: ReceptiveField) -> None:
    if disk_key is None:
        return
    path = cache_dir() / _DISK_FILE
    try:
        try:
            table = json.loads(path.read_text())
        except (OSError, ValueError):
            table = {}
        table[disk_key] = [list(v) for v in field]
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write(json.dumps(table).encode()))
    except OSError:
        pass  # an unwritable cache only costs speed


def _measure(model: Model, layer: str, hw: tuple[int, int]) -> ReceptiveField:
    probe = dataclasses.replace(model, variables=_probe_variables(model.variables))
    scale = 1
    while scale <= MAX_SCALE:
        image_shape = (hw[0] * scale, hw[1] * scale, model.channels)
        grid = layer_shapes(probe, image_shape)[layer][:2]
        if min(grid) >= 2:
            # Two diagonal neighbours just before the centre: their fields fit the image first.
            first = tuple(max(n // 2 - 1, 0) for n in grid)
            units = np.asarray([first, [i + 1 for i in first]], np.int32)
            masks = np.asarray(_supports(probe, units, layer=layer, image_shape=image_shape))
            a, b = (support_window(m) for m in masks)
            axes = [_axis(a[2 * d : 2 * d + 2], b[2 * d : 2 * d + 2], first[d], image_shape[d]) for d in (0, 1)]
            if None not in axes:
                return ReceptiveField(*(tuple(v) for v in zip(*axes)))
        scale *= 2
    raise ValueError(
        f"the receptive field of layer {layer!r} is larger than {MAX_SCALE}x the input size {hw}: not measured"
    )


def _axis(a, b, i: int, n: int):
    """(size, stride, offset) on one axis from the supports [start, end) of units i and i + 1
    in an image of n pixels; None if clipping by the image hides one of them."""
    (a0, a1), (b0, b1) = a, b
    if a0 > 0 and b0 > 0:
        stride = b0 - a0
    elif a1 < n and b1 < n:
        stride = b1 - a1
    else:
        return None
    whole = [(s, e) for s, e in (a, b) if s > 0 and e < n]
    if not whole:
        return None
    start, end = whole[0]
    unit = i if whole[0] == tuple(a) else i + 1
    return end - start, stride, start - unit * stride


def _probe_variables(variables):
    """Positive weights (1 / fan-in), zero biases, means and perturbations, unit scales and variances."""

    def probe(path, leaf):
        leaf = jnp.asarray(leaf)
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf
        names = [str(getattr(k, "key", k)).lower() for k in path]
        name = names[-1] if names else ""
        if "bias" in name or "mean" in name or (names and names[0] == "perturbations"):
            return jnp.zeros_like(leaf)
        if leaf.ndim >= 2:
            return jnp.full_like(leaf, 1.0 / math.prod(leaf.shape[:-1]))
        return jnp.ones_like(leaf)

    return jax.tree_util.tree_map_with_path(probe, variables)


@functools.partial(jax.jit, static_argnames=("layer", "image_shape"))
def _supports(probe: Model, units, *, layer: str, image_shape):
    """[2,H,W] bool: pixels whose probe gradient reaches each of the 2 units (row, col) [2,2]."""
    act, pullback = jax.vjp(field_probe(lambda z: layer_activation(probe, z, layer)),
                            jnp.zeros(image_shape, jnp.float32))
    rows, cols = jnp.arange(act.shape[0]), jnp.arange(act.shape[1])
    cot = ((rows[None, :, None] == units[:, :1, None]) & (cols[None, None, :] == units[:, 1:, None]))
    cot = jnp.broadcast_to(cot[..., None], (2, *act.shape)).astype(act.dtype)
    (grads,) = jax.vmap(pullback)(cot)
    return jnp.sum(grads, axis=-1) > 0


__all__ = ["MAX_SCALE", "ReceptiveField", "analytic_receptive_field", "crop", "receptive_field", "support_window"]
