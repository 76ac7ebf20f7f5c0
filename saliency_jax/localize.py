"""Weakly supervised object localisation from a saliency map (Simonyan et al. 2014, Sec. 3.2).

The paper turns a class saliency map into a box in three steps:

1. **Seeds.** Pixels whose saliency is above the map's 95% quantile are
   foreground seeds; pixels below its 30% quantile are background seeds.
2. **Graph cut.** Colour models (Gaussian mixtures) of the two seed sets drive
   a graph-cut segmentation of the photo: OpenCV's GrabCut initialised with a
   mask (``pip install 'saliency-jax[localize]'``).
3. **Box.** The bounding box of the largest connected component of the
   foreground.

The saliency map shows only the most discriminative part of an object (the
cat's face); the colour model propagates the label to the rest of the object.

Host-side NumPy (+ OpenCV), outside ``jit``: GrabCut is a sequential max-flow.

Boxes are ``(x0, y0, x1, y1)`` in pixels of the photo, end-exclusive, so the
box's pixels are ``image[y0:y1, x0:x1]``.

Degenerate maps: a map with NaN or Inf raises ``ValueError`` (the gradients
upstream are broken, as ``maps.check_finite`` reports); a *constant* map (all
zero included: a dead ReLU network, a class with no evidence) has no salient
region and gives the explicit empty result ``Localization(mask all False,
box=None)``, so a batch job or ``localize_topk`` goes on.

Example:
  >>> model = saliency_jax.load_model()
  >>> photo = saliency_jax.load_image("cat.jpg")                   # uint8 [H,W,3]
  >>> grads = saliency_jax.attribute(model, model.preprocess([photo]), "top1")
  >>> loc = localize(photo, saliency_jax.saliency_map(grads)[0])   # map [224,224] -> photo size
  >>> loc.box                                                      # (x0, y0, x1, y1)
  >>> [(c.label, c.localization.box) for c in localize_topk(model, photo, k=5)]
"""

from __future__ import annotations

import numbers
import warnings
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from saliency_jax.filters import gaussian_filter

__all__ = [
    "ClassLocalization",
    "Localization",
    "SEGMENTATIONS",
    "draw_boxes",
    "largest_component",
    "localize",
    "localize_topk",
    "resize_map",
    "seeds",
]

SEGMENTATIONS = ("grabcut", "threshold")
"""``localize(segmentation=...)``: ``grabcut`` (the paper; needs OpenCV) or ``threshold`` (the
foreground seeds alone, no colour model; NumPy only: an ablation and a fallback). ("method"
means the attribution method everywhere else, as in ``localize_topk(method=...)``.)"""

_EXTRA_HINT = "pip install 'saliency-jax[localize]'"


def __getattr__(name: str):
    if name == "METHODS":  # the old name of SEGMENTATIONS
        warnings.warn("saliency_jax.localize.METHODS is deprecated: use SEGMENTATIONS", DeprecationWarning,
                      stacklevel=2)
        return SEGMENTATIONS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Localization(NamedTuple):
    """The localised object: ``mask`` bool [H,W] (the largest component) and its ``box``.

    ``box`` is ``(x0, y0, x1, y1)`` end-exclusive in photo pixels, or ``None``
    when nothing was found (constant map, or an empty graph-cut foreground).
    """

    mask: np.ndarray
    box: tuple[int, int, int, int] | None

    @property
    def empty(self) -> bool:
        return self.box is None


class ClassLocalization(NamedTuple):
    """One of ``localize_topk``'s answers: a class, its probability and where it is."""

    target: int
    label: str
    probability: float
    localization: Localization


def import_cv2():
    """The cv2 module, or an ImportError naming the extra to install."""
    try:
        import cv2
    except ImportError:
        raise ImportError(f"localisation by graph cut needs OpenCV: {_EXTRA_HINT}") from None
    return cv2


