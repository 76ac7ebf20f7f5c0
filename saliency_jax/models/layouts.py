"""Layer layouts of a user's model: which axes of a tapped activation are the image's rows and columns.

One vocabulary, per image (the batch axis, when there is one, always comes first):

  * "HWC": rows, columns, channels (channels-last; Flax, Keras and TensorFlow, the default);
  * "CHW": channels, rows, columns (channels-first; Equinox, PyTorch ports).

Every consumer of a layer (Grad-CAM, unit targets, top-k, receptive fields,
maximisation objectives) reads features as [h,w,K]. A layer declared "CHW" is
transposed to [h,w,K] when it is recorded, and its perturbation point is added
in that layout, so the gradient w.r.t. the feature is exactly the gradient
w.r.t. the user's activation, transposed.

An undeclared layer is checked to be channels-last: its per-image shape is
compared at the model's input size and at twice that size (spatial axes grow,
channel axes do not). A model that only runs at its own size (flatten + dense)
is judged by shape arithmetic instead: rows and columns shrink from the input
by the same stride. A layer that looks channels-first, or could be either, is
refused with a message naming `layouts=`.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp

LAYOUTS = ("HWC", "CHW")


def check_layout(layout, what: str) -> str:
    """`layout` if it is one of `LAYOUTS`; a ValueError explaining the vocabulary otherwise."""
    if layout not in LAYOUTS:
        hint = ""
        if isinstance(layout, str) and layout.upper() in ("NHWC", "NCHW"):
            hint = f" (per image: the batch axis is implied, so {layout!r} is {layout.upper()[1:]!r})"
        raise ValueError(f"{what} must be 'HWC' (channels-last) or 'CHW' (channels-first), got {layout!r}{hint}")
    return layout


def declared_layouts(layouts: Mapping[str, str] | None, layers, default: str) -> tuple[tuple[str, str], ...]:
    """(layer, layout) for each requested layer: the declared one, else `default`.

    Raises:
      ValueError: a layout outside the vocabulary, or one declared for a layer not in `layers`.
    """
    layouts = dict(layouts or {})
    unknown = sorted(set(layouts) - set(layers))
    if unknown:
        raise ValueError(f"layouts= names layer(s) {', '.join(map(repr, unknown))} that are not in layers=")
    return tuple((n, check_layout(layouts.get(n, default), f"layouts[{n!r}]")) for n in layers)


def to_hwc(y, layout: str):
    """A [...,C,H,W] activation as [...,H,W,C] ("CHW"); unchanged for "HWC"."""
    return jnp.moveaxis(y, -3, -1) if layout == "CHW" else y


def from_hwc(h, layout: str):
    """Inverse of `to_hwc`."""
    return jnp.moveaxis(h, -1, -3) if layout == "CHW" else h


def hwc_shape(shape: tuple, layout: str) -> tuple:
    """The per-image shape after `to_hwc`."""
    shape = tuple(shape)
    return (*shape[:-3], shape[-2], shape[-1], shape[-3]) if layout == "CHW" and len(shape) >= 3 else shape


def check_spatial_axes(layer: str, shape, probe_shape, size, *, declared: bool, name: str) -> None:
    """ValueError unless a rank-3 feature [h,w,K] (after its layout) has its spatial axes first.

    Args:
      layer: the layer name (for the message).
      shape: per-image feature shape at the model's input `size` (H, W), channels-last view.
      probe_shape: the same at twice the input size, or None if the model does not run there.
      declared: the user declared this layer's layout (then only a contradicting probe refuses).
      name: the model's name.
    """
    if len(shape) != 3:
        return
    if probe_shape is not None:
        grown = tuple(i for i in range(3) if probe_shape[i] != shape[i])
        if len(grown) == 2 and grown != (0, 1):
            raise ValueError(_message(layer, shape, grown, declared, name))
        return
    if declared:
        return
    first, last = _spatial_pair(shape[0], shape[1], size), _spatial_pair(shape[1], shape[2], size)
    if last and not first:
        raise ValueError(_message(layer, shape, (1, 2), False, name))
    if first and last:
        raise ValueError(
            f"{name}: cannot tell the layout of layer {layer!r} (shape {list(shape)} for a "
            f"{size[0]}x{size[1]} input, a model that runs at that size only): declare it, "
            f"layouts={{{layer!r}: 'HWC'}} (channels-last) or 'CHW' (channels-first)"
        )


def _spatial_pair(p: int, q: int, size) -> bool:
    """True if (p, q) can be (rows, cols) of a map downsampled by one stride from `size` (H, W)."""
    h, w = size
    return p <= h and q <= w and 2 * abs(p * w - q * h) <= max(h, w)


def _message(layer: str, shape, grown, declared: bool, name: str) -> str:
    axes = ", ".join(str(i) for i in grown)
    if declared:
        return (f"{name}: layer {layer!r} was declared with a layout that does not match it: viewed as "
                f"[h,w,K] it has shape {list(shape)}, whose axes {axes} are spatial; fix layouts=")
    return (f"{name}: layer {layer!r} looks channels-first (shape {list(shape)}: axes {axes} follow the "
            f"image size); declare it, layouts={{{layer!r}: 'CHW'}}, so Grad-CAM and unit targets "
            f"read its rows and columns")


__all__ = ["LAYOUTS", "check_layout", "check_spatial_axes", "declared_layouts", "from_hwc", "hwc_shape", "to_hwc"]
