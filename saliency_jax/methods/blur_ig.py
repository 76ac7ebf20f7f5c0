"""Blur Integrated Gradients (Xu et al. 2020), as PAIR saliency's `BlurIG`, with the blur path on the device.

The path runs from x blurred by a Gaussian of std `max_sigma` (pixels) back to
x itself: x(s) = G_s * x, s = max_sigma -> 0. With s_i = i max_sigma / num_steps
(i < num_steps, PAIR's left rule) and the blur's derivative in s by a forward
difference of `grad_step`,

    BlurIG(x) = -sum_i (s_{i+1} - s_i) * (G_{s_i + grad_step} x - G_{s_i} x) / grad_step
                * dS_c/dx (G_{s_i} x),

which sums to about S_c(x) - S_c(G_max_sigma x). Each blur is scipy's
`gaussian_filter(mode="constant")` along height and width (zero edges,
truncate 4, the kernel of `saliency_jax.filters.gaussian_kernel`), applied as
two banded matrices [H,H] and [W,W] built on the device from host kernel
tables [num_steps, 2H-1]. The steps go through `chunk_size` at a time.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from saliency_jax.attribution.gradients import class_gradient, resolve_target
from saliency_jax.attribution.sampling import sample_sum
from saliency_jax.filters import gaussian_kernel
from saliency_jax.methods.base import Method, logit_fn_of, register
from saliency_jax.validate import optional_positive_int, positive_int, real

TRUNCATE = 4.0  # scipy.ndimage's default, as PAIR's blur uses it
DEFAULT_NUM_STEPS = 100  # PAIR's defaults: max_sigma 50, 100 steps, grad_step 0.01


def offset_taps(sigma: float, size: int) -> np.ndarray:
    """Gaussian taps by offset d = -(size-1)..size-1: float32 [2 size - 1].

    Zero beyond the kernel's radius; sigma 0 is a delta (no blur).
    """
    taps = np.zeros(2 * size - 1)
    if sigma == 0:
        taps[size - 1] = 1.0
        return taps.astype(np.float32)
    kernel = gaussian_kernel(sigma, truncate=TRUNCATE)
    radius = len(kernel) // 2
    keep = min(radius, size - 1)
    taps[size - 1 - keep: size + keep] = kernel[radius - keep: radius + keep + 1]
    return taps.astype(np.float32)


def banded(taps, size: int):
    """The [size, size] blur matrix of one axis from its offset taps [2 size - 1]: M[i, j] = taps[j - i + size - 1]."""
    offsets = jnp.arange(size)[None, :] - jnp.arange(size)[:, None]
    return taps[offsets + size - 1]


def blur(x, taps_h, taps_w):
    """x [H,W,C] blurred along height and width with zero edges by the offset taps of each axis."""
    return jnp.einsum("ij,jwc,kw->ikc", banded(taps_h, x.shape[0]), x, banded(taps_w, x.shape[1]))


def blur_path_tables(max_sigma: float, num_steps: int, grad_step: float, shape) -> tuple:
    """Host tables (taps_h [2,S,2H-1], taps_w [2,S,2W-1], step ds): sigmas s_i and s_i + grad_step."""
    sigmas = np.arange(num_steps) * (max_sigma / num_steps)
    tables = tuple(np.stack([np.stack([offset_taps(s + shift, n) for s in sigmas]) for shift in (0.0, grad_step)])
                   for n in shape[:2])
    return tables[0], tables[1], max_sigma / num_steps


def blur_integrated_gradients(logit_fn, x, target, *, max_sigma: float = 50.0, num_steps: int = DEFAULT_NUM_STEPS,
                              grad_step: float = 0.01, chunk_size: int | None = None):
    """Blur IG for one image (the functional form of `BlurIG`): x [H,W,C] -> [H,W,C].

    Args:
      logit_fn: `[H,W,C] -> [K]` unnormalised scores.
      x: one image [H,W,C] in model space.
      target: int32 class index, or `TOP1` (-1; resolved on x).
      max_sigma: the blur std (pixels) at the path's start (static).
      num_steps: path points, one gradient each (static).
      grad_step: the sigma step of the blur's forward difference (static).
      chunk_size: path points evaluated at once (static); None = all.
    """
    taps_h, taps_w, ds = blur_path_tables(max_sigma, num_steps, grad_step, x.shape)
    taps_h, taps_w = jnp.asarray(taps_h), jnp.asarray(taps_w)
    target = resolve_target(logit_fn, x, target)

    def sample(i):
        point = blur(x, taps_h[0, i], taps_w[0, i])
        direction = (blur(x, taps_h[1, i], taps_w[1, i]) - point) / grad_step
        return direction * class_gradient(logit_fn, point, target)

    return -ds * sample_sum(sample, num_steps, chunk_size=chunk_size)


@register("blur_ig")
@dataclasses.dataclass(frozen=True)
class BlurIG(Method):
    """Blur Integrated Gradients from x blurred by `max_sigma` to x (PAIR's defaults; all options static)."""

    max_sigma: float = 50.0
    num_steps: int = DEFAULT_NUM_STEPS
    grad_step: float = 0.01
    chunk_size: int | None = None

    inner = "num_steps"

    def __post_init__(self):
        real("BlurIG: max_sigma", self.max_sigma, low=0.0, high=1e4, open_low=True)
        positive_int("BlurIG: num_steps", self.num_steps)
        real("BlurIG: grad_step", self.grad_step, low=0.0, high=1e3, open_low=True)
        optional_positive_int("BlurIG: chunk_size", self.chunk_size)

    def explain(self, model, x, target, *, key=None):
        return blur_integrated_gradients(logit_fn_of(model), x, target, max_sigma=self.max_sigma,
                                         num_steps=self.num_steps, grad_step=self.grad_step,
                                         chunk_size=self.chunk_size)
