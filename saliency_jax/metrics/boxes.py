"""Box metrics: intersection over union, and the pointing game (Zhang et al. 2016).

Boxes are ``(x0, y0, x1, y1)`` in pixels, end-exclusive (the box's pixels are
``m[y0:y1, x0:x1]``), as ``saliency_jax.localize`` returns them. Both functions
broadcast over leading axes and run under ``jit``; several boxes per image
(several instances of the class) are a broadcast away::

    hits = pointing_game(maps[:, None], boxes)   # maps [B,H,W], boxes [B,N,4] -> [B,N]
    hit_any = hits.any(-1)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["box_iou", "pointing_game"]


def _area(box):
    return jnp.clip(box[..., 2] - box[..., 0], 0) * jnp.clip(box[..., 3] - box[..., 1], 0)


def box_iou(a, b):
    """Intersection over union of boxes ``[...,4]`` and ``[...,4]`` (broadcast) -> ``[...]``.

    Empty boxes (``x1 <= x0`` or ``y1 <= y0``) have area 0; two empty boxes
    have IoU 0, not NaN. ILSVRC counts a localisation correct at IoU >= 0.5.
    """
    a = jnp.asarray(a, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    if a.shape[-1:] != (4,) or b.shape[-1:] != (4,):
        raise ValueError(f"box_iou: boxes must be [...,4] (x0, y0, x1, y1); got shapes {a.shape} and {b.shape}")
    return _box_iou(a, b)


@jax.jit
def _box_iou(a, b):
    low = jnp.maximum(a[..., :2], b[..., :2])
    high = jnp.minimum(a[..., 2:], b[..., 2:])
    inter = jnp.prod(jnp.clip(high - low, 0), axis=-1)
    union = _area(a) + _area(b) - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1), 0.0)


def pointing_game(saliency, boxes, *, tolerance: float = 0.0):
    """Does the map's maximum fall in the box? ``[...,H,W]``, ``[...,4]`` -> bool ``[...]``.

    A hit when the largest value of the map is reached at some pixel within
    ``tolerance`` pixels (Euclidean distance to the box) of the box; Zhang et
    al. (2016) use 15 pixels at ImageNet scale. Ties count as a hit if any
    tied maximum is in the box; a map with NaN never hits.

    Args:
      saliency: maps ``[...,H,W]`` in the boxes' pixel frame (resize first).
      boxes: ``[...,4]`` ``(x0, y0, x1, y1)`` end-exclusive.
      tolerance: pixels of slack around the box.
    """
    saliency = jnp.asarray(saliency, jnp.float32)
    boxes = jnp.asarray(boxes, jnp.float32)
    if saliency.ndim < 2 or boxes.shape[-1:] != (4,):
        raise ValueError(
            f"pointing_game: expected maps [...,H,W] and boxes [...,4]; got shapes {saliency.shape} and {boxes.shape}"
        )
    return _pointing_game(saliency, boxes, jnp.float32(tolerance))


@jax.jit
def _pointing_game(saliency, boxes, tolerance):
    height, width = saliency.shape[-2:]
    ys = jnp.arange(height, dtype=jnp.float32)[:, None]
    xs = jnp.arange(width, dtype=jnp.float32)[None, :]
    b = boxes[..., None, None, :]
    dx = jnp.maximum(jnp.maximum(b[..., 0] - xs, xs - (b[..., 2] - 1)), 0)
    dy = jnp.maximum(jnp.maximum(b[..., 1] - ys, ys - (b[..., 3] - 1)), 0)
    near = dx**2 + dy**2 <= tolerance**2
    peak = jnp.max(saliency, axis=(-2, -1))
    inside = jnp.max(jnp.where(near, saliency, -jnp.inf), axis=(-2, -1))
    return inside >= peak