def _check_quantile(name: str, q) -> float:
    if isinstance(q, bool) or not isinstance(q, numbers.Real) or not 0.0 < float(q) < 1.0:
        raise ValueError(f"localize: {name} must be a number in (0, 1), got {q!r}")
    return float(q)


def _check_image(image) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(
            f"localize: expected the photo as uint8 [H,W,3], got dtype {array.dtype} "
            "(pass the image itself, not the preprocessed model input)"
        )
    if array.ndim != 3 or array.shape[-1] != 3 or 0 in array.shape:
        raise ValueError(f"localize: expected an RGB photo [H,W,3], got shape {array.shape}")
    return np.ascontiguousarray(array)


def resize_map(saliency, size: tuple[int, int], *, smooth_sigma: float = 0.0) -> np.ndarray | None:
    """The map ``localize`` seeds from: a real map ``[h,w]`` checked, smoothed, resized to ``size``.

    Returns float32 ``[H,W]`` (bilinear, Pillow mode 'F'), or ``None`` for a
    constant map (decided on the raw values, before any resampling).

    Raises:
      ValueError: not a real ``[h,w]`` map, or NaN/Inf values.
    """
    values = np.asarray(saliency)
    if values.dtype == object or not (np.issubdtype(values.dtype, np.number) or values.dtype == bool):
        raise ValueError(f"localize: expected a real-valued saliency map, got dtype {values.dtype}")
    if np.iscomplexobj(values):
        raise ValueError(f"localize: expected a real-valued saliency map, got dtype {values.dtype}")
    if values.ndim != 2 or 0 in values.shape:
        hint = "; pass one map of a batch, e.g. maps[0]" if values.ndim == 3 else ""
        raise ValueError(f"localize: expected one saliency map [h,w], got shape {values.shape}{hint}")
    values = values.astype(np.float32)
    if not np.isfinite(values).all():
        n_nan = int(np.isnan(values).sum())
        raise ValueError(
            f"localize: the saliency map contains NaN or Inf values ({n_nan} NaN, "
            f"{int((~np.isfinite(values)).sum()) - n_nan} Inf of {values.size}); the gradients were not finite"
        )
    if values.max() == values.min():
        return None
    if smooth_sigma > 0:
        values = np.asarray(gaussian_filter(values, float(smooth_sigma), axes=(0, 1)), np.float32)
    if values.shape != size:
        values = np.asarray(Image.fromarray(values).resize(size[::-1], Image.Resampling.BILINEAR), np.float32)
    return values


