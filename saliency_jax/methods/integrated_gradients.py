"""Integrated Gradients (Sundararajan et al. 2017).

IG(x) = (x - x') * integral_0^1 dS_c/dx (x' + a (x - x')) da, approximated by
a quadrature over `num_steps` path points. Completeness: sum(IG) ~= S_c(x) - S_c(x').
With `multiply_by_inputs=False` the (x - x') factor is left out (Captum's option).
"""

from __future__ import annotations

import dataclasses
import warnings

import jax.numpy as jnp
import numpy as np

from saliency_jax.attribution.gradients import class_gradient, resolve_target
from saliency_jax.attribution.sampling import sample_sum
from saliency_jax.methods.base import Method, logit_fn_of, register
from saliency_jax.validate import one_of, optional_positive_int, positive_int

QUADRATURES = ("midpoint", "left", "right", "trapezoid", "gausslegendre")
RULES = QUADRATURES  # deprecated name
DEFAULT_NUM_STEPS = 50


def path_points(num_steps: int, quadrature: str = "midpoint"):
    """Quadrature (alphas [num_steps], weights [num_steps]) on [0,1] for the path integral.

    "gausslegendre" is exact for polynomials of degree <= 2 num_steps - 1.
    """
    one_of("integration rule", quadrature, QUADRATURES)
    low = 2 if quadrature == "trapezoid" else 1
    if num_steps < low:
        raise ValueError(f"num_steps must be >= {low}, got {num_steps}")
    if quadrature == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(num_steps)
        return jnp.asarray((nodes + 1) / 2, jnp.float32), jnp.asarray(weights / 2, jnp.float32)
    i = jnp.arange(num_steps, dtype=jnp.float32)
    if quadrature == "trapezoid":
        weights = jnp.full((num_steps,), 1.0 / (num_steps - 1)).at[jnp.array([0, -1])].multiply(0.5)
        return i / (num_steps - 1), weights
    offset = {"midpoint": 0.5, "left": 0.0, "right": 1.0}[quadrature]
    return (i + offset) / num_steps, jnp.full((num_steps,), 1.0 / num_steps)


def integrated_gradients(logit_fn, x, target, *, baseline=None, num_steps: int = DEFAULT_NUM_STEPS,
                         quadrature: str = "midpoint", chunk_size: int | None = None, gradient_fn=class_gradient,
                         multiply_by_inputs: bool = True, rule: str | None = None):
    """Integrated Gradients for one image (the functional form of `IntegratedGradients`).

    Args:
      logit_fn: `[H,W,C] -> [K]` unnormalised scores.
      x: one image [H,W,C] in model space.
      target: int32 class index, or `TOP1` (-1; resolved on x).
      baseline: x' ([H,W,C] or broadcastable); None = zeros in model space.
      num_steps: path points (static).
      quadrature: "midpoint" | "left" | "right" | "trapezoid" | "gausslegendre".
      chunk_size: path points evaluated at once (static); None = all.
      gradient_fn: `(logit_fn, x, target) -> [H,W,C]`.
      multiply_by_inputs: False leaves out the (x - x') factor.
      rule: deprecated name of `quadrature`.

    Returns:
      [H,W,C] attribution.
    """
    if rule is not None:
        warnings.warn("integrated_gradients: 'rule' is deprecated, use 'quadrature'", DeprecationWarning,
                      stacklevel=2)
        quadrature = rule
    alphas, weights = path_points(num_steps, quadrature)
    baseline = jnp.zeros_like(x) if baseline is None else jnp.broadcast_to(jnp.asarray(baseline, x.dtype), x.shape)
    target = resolve_target(logit_fn, x, target)
    delta = x - baseline

    def sample(i):
        return weights[i] * gradient_fn(logit_fn, baseline + alphas[i] * delta, target)

    average = sample_sum(sample, num_steps, chunk_size=chunk_size)
    return delta * average if multiply_by_inputs else average


def check_baseline(baseline, image_shape) -> None:
    """ValueError unless `baseline` is None or broadcasts to the image shape [H,W,C]."""
    if baseline is None:
        return
    shape = np.shape(baseline)
    try:
        np.broadcast_shapes(shape, tuple(image_shape))
    except ValueError:
        raise ValueError(f"baseline of shape {shape} does not broadcast to the image shape "
                         f"{tuple(image_shape)}") from None


@register("ig")
@dataclasses.dataclass(frozen=True)
class IntegratedGradients(Method):
    """Integrated Gradients along the straight path from `baseline` (default zeros) to x.

    `baseline` is traced: [H,W,C] (or broadcastable) for every image, or per
    image [B,H,W,C] through `attribute(..., baseline=...)`.
    """

    num_steps: int = DEFAULT_NUM_STEPS
    quadrature: str = "midpoint"
    chunk_size: int | None = None
    multiply_by_inputs: bool = True
    baseline: object = None

    traced = ("baseline",)
    per_image = ("baseline",)
    inner = "num_steps"
    deprecated = {"rule": "quadrature"}

    def __post_init__(self):
        positive_int("IntegratedGradients: num_steps", self.num_steps)
        one_of("integration rule", self.quadrature, QUADRATURES)
        if self.quadrature == "trapezoid" and self.num_steps < 2:
            raise ValueError(f"num_steps must be >= 2 for the trapezoid rule, got {self.num_steps}")
        optional_positive_int("IntegratedGradients: chunk_size", self.chunk_size)
        if not isinstance(self.multiply_by_inputs, bool):
            raise ValueError(f"multiply_by_inputs must be True or False, got {self.multiply_by_inputs!r}")

    def check(self, model, image_shape):
        super().check(model, image_shape)
        check_baseline(self.baseline, image_shape)

    def explain(self, model, x, target, *, key=None):
        return integrated_gradients(logit_fn_of(model), x, target, baseline=self.baseline, num_steps=self.num_steps,
                                    quadrature=self.quadrature, chunk_size=self.chunk_size,
                                    multiply_by_inputs=self.multiply_by_inputs)
