"""The Zeiler & Fergus (2014, Fig. 2) figure: each channel's top activations projected to pixels, beside their patches.

    result = top_activations(model, "photos/", "block5", [0, 7], k=9)
    tops = project_top(model, result)                    # deconvnet projections and patches, cropped
    grids = [feature_grid(p, q) for p, q in zip(tops.projections, tops.patches)]

For each of a channel's k winners the image is re-read, the one activation
(channel, position) is projected back to pixels (`project_activation`, the
deconvnet rule by default), and both the projection and the image are cropped
to that position's receptive field. A grid shows the k projections on the left
and the k image patches on the right, in rank order.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from PIL import Image

from saliency_jax import render
from saliency_jax.attribution.units import project_activation
from saliency_jax.features.collect import TopActivations, load_examples
from saliency_jax.models.model import Model
from saliency_jax.receptive_field import ReceptiveField, crop, receptive_field


@dataclasses.dataclass(frozen=True)
class TopProjections:
    """Cropped projections and patches of a `TopActivations`, per channel and rank.

    Attributes:
      layer, channels: as in the `TopActivations`.
      projections: [C][k] float32 [h,w,3]: the activation projected to pixels,
        cropped to its receptive field (sizes differ where the field is clipped
        at the image border).
      patches: [C][k] uint8 [h,w,3]: the input image (at the model's input size), same crop.
      windows: int [C,k,4]: (y0, y1, x0, x1) of each crop in the input image.
      names, paths: {image id: name / path} of the winning images.
      field: the layer's `ReceptiveField` (size, stride, offset).
    """

    layer: str
    channels: tuple[int, ...]
    projections: tuple[tuple[np.ndarray, ...], ...]
    patches: tuple[tuple[np.ndarray, ...], ...]
    windows: np.ndarray
    names: dict[int, str]
    paths: dict[int, str]
    field: ReceptiveField


def project_top(model: Model, result: TopActivations, *, rule: str = "deconvnet",
                batch_size: int = 16) -> TopProjections:
    """Projects every top activation of `result` to pixels and crops its receptive field.

    Args:
      model: the `Model` that produced `result`.
      result: from `top_activations`; its winning images are re-read from `result.source`.
      rule: backward rule of the projection: "deconvnet" (Zeiler & Fergus),
        "guided" or "gradient".
      batch_size: projections computed at once (padded; one compilation).

    Returns:
      A `TopProjections`.
    """
    field = receptive_field(model, result.layer)
    ids = sorted({int(i) for i in result.image_ids.ravel()})
    winners = load_examples(result.source, ids, model.input_size)
    num_channels, k = result.image_ids.shape
    # Every (channel, rank) at once: one checked call, padded batches of one compiled shape.
    pixels = np.stack([winners[int(i)].image for i in result.image_ids.ravel()])
    channels = np.repeat(np.asarray(result.channels, np.int32), k)
    positions = np.asarray(result.positions, np.int32).reshape(-1, 2)
    maps = project_activation(model, model.preprocess(pixels), result.layer, channels, positions, rule=rule,
                              batch_size=batch_size)
    windows = [field.window(int(y), int(x), model.input_size) for y, x in positions]
    projections = [np.asarray(crop(m, w), np.float32) for m, w in zip(maps, windows)]
    patches = [np.asarray(crop(p, w)) for p, w in zip(pixels, windows)]
    per_channel = lambda items: tuple(tuple(items[c * k:(c + 1) * k]) for c in range(num_channels))  # noqa: E731
    return TopProjections(result.layer, result.channels, per_channel(projections), per_channel(patches),
                          np.asarray(windows, np.int64).reshape(num_channels, k, 4),
                          {i: winners[i].id for i in ids}, {i: winners[i].path for i in ids}, field)


def projection_pixels(projection, *, percentile: float = 99.5) -> np.ndarray:
    """A projection [h,w,3] as uint8, symmetric around 0 (RGB kept): 0 -> grey 128, +-s -> 255 / 1.

    s is the `percentile` of |p| over its non-zero entries (100: the maximum), so
    a few extreme pixels do not leave the rest grey; larger values are clipped.
    """
    p = np.asarray(projection, np.float32)
    magnitude = np.abs(p[np.isfinite(p) & (p != 0)])
    scale = float(np.percentile(magnitude, percentile)) if magnitude.size else 0.0
    if scale == 0.0:
        return np.full(p.shape, 128, np.uint8)
    return np.clip(np.rint(128.0 + 127.0 * np.nan_to_num(p) / scale), 0, 255).astype(np.uint8)


def _scaled(image: np.ndarray, scale: float) -> np.ndarray:
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):
        return image
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BILINEAR  # crisp pixels when enlarged
    return np.asarray(Image.fromarray(image).resize(size, resample))


def feature_grid(projections: Sequence[np.ndarray], patches: Sequence[np.ndarray], *, tile: int = 64,
                 cols: int | None = None, pad: int = 2, label: str | None = None) -> np.ndarray:
    """One channel's figure: the k projections (left grid) beside the k image patches (right grid).

    Every crop is scaled by one factor, so the largest is `tile` pixels wide or
    high (enlarged with nearest neighbours, shrunk with a bilinear filter) and a
    crop clipped at the image border stays smaller, centred in its cell.

    Args:
      projections: k float [h,w,3] projections (`projection_pixels` scales each one).
      patches: k uint8 [h,w,3] image patches, same sizes.
      tile: cell size in pixels.
      cols: cells per row in each half (default ceil(sqrt(k)): 3x3 for k = 9).
      pad: gap between cells.
      label: optional caption under the figure.

    Returns:
      uint8 [H,W,3].
    """
    if len(projections) != len(patches) or not patches:
        raise ValueError(f"expected as many projections as patches (>= 1), got {len(projections)} and {len(patches)}")
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    scale = tile / max(max(p.shape[:2]) for p in patches)
    cols = cols or math.ceil(math.sqrt(len(patches)))
    halves = [render.montage([_scaled(projection_pixels(p), scale) for p in projections], cols=cols, pad=pad),
              render.montage([_scaled(np.asarray(q, np.uint8), scale) for q in patches], cols=cols, pad=pad)]
    joined = np.concatenate([halves[0], np.full((halves[0].shape[0], 2 * pad, 3), 255, np.uint8), halves[1]], axis=1)
    return joined if label is None else render.montage([joined], labels=[label], pad=pad)


def feature_figure(model: Model, result: TopActivations, *, rule: str = "deconvnet", tile: int = 64,
                   batch_size: int = 16) -> list[np.ndarray]:
    """`feature_grid` of every channel of `result` (captioned "<layer> channel <c>"), via `project_top`."""
    tops = project_top(model, result, rule=rule, batch_size=batch_size)
    return [feature_grid(p, q, tile=tile, label=f"{result.layer} channel {c}")
            for c, p, q in zip(tops.channels, tops.projections, tops.patches)]
