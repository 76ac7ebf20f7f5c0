"""Segment maps for the perturbation methods: a jittable grid, or scikit-image on the host.

A segment map is an int32 array [H,W] (or per image [B,H,W]) whose value at a
pixel is the id of the feature it belongs to, ids 0..M-1. `segment` returns
the maps the methods use, so they can be shown beside the attributions:

    maps = segment(model.preprocess(photos), "slic", num_segments=50)   # int32 [B,H,W]
    methods.KernelSHAP(segments=maps)                                   # the same features

"grid" needs nothing and runs under `jit`; "slic" and "felzenszwalb" run
scikit-image on the host (`pip install saliency-jax[segments]`; never imported
by the core). Each image is rescaled by its own min and max to [0,1] first,
so a photo and its preprocessed copy (a channel-uniform affine map) give the
same segments. `xrai_masks` builds PAIR saliency's multi-scale Felzenszwalb
masks for XRAI (Kapishnikov et al. 2019).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

SEGMENTATIONS = ("grid", "slic", "felzenszwalb")
XRAI_SCALES = (50, 100, 150, 250, 500, 1200)  # PAIR saliency's Felzenszwalb scales, sigma 0.8, min size 150
XRAI_MIN_SIZE, XRAI_SIGMA, XRAI_RESIZE, XRAI_DILATION = 150, 0.8, (224, 224), 5


def grid_side(num_segments: int) -> int:
    """Cells per side of the "grid" segmentation asked for `num_segments`: floor(sqrt(n))."""
    return math.isqrt(num_segments)


def grid_segments(height: int, width: int, num_segments: int):
    """A g x g grid of near-equal cells (g = floor(sqrt(num_segments))), row-major ids: int32 [H,W] (jittable)."""
    side = grid_side(num_segments)
    rows = (jnp.arange(height) * side) // height
    cols = (jnp.arange(width) * side) // width
    return (rows[:, None] * side + cols[None, :]).astype(jnp.int32)


def relabel(segment_map) -> tuple[np.ndarray, int]:
    """(ids renumbered 0..M-1 in order of value, M) of one host map [H,W]; ValueError for ids < 0."""
    segment_map = np.asarray(segment_map)
    if not np.issubdtype(segment_map.dtype, np.integer):
        raise ValueError(f"a segment map must hold integer ids, got dtype {segment_map.dtype}")
    if segment_map.size == 0:
        raise ValueError("a segment map has no pixels (no segment)")
    if segment_map.min() < 0:
        raise ValueError(f"segment ids must be >= 0 (every pixel in a segment); got {int(segment_map.min())}")
    values, inverse = np.unique(segment_map, return_inverse=True)
    return inverse.reshape(segment_map.shape).astype(np.int32), len(values)


def relabel_batch(maps) -> tuple[np.ndarray, int]:
    """Each map of [..., H, W] renumbered 0..M_b-1; (maps int32, max_b M_b)."""
    maps = np.asarray(maps)
    if maps.size == 0:
        raise ValueError("a segment map has no pixels (no segment)")
    flat = maps.reshape((-1, *maps.shape[-2:]))
    pairs = [relabel(m) for m in flat]
    return np.stack([p[0] for p in pairs]).reshape(maps.shape), max(p[1] for p in pairs)


def _skimage():
    try:
        from skimage import segmentation
    except ImportError:
        raise ImportError("segments 'slic' and 'felzenszwalb' need scikit-image: "
                          "pip install 'saliency-jax[segments]'") from None
    return segmentation


def unit_range(image) -> np.ndarray:
    """One image [H,W,C] rescaled by its own min and max to [0,1] (float64; a constant image -> zeros)."""
    image = np.asarray(image, np.float64)
    low, high = image.min(), image.max()
    return (image - low) / (high - low) if high > low else np.zeros_like(image)


def segment_one(image, method: str = "slic", *, num_segments: int = 50) -> np.ndarray:
    """The segment map int32 [H,W] (ids 0..M-1) of one image [H,W,C], on the host."""
    if method == "grid":
        return np.asarray(grid_segments(image.shape[0], image.shape[1], num_segments))
    segmentation = _skimage()
    rgb = unit_range(image)
    if method == "slic":
        seg = segmentation.slic(rgb, n_segments=num_segments, compactness=10.0, start_label=0, channel_axis=-1)
    elif method == "felzenszwalb":
        seg = segmentation.felzenszwalb(rgb, scale=100.0, sigma=0.5, min_size=max(1, rgb.shape[0] * rgb.shape[1]
                                                                                   // (4 * num_segments)))
    else:
        raise ValueError(f"unknown segmentation {method!r}; choose one of {', '.join(SEGMENTATIONS)}")
    return relabel(seg)[0]


def segment(images, method: str = "slic", *, num_segments: int = 50) -> np.ndarray:
    """Segment maps of images [B,H,W,C] (or one [H,W,C]): int32 [B,H,W] (or [H,W]), ids 0..M-1 per image.

    Args:
      images: photos (uint8) or model-space float images; each is rescaled to [0,1] by its min and max.
      method: "grid" (g x g cells, g = floor(sqrt(num_segments))), "slic" (SLIC superpixels,
        compactness 10) or "felzenszwalb" (scale 100, sigma 0.5, min size H W / (4 num_segments)).
      num_segments: about how many segments (the grid's cells, SLIC's n_segments).
    """
    if method not in SEGMENTATIONS:
        raise ValueError(f"unknown segmentation {method!r}; choose one of {', '.join(SEGMENTATIONS)}")
    images = np.asarray(images)
    if images.ndim == 3:
        return segment_one(images, method, num_segments=num_segments)
    if images.ndim != 4:
        raise ValueError(f"segment expects images [B,H,W,C] or [H,W,C]; got shape {images.shape}")
    return np.stack([segment_one(im, method, num_segments=num_segments) for im in images])


def xrai_masks_one(image) -> np.ndarray:
    """PAIR saliency's XRAI segments of one image [H,W,C]: bool [N,H,W] (Felzenszwalb at 6 scales, dilated).

    As PAIR's `_get_segments_felzenszwalb`: the image rescaled to [-1,1] and
    resized to 224x224 (cubic), segmented at each scale, the maps resized back
    (nearest), one mask per segment, each dilated by a disk of radius 5.
    """
    segmentation = _skimage()
    from skimage.morphology import dilation, disk
    from skimage.transform import resize

    small = resize(unit_range(image) * 2.0 - 1.0, XRAI_RESIZE, order=3, mode="constant", preserve_range=True,
                   anti_aliasing=True)
    masks = []
    for scale in XRAI_SCALES:
        seg = segmentation.felzenszwalb(small, scale=scale, sigma=XRAI_SIGMA, min_size=XRAI_MIN_SIZE)
        seg = resize(seg, image.shape[:2], order=0, preserve_range=True, mode="constant",
                     anti_aliasing=False).astype(int)
        masks.extend(seg == label for label in range(seg.min(), seg.max() + 1))
    footprint = disk(XRAI_DILATION)
    return np.stack([dilation(m, footprint=footprint) for m in masks])


def xrai_masks(images, *, multiple: int = 32) -> np.ndarray:
    """XRAI masks of images [B,H,W,C]: bool [B,N,H,W], N the most any image has, rounded up to `multiple`.

    Images with fewer masks are padded with empty ones (never chosen); the
    rounding keeps the number of compiled shapes small.
    """
    per_image = [xrai_masks_one(im) for im in np.asarray(images)]
    count = -(-max(len(m) for m in per_image) // multiple) * multiple
    out = np.zeros((len(per_image), count, *per_image[0].shape[1:]), bool)
    for b, masks in enumerate(per_image):
        out[b, : len(masks)] = masks
    return out


__all__ = ["SEGMENTATIONS", "grid_segments", "grid_side", "relabel", "relabel_batch", "segment", "segment_one",
           "unit_range", "xrai_masks", "xrai_masks_one"]
