"""Occlusion (Zeiler & Fergus 2014): slide a window of baseline over the image, record the score drop.

Window k covers rows [r_k, r_k + window) and columns [c_k, c_k + window) of
every channel, with r_k = k_r * stride for k_r = 0 .. ceil((H - window) / stride)
(the last window cropped at the edge), and likewise for columns: Captum's
`Occlusion` positions. Each pixel's attribution is the mean over the windows
covering it of S_c(x) - S_c(x with the window occluded), Captum's per-pixel
averaging. Window masks are built on the device from k (an outer product of two
interval indicators); `chunk_size` windows go through the model at once.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from saliency_jax.methods.base import register
from saliency_jax.methods.perturbation import Perturbation, perturbation_sum
from saliency_jax.validate import positive_int


def window_counts(size: int, window: int, stride: int) -> int:
    """Window positions along one axis of `size` pixels: ceil((size - window) / stride) + 1 (Captum's)."""
    return math.ceil((size - window) / stride) + 1


def window_mask(k, height: int, width: int, window: int, stride: int):
    """The k-th window (row-major positions) as a float32 [H,W] indicator, cropped at the image edge."""
    cols = window_counts(width, window, stride)
    top, left = (k // cols) * stride, (k % cols) * stride
    rows_in = (jnp.arange(height) >= top) & (jnp.arange(height) < top + window)
    cols_in = (jnp.arange(width) >= left) & (jnp.arange(width) < left + window)
    return (rows_in[:, None] & cols_in[None, :]).astype(jnp.float32)


def check_window(window: int, stride: int, image_shape) -> None:
    """ValueError unless the window fits the image and the stride leaves no pixel uncovered."""
    height, width = image_shape[:2]
    if window > min(height, width):
        raise ValueError(f"occlusion: window {window} is larger than the image ({height}x{width})")
    if stride > window and window < max(height, width):
        raise ValueError(f"occlusion: stride {stride} is larger than the window {window}: pixels between "
                         "windows would never be occluded")


@register("occlusion")
@dataclasses.dataclass(frozen=True)
class Occlusion(Perturbation):
    """Occlusion by a `window` x `window` patch of baseline every `stride` pixels (all options but the baseline static).

    The map is [H,W,C], equal across channels: the mean score drop of the
    windows covering each pixel (Captum's `Occlusion` with a window over every
    channel, `sliding_window_shapes=(C, window, window)`, `strides=(C, stride, stride)`).
    """

    window: int = 16
    stride: int = 8

    def __post_init__(self):
        super().__post_init__()
        positive_int("occlusion: window", self.window)
        positive_int("occlusion: stride", self.stride)

    def num_evaluations(self, image_shape):
        return (window_counts(image_shape[0], self.window, self.stride)
                * window_counts(image_shape[1], self.window, self.stride))

    def check(self, model, image_shape):
        check_window(self.window, self.stride, image_shape)
        super().check(model, image_shape)

    def explain(self, model, x, target, *, key=None):
        score, target = self.scorer(model, x, target)
        height, width = x.shape[:2]
        full = score(x)

        def occluded(k):
            return 1.0 - window_mask(k, height, width, self.window, self.stride)

        def drop(k, keep, s):
            window = 1.0 - keep
            return (full - s) * window, window

        total, counts = perturbation_sum(score, x, self.baseline_image(x), occluded, drop,
                                         self.num_evaluations(x.shape), chunk_size=self.chunk_size)
        return jnp.broadcast_to((total / counts)[..., None], x.shape)