def seeds(saliency: np.ndarray, fg_quantile: float = 0.95, bg_quantile: float = 0.30) -> tuple[np.ndarray, np.ndarray]:
    """Foreground and background seed masks of a non-constant map ``[H,W]``.

    Foreground: ``s >= quantile(s, fg_quantile)``; background:
    ``s <= quantile(s, bg_quantile)``. When ties make the two thresholds equal
    (e.g. more than 65% of a sparse map is exactly 0), the foreground is what is
    strictly above the tie (or the tied maximum itself) and the background the
    rest of the low values, so both are non-empty and disjoint.
    """
    t_fg = np.quantile(saliency, fg_quantile)
    t_bg = np.quantile(saliency, bg_quantile)
    if t_fg > t_bg:
        return saliency >= t_fg, saliency <= t_bg
    peak = saliency.max()
    if t_fg < peak:
        return saliency > t_fg, saliency <= t_bg
    return saliency == peak, saliency < peak


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a bool mask ``[H,W]`` (ties: first in raster order).

    NumPy only (label propagation with pointer jumping); all False if ``mask`` is.
    """
    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.zeros_like(mask)
    height, width = mask.shape
    none = height * width
    labels = np.where(mask, np.arange(none).reshape(height, width), none)
    while True:
        padded = np.pad(labels, 1, constant_values=none)
        best = labels
        for dy in range(3):
            for dx in range(3):
                best = np.minimum(best, padded[dy : dy + height, dx : dx + width])
        best = np.where(mask, best, none)
        flat = best.ravel()
        inside = flat < none
        for _ in range(4):  # pointer jumping: a label is a pixel of the same component
            flat[inside] = flat[flat[inside]]
        if np.array_equal(best, labels):
            break
        labels = best
    ids, counts = np.unique(labels[mask], return_counts=True)
    return labels == ids[np.argmax(counts)]


def _largest_component_cv2(cv2, mask: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return np.zeros(mask.shape, bool)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == biggest


def _box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _grabcut(cv2, image: np.ndarray, fg: np.ndarray, bg: np.ndarray, iterations: int) -> np.ndarray:
    # The band between the seeds (65% of the pixels) starts as *probable background*.
    # OpenCV fits its initial colour models to FGD + PR_FGD and BGD + PR_BGD pixels, so
    # this keeps the foreground model the paper's (the 5% most salient pixels only);
    # the band is mostly background in a photo, and the cut still moves any of it whose
    # colour fits the foreground model better. (PR_FGD would fit the foreground model
    # to a mostly-background band and the mask would swallow the scene.)
    mask = np.full(fg.shape, cv2.GC_PR_BGD, np.uint8)
    mask[bg] = cv2.GC_BGD
    mask[fg] = cv2.GC_FGD
    bgd_model = np.zeros((1, 65), np.float64)
    fgd_model = np.zeros((1, 65), np.float64)
    try:
        mask, _, _ = cv2.grabCut(image, mask, None, bgd_model, fgd_model, iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error as err:
        detail = str(err).strip().splitlines()[-1] if str(err).strip() else "grabCut failed"
        raise ValueError(
            f"localize: GrabCut failed on a {image.shape[1]}x{image.shape[0]} photo with "
            f"{int(fg.sum())} foreground and {int(bg.sum())} background seeds ({detail})"
        ) from None
    return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)


def localize(
    image,
    saliency,
    *,
    fg_quantile: float = 0.95,
    bg_quantile: float = 0.30,
    segmentation: str = "grabcut",
    iterations: int = 5,
    max_side: int | None = 640,
    smooth_sigma: float = 0.0,
    method: str | None = None,
) -> Localization:
    """The object box from a saliency map, by the paper's seeded graph cut (Sec. 3.2).

    Args:
      image: the photo, ``uint8 [H,W,3]`` RGB, at any size.
      saliency: its saliency map ``[h,w]`` (any real values, e.g.
        ``saliency_map(grads)[0]`` at the model's input size); resized
        (bilinear) to the photo's size first.
      fg_quantile: saliency quantile above which pixels are foreground seeds.
      bg_quantile: quantile below which pixels are background seeds
        (``bg_quantile < fg_quantile``).
      segmentation: ``"grabcut"`` (OpenCV GrabCut with mask initialisation,
        the paper's colour-GMM graph cut) or ``"threshold"`` (the foreground
        seeds alone, without a colour model; NumPy only). See `SEGMENTATIONS`.
      iterations: GrabCut iterations (re-estimating the colour models).
      max_side: photos larger than this (longest side, pixels) are segmented
        at this size and the mask scaled back (nearest), as GrabCut's cost
        grows with the pixel count; ``None`` segments at full size.
      smooth_sigma: Gaussian blur of the map (std in the map's own pixels;
        `saliency_jax.filters.gaussian_filter`, mirrored edges) before the
        quantiles. 0 (the paper) uses the raw map; 1-2 turns the speckle of a
        gradient map into coherent seed regions.
      method: deprecated name of ``segmentation`` (a DeprecationWarning).

    Returns:
      ``Localization(mask bool [H,W], box (x0, y0, x1, y1) | None)``: the
      largest connected component of the foreground and its end-exclusive
      bounding box. A constant map gives the empty result (mask all False,
      box None).

    Raises:
      ValueError: a photo that is not uint8 ``[H,W,3]``, a map that is not
        ``[h,w]`` or has NaN/Inf, quantiles outside (0, 1) or out of order, an
        unknown ``segmentation``, or a GrabCut failure (named).
      ImportError: ``segmentation="grabcut"`` without OpenCV (names the extra).
    """
    segmentation = _segmentation_alias(segmentation, method)
    fg_q, bg_q = _check_options(segmentation, fg_quantile, bg_quantile, iterations, max_side, smooth_sigma)
    image = _check_image(image)
    cv2 = import_cv2() if segmentation == "grabcut" else None
    full_size = image.shape[:2]
    work = _working_image(image, max_side)
    values = resize_map(saliency, work.shape[:2], smooth_sigma=float(smooth_sigma))
    if values is None:
        return Localization(np.zeros(full_size, bool), None)

    fg, bg = seeds(values, fg_q, bg_q)
    if segmentation == "threshold":
        mask = largest_component(fg)
    else:
        mask = _largest_component_cv2(cv2, _grabcut(cv2, work, fg, bg, int(iterations)))
    if mask.shape != full_size:
        mask = np.asarray(Image.fromarray(mask).resize(full_size[::-1], Image.Resampling.NEAREST), bool)
    return Localization(mask, _box(mask))


def _segmentation_alias(segmentation: str, method: str | None) -> str:
    """``segmentation``, or the deprecated ``method=`` that meant it (with a DeprecationWarning)."""
    if method is None:
        return segmentation
    warnings.warn("localize(method=...) is deprecated: the segmentation is localize(segmentation=...)",
                  DeprecationWarning, stacklevel=3)
    if segmentation != "grabcut" and segmentation != method:
        raise ValueError(f"localize: got segmentation={segmentation!r} and the deprecated method={method!r}; "
                         "pass segmentation only")
    return method


def _check_options(segmentation, fg_quantile, bg_quantile, iterations, max_side, smooth_sigma):
    """(fg_quantile, bg_quantile) as floats; ValueError naming the first bad option."""
    if segmentation not in SEGMENTATIONS:
        raise ValueError(
            f"localize: unknown segmentation {segmentation!r}; choose one of {', '.join(SEGMENTATIONS)}"
        )
    fg_q = _check_quantile("fg_quantile", fg_quantile)
    bg_q = _check_quantile("bg_quantile", bg_quantile)
    if bg_q >= fg_q:
        raise ValueError(f"localize: bg_quantile ({bg_q}) must be below fg_quantile ({fg_q})")
    if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral) or iterations < 1:
        raise ValueError(f"localize: iterations must be a positive integer, got {iterations!r}")
    bad_side = isinstance(max_side, bool) or not isinstance(max_side, numbers.Integral) or max_side < 8
    if max_side is not None and bad_side:
        raise ValueError(f"localize: max_side must be None or an integer >= 8, got {max_side!r}")
    if isinstance(smooth_sigma, bool) or not isinstance(smooth_sigma, numbers.Real) or not 0 <= smooth_sigma < 1e3:
        raise ValueError(f"localize: smooth_sigma must be a number >= 0, got {smooth_sigma!r}")
    return fg_q, bg_q


def _working_image(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """The photo the cut runs on: ``image`` itself, or scaled (bilinear) so its longest side is ``max_side``."""
    full_size = image.shape[:2]
    if max_side is None or max(full_size) <= max_side:
        return image
    scale = max_side / max(full_size)
    size = (max(1, round(full_size[0] * scale)), max(1, round(full_size[1] * scale)))
    return np.asarray(Image.fromarray(image).resize(size[::-1], Image.Resampling.BILINEAR))


def localize_topk(
    model,
    image,
    *,
    k: int = 5,
    method: str = "vanilla",
    segmentation: str = "grabcut",
    fg_quantile: float = 0.95,
    bg_quantile: float = 0.30,
    iterations: int = 5,
    max_side: int | None = 640,
    smooth_sigma: float = 0.0,
    key=None,
    **options,
) -> list[ClassLocalization]:
    """One box per class for the photo's top-``k`` classes (the paper's top-5 localisation).

    The ``k`` saliency maps come from one batched ``saliency_jax.attribute``
    call (the photo repeated ``k`` times, one target each; compiled once per
    ``k``), reduced with ``saliency_map`` (the paper's ``max_c |w|``), then each
    goes through ``localize``.

    Args:
      model: a ``Model`` (its ``preprocess``, ``labels`` and logits).
      image: the photo, ``uint8 [H,W,3]``.
      k: number of classes, ``1 <= k <= model.num_classes``.
      method: attribution method (``saliency_jax.available_methods()``).
      segmentation: ``localize``'s ``segmentation`` (one of `SEGMENTATIONS`).
      fg_quantile, bg_quantile, iterations, max_side, smooth_sigma: as in ``localize``.
      key: ``jax.random`` key for the noise-based methods.
      **options: the attribution method's options (``num_samples``, ``layer``, ...).

    Returns:
      ``k`` ``ClassLocalization(target, label, probability, localization)``,
      most probable class first; boxes in the photo's pixels.
    """
    from saliency_jax.methods import attribute
    from saliency_jax.maps import saliency_map

    image = _check_image(image)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= model.num_classes:
        raise ValueError(f"localize_topk: k must be an integer in [1, {model.num_classes}], got {k!r}")
    if segmentation == "grabcut":
        import_cv2()  # fail before any compilation
    elif segmentation not in SEGMENTATIONS:
        raise ValueError(
            f"localize_topk: unknown segmentation {segmentation!r}; choose one of {', '.join(SEGMENTATIONS)}"
        )
    (top,) = model.predict(image, top=int(k), batch_size=1)
    x = np.repeat(model.preprocess([image]), len(top), axis=0)
    targets = np.array([c for c, _, _ in top], np.int32)
    maps = np.asarray(saliency_map(attribute(model, x, targets, method=method, key=key, **options)))
    return [
        ClassLocalization(
            c, label, p,
            localize(image, m, fg_quantile=fg_quantile, bg_quantile=bg_quantile, segmentation=segmentation,
                     iterations=iterations, max_side=max_side, smooth_sigma=smooth_sigma),
        )
        for (c, label, p), m in zip(top, maps)
    ]


BOX_COLORS = ((0, 230, 64), (255, 64, 64), (64, 160, 255), (255, 200, 0), (230, 64, 255))


def draw_boxes(image, boxes, labels=None, *, width: int | None = None) -> np.ndarray:
    """The photo with boxes drawn on it, each captioned: ``uint8 [H,W,3]`` (a new array).

    Args:
      image: ``uint8 [H,W,3]``.
      boxes: ``(x0, y0, x1, y1)`` end-exclusive boxes; ``None`` entries are skipped.
      labels: one caption per box (drawn on a filled strip at the box's top-left), or ``None``.
      width: line width in pixels; default scales with the photo (``min(H,W) / 150``, at least 2).
    """
    image = _check_image(image)
    boxes = list(boxes)
    if labels is not None and len(labels) != len(boxes):
        raise ValueError(f"draw_boxes: got {len(labels)} labels for {len(boxes)} boxes")
    height, width_px = image.shape[:2]
    line = width or max(2, round(min(height, width_px) / 150))
    try:
        font = ImageFont.load_default(size=max(11, min(height, width_px) // 28))
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        font = ImageFont.load_default()
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    for i, box in enumerate(boxes):
        if box is None:
            continue
        color = BOX_COLORS[i % len(BOX_COLORS)]
        x0, y0, x1, y1 = (int(v) for v in box)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=color, width=line)
        if labels is not None and labels[i]:
            left, top, right, bottom = draw.textbbox((0, 0), labels[i], font=font)
            tx, ty = x0, max(0, y0 - (bottom - top) - 2 * line)
            draw.rectangle([tx, ty, tx + right - left + 2 * line, ty + bottom - top + 2 * line], fill=color)
            draw.text((tx + line - left, ty + line - top), labels[i], fill=(0, 0, 0), font=font)
    return np.asarray(canvas)
