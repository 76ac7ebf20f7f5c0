"""SmoothGrad (Smilkov et al. 2017), its squared variant, and VarGrad (Adebayo et al. 2018).

Average the saliency gradient over noisy copies of the image,
x + N(0, sigma^2) with sigma = noise_scale * (max(x) - min(x)):
  "mean":    E[g]      (SmoothGrad)
  "squared": E[g^2]    (SmoothGrad-squared)
  "var":     E[g^2] - E[g]^2   (VarGrad)
Noise sample i is drawn from `jax.random.fold_in(key, i)`: the same key gives
the same map, whatever the chunk size or the batch the image sits in.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from saliency_jax.attribution.gradients import class_gradient, resolve_target
from saliency_jax.attribution.sampling import sample_sum

VARIANTS = ("mean", "squared", "var")
DEFAULT_NUM_SAMPLES = 25


def smoothgrad(
    logit_fn,
    x,
    target,
    *,
    key,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    noise_scale: float = 0.15,
    variant: str = "mean",
    chunk_size: int | None = None,
    gradient_fn=class_gradient,
):
    """SmoothGrad attribution for one image.

    Args:
      logit_fn: `[H,W,C] -> [K]` unnormalised scores.
      x: one image [H,W,C] in model space.
      target: int32 class index, or `TOP1` (-1; resolved on the clean image).
      key: a `jax.random` key.
      num_samples: noisy copies (static).
      noise_scale: noise std as a fraction of the image's value range (PAIR's stdev_spread).
      variant: "mean" | "squared" | "var".
      chunk_size: noisy copies evaluated at once (static); None = all.
      gradient_fn: `(logit_fn, x, target) -> [H,W,C]`, e.g. a guided-backprop gradient.

    Returns:
      [H,W,C] attribution.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown SmoothGrad variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    target = resolve_target(logit_fn, x, target)
    sigma = noise_scale * (jnp.max(x) - jnp.min(x))

    def sample(i):
        noise = sigma * jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
        g = gradient_fn(logit_fn, x + noise, target)
        return g, g * g

    total, total_sq = sample_sum(sample, num_samples, chunk_size=chunk_size)
    mean, mean_sq = total / num_samples, total_sq / num_samples
    if variant == "mean":
        return mean
    if variant == "squared":
        return mean_sq
    return jnp.maximum(mean_sq - mean * mean, 0.0)
