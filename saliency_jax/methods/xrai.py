"""XRAI (Kapishnikov et al. 2019): rank image regions by the attribution density they add, greedily.

PAIR saliency's `XRAI._xrai` ("full" algorithm) on the device. Given a base
attribution a [H,W] (channel max) and N candidate masks (segments at several
scales, dilated; they overlap), repeat until no mask is left: drop the masks
that add fewer than `min_pixel_diff` new pixels to the selection; pick the
mask whose new pixels have the highest mean attribution (its gain); give those
pixels the gain, add the mask to the selection. Pixels never selected get the
mean attribution over them. High values are the regions chosen first, so the
top-k% of the map is XRAI's top-k% region (`top_region`).

The base is Integrated Gradients averaged over a black (min x) and a white
(max x) baseline with `num_steps` steps, PAIR's default, or any method value
as `base`. The masks are PAIR's Felzenszwalb segments at 6 scales
(`segments.xrai_masks`, scikit-image on the host, from the images `attribute`
is given), or, with `segments="grid"`, grids of 2..`num_segments` cells a side
built on the device. The greedy loop is a `lax.while_loop` of two
matrix-vector products [N, H W] per step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from saliency_jax.methods.base import Method, logit_fn_of, register
from saliency_jax.methods.integrated_gradients import integrated_gradients
from saliency_jax.segments import grid_segments, xrai_masks
from saliency_jax.validate import one_of, positive_int, real

XRAI_SEGMENTS = ("felzenszwalb", "grid")


def grid_masks(height: int, width: int, sides) -> jax.Array:
    """Masks bool [sum s^2, H, W]: every cell of an s x s grid for each s in `sides`."""
    masks = []
    for side in sides:
        cells = grid_segments(height, width, side * side)
        masks.append(cells[None] == jnp.arange(side * side)[:, None, None])
    return jnp.concatenate(masks)


def xrai_regions(attr, masks, *, min_pixel_diff: int = 50, area_threshold=1.0):
    """PAIR's full XRAI on one image: attr [H,W], masks bool [N,H,W] -> the region-gain map [H,W].

    Ties go to the lowest mask index, as in PAIR's loop.
    """
    n = masks.shape[0]
    flat = jnp.asarray(masks).reshape(n, -1).astype(jnp.float32)
    a = jnp.asarray(attr).reshape(-1).astype(jnp.float32)

    def cond(state):
        selected, _, _, done = state
        return ~done & (jnp.mean(selected) <= area_threshold)

    def body(state):
        selected, remaining, gains, _ = state
        free = (~selected).astype(jnp.float32)
        counts = flat @ free
        remaining = remaining & (counts >= min_pixel_diff)
        density = jnp.where(remaining, (flat @ (a * free)) / jnp.maximum(counts, 1.0), -jnp.inf)
        best = jnp.argmax(density)
        done = ~jnp.any(remaining)
        added = (flat[best] > 0) & ~selected & ~done
        gains = jnp.where(added, density[best], gains)
        return selected | added, remaining.at[best].set(False), gains, done

    start = (jnp.zeros(a.shape, bool), jnp.ones((n,), bool), jnp.full(a.shape, -jnp.inf), jnp.array(False))
    selected, _, gains, _ = lax.while_loop(cond, body, start)
    rest = ~jnp.isfinite(gains)
    fill = jnp.sum(jnp.where(rest, a, 0.0)) / jnp.maximum(jnp.sum(rest), 1)
    return jnp.where(rest, fill, gains).reshape(np.shape(attr))


def top_region(xrai_map, fraction: float = 0.2) -> np.ndarray:
    """XRAI's top `fraction` region: bool [H,W], the pixels at or above the (1 - fraction) quantile of the map."""
    values = np.asarray(xrai_map)
    return values >= np.quantile(values, 1.0 - fraction)


def pair_ig(logit_fn, x, target, *, num_steps: int, chunk_size=None):
    """PAIR's XRAI base: IG from the black (min x) and white (max x) images, averaged: [H,W,C]."""
    return 0.5 * sum(integrated_gradients(logit_fn, x, target, baseline=b, num_steps=num_steps,
                                          chunk_size=chunk_size) for b in (jnp.min(x), jnp.max(x)))


