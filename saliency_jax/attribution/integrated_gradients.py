"""Integrated Gradients (Sundararajan et al. 2017).

IG(x) = (x - x') * integral_0^1 dS_c/dx (x' + a (x - x')) da, approximated by
a quadrature over `num_steps` path points. Completeness: sum(IG) ~= S_c(x) - S_c(x').
"""

from __future__ import annotations

import jax.numpy as jnp

from saliency_jax.attribution.gradients import class_gradient, resolve_target
from saliency_jax.attribution.sampling import sample_sum

RULES = ("midpoint", "left", "right", "trapezoid")
DEFAULT_NUM_STEPS = 50


def path_points(num_steps: int, rule: str = "midpoint"):
    """Quadrature (alphas [num_steps], weights [num_steps]) on [0,1] for the path integral."""
    if rule not in RULES:
        raise ValueError(f"unknown integration rule {rule!r}; choose one of {', '.join(RULES)}")
    if num_steps < 1 or (rule == "trapezoid" and num_steps < 2):
        raise ValueError(f"num_steps must be >= {2 if rule == 'trapezoid' else 1}, got {num_steps}")
    i = jnp.arange(num_steps, dtype=jnp.float32)
    if rule == "trapezoid":
        weights = jnp.full((num_steps,), 1.0 / (num_steps - 1)).at[jnp.array([0, -1])].multiply(0.5)
        return i / (num_steps - 1), weights
    offset = {"midpoint": 0.5, "left": 0.0, "right": 1.0}[rule]
    return (i + offset) / num_steps, jnp.full((num_steps,), 1.0 / num_steps)


def integrated_gradients(
    logit_fn,
    x,
    target,
    *,
    baseline=None,
    num_steps: int = DEFAULT_NUM_STEPS,
    rule: str = "midpoint",
    chunk_size: int | None = None,
    gradient_fn=class_gradient,
):
    """Integrated Gradients for one image.

    Args:
      logit_fn: `[H,W,C] -> [K]` unnormalised scores.
      x: one image [H,W,C] in model space.
      target: int32 class index, or `TOP1` (-1; resolved on x).
      baseline: x' ([H,W,C] or broadcastable); None = zeros in model space.
      num_steps: path points (static).
      rule: "midpoint" | "left" | "right" | "trapezoid".
      chunk_size: path points evaluated at once (static); None = all.
      gradient_fn: `(logit_fn, x, target) -> [H,W,C]`.

    Returns:
      [H,W,C] attribution.
    """
    alphas, weights = path_points(num_steps, rule)
    baseline = jnp.zeros_like(x) if baseline is None else jnp.broadcast_to(jnp.asarray(baseline, x.dtype), x.shape)
    target = resolve_target(logit_fn, x, target)
    delta = x - baseline

    def sample(i):
        return weights[i] * gradient_fn(logit_fn, baseline + alphas[i] * delta, target)

    return delta * sample_sum(sample, num_steps, chunk_size=chunk_size)