@register("xrai")
@dataclasses.dataclass(frozen=True)
class XRAI(Method):
    """XRAI regions over `base`'s attribution (default: PAIR's black/white IG with `num_steps` steps).

    Fields:
      base: a method value for the base attribution, or None (PAIR's IG).
      num_steps: IG steps per baseline of the default base (static).
      segments: "felzenszwalb" (PAIR's masks, host) or "grid" (device grids).
      num_segments: the finest grid's cells per side with "grid" (static).
      min_pixel_diff: masks adding fewer new pixels are dropped (PAIR's 50).
      area_threshold: stop once this fraction of the image is selected (PAIR's 1.0).
      masks: bool [N,H,W] or per image [B,N,H,W]: the candidate masks (set by
        `attribute` from the images with "felzenszwalb"; traced).
      chunk_size: path points at once for the default base (static).
    """

    base: Method | None = None
    num_steps: int = 100
    segments: str = "felzenszwalb"
    num_segments: int = 8
    min_pixel_diff: int = 50
    area_threshold: float = 1.0
    masks: object = None
    chunk_size: int | None = None

    traced = ("masks",)
    per_image = ("masks",)

    def __post_init__(self):
        positive_int("xrai: num_steps", self.num_steps)
        one_of("xrai segments", self.segments, XRAI_SEGMENTS)
        positive_int("xrai: num_segments", self.num_segments)
        positive_int("xrai: min_pixel_diff", self.min_pixel_diff)
        real("xrai: area_threshold", self.area_threshold, low=0.0, high=1.0, open_low=True)
        if self.base is not None and not isinstance(self.base, Method):
            raise ValueError(f"xrai: base must be a method value or None, got {type(self.base).__name__}")

    @property
    def needs_key(self) -> bool:
        return self.base is not None and self.base.needs_key

    @property
    def needs_layers(self) -> bool:
        return self.base is not None and self.base.needs_layers

    def per_image_shape(self, name, image_shape):
        if name == "masks" and self.masks is not None:
            return (np.shape(self.masks)[-3], *image_shape[:2])
        return tuple(image_shape)

    def for_images(self, x):
        if self.segments == "felzenszwalb" and self.masks is None:
            return dataclasses.replace(self, masks=xrai_masks(np.asarray(x)))
        return self

    def check(self, model, image_shape):
        super().check(model, image_shape)
        if self.base is not None:
            self.base.check(model, image_shape)
        if self.segments == "grid" and self.num_segments > min(image_shape[:2]):
            raise ValueError(f"xrai: a {self.num_segments}x{self.num_segments} grid does not fit an image of "
                             f"{image_shape[0]}x{image_shape[1]} pixels")

    def prepare(self, model, image_shape, *, images_per_call):
        if self.base is None:
            return super().prepare(model, image_shape, images_per_call=2 * images_per_call)
        base = self.base.prepare(model, image_shape, images_per_call=images_per_call)
        return super(XRAI, dataclasses.replace(self, base=base)).prepare(model, image_shape,
                                                                         images_per_call=images_per_call)

    inner = property(lambda self: "num_steps" if self.base is None else None)

    def explain(self, model, x, target, *, key=None):
        if self.base is None:
            attr = pair_ig(logit_fn_of(model), x, target, num_steps=self.num_steps, chunk_size=self.chunk_size)
        else:
            attr = self.base.explain(model, x, target, key=key)
        masks = self.masks
        if masks is None:
            if self.segments != "grid":
                raise ValueError("xrai: felzenszwalb masks are computed from the images: call attribute(...) or "
                                 "pass masks=segments.xrai_masks(images)")
            masks = grid_masks(x.shape[0], x.shape[1], range(2, self.num_segments + 1))
        regions = xrai_regions(jnp.max(attr, axis=-1), masks, min_pixel_diff=self.min_pixel_diff,
                               area_threshold=self.area_threshold)
        return jnp.broadcast_to(regions[..., None], x.shape)
