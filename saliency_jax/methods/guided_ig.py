"""Guided Integrated Gradients (Kapishnikov et al. 2021), PAIR saliency's algorithm, on the device.

The path from the baseline x' to x is built step by step from the gradient
instead of fixed in advance: at step k (of `num_steps`) the L1 distance to x
must shrink to (1 - (k+1)/num_steps) |x - x'|_1, and it is closed by moving
the `fraction` of features with the smallest |gradient| first, as far as the
band alpha in [a - max_dist, a + max_dist] (a = (k+1)/num_steps) around the
straight line allows; features that fall behind the band are pulled up to it.
The attribution accumulates (x_new - x_old) * gradient(x_old), so it sums to
about S_c(x) - S_c(x') (completeness). `max_dist=0` is Integrated Gradients
with the left Riemann rule; `fraction=1` is too.

The steps are a `lax.fori_loop`, each with a `lax.while_loop` over the
selections (at most about 1/fraction + 1 of them); the `fraction` quantile of
|gradient| (NumPy's `method="lower"`) is an exact k-th smallest by a binary
search on the float bits. Float32 replaces PAIR's float64, so a step's target
distance counts as reached within a relative `L1_RTOL`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from saliency_jax.attribution.gradients import class_gradient, resolve_target
from saliency_jax.methods.base import Method, logit_fn_of, register
from saliency_jax.methods.integrated_gradients import check_baseline
from saliency_jax.validate import positive_int, real

L1_RTOL = 1e-6  # a step's L1 target is reached within this fraction of |x - x'|_1 (float32)
DEFAULT_NUM_STEPS = 200  # PAIR's defaults: 200 steps, fraction 0.25, max_dist 0.02


def kth_smallest(values, k: int):
    """The k-th smallest (0-based) of non-negative float32 `values` (inf allowed): exact, O(32 n).

    Non-negative floats order like their bit patterns, so a binary search over
    the 31 value bits finds the smallest t with #(bits <= t) > k.
    """
    bits = lax.bitcast_convert_type(values.ravel().astype(jnp.float32), jnp.int32)

    def body(_, bounds):
        low, high = bounds
        mid = low + (high - low) // 2
        enough = jnp.sum(bits <= mid) > k
        return jnp.where(enough, low, mid + 1), jnp.where(enough, mid, high)

    _, high = lax.fori_loop(0, 32, body, (jnp.int32(0), jnp.int32(0x7F800000)))
    return lax.bitcast_convert_type(high, jnp.float32)


class _Selection(NamedTuple):
    point: jax.Array  # [H,W,C] the path's current point
    attr: jax.Array  # [H,W,C] the attribution so far
    done: jax.Array  # bool: this step's L1 target is reached
    count: jax.Array  # int32: selections made in this step


def guided_ig_step(state: _Selection, grad, x, baseline, alpha, max_dist, *, fraction: float):
    """One Guided-IG step: moves `state.point` to L1 distance (1 - alpha) |x - x'|_1 from x.

    Args:
      state: the point and attribution before the step (done=False, count=0).
      grad: dS_c/dx at the point before the step [H,W,C].
      x, baseline: the path's end and start [H,W,C].
      alpha: (k + 1) / num_steps.
      max_dist: the band's half-width in alpha.
      fraction: the share of features selected per move (static).
    """
    delta = x - baseline
    l1_total = jnp.sum(jnp.abs(delta))
    a_min, a_max = jnp.maximum(alpha - max_dist, 0.0), jnp.minimum(alpha + max_dist, 1.0)
    x_min, x_max = baseline + delta * a_min, baseline + delta * a_max
    l1_target = l1_total * (1 - alpha)
    rank = int(math.floor(fraction * (grad.size - 1)))  # np.quantile(..., method="lower")
    limit = math.ceil(grad.size / (rank + 1)) + 2

    def body(s: _Selection) -> _Selection:
        safe = jnp.where(delta != 0, delta, 1.0)
        point_alpha = jnp.where(delta != 0, (s.point - baseline) / safe, a_max)
        point = jnp.where(point_alpha < a_min, x_min, s.point)
        l1 = jnp.sum(jnp.abs(point - x))
        close = jnp.abs(l1 - l1_target) <= L1_RTOL * l1_total + 1e-9
        magnitude = jnp.where(point == x_max, jnp.inf, jnp.abs(grad))
        selected = (magnitude <= kth_smallest(magnitude, rank)) & (magnitude != jnp.inf)
        l1_s = jnp.sum(jnp.abs(point - x_max) * selected)
        gamma = jnp.where(l1_s > 0, (l1 - l1_target) / jnp.where(l1_s > 0, l1_s, 1.0), jnp.inf)
        moved = jnp.where(gamma > 1, x_max, point + (x_max - point) * jnp.clip(gamma, 0.0, 1.0))
        point = jnp.where(close | ~selected, point, moved)
        return _Selection(point, s.attr + (point - s.point) * grad, close | (gamma <= 1) | (l1_s == 0),
                          s.count + 1)

    return lax.while_loop(lambda s: ~s.done & (s.count < limit), body, state)


def guided_integrated_gradients(logit_fn, x, target, *, baseline=None, num_steps: int = DEFAULT_NUM_STEPS,
                                fraction: float = 0.25, max_dist=0.02):
    """Guided IG for one image (the functional form of `GuidedIG`): x [H,W,C] -> [H,W,C].

    Args:
      logit_fn: `[H,W,C] -> [K]` unnormalised scores.
      x: one image [H,W,C] in model space.
      target: int32 class index, or `TOP1` (-1; resolved on x).
      baseline: x' ([H,W,C] or broadcastable); None = zeros.
      num_steps: path steps, one gradient each (static).
      fraction: share of features moved per selection, in (0, 1] (static).
      max_dist: how far (in alpha, [0, 1]) the path may leave the straight line.
    """
    baseline = jnp.zeros_like(x) if baseline is None else jnp.broadcast_to(jnp.asarray(baseline, x.dtype), x.shape)
    target = resolve_target(logit_fn, x, target)

    def step(k, carry):
        point, attr = carry
        grad = class_gradient(logit_fn, point, target)
        alpha = (k + 1.0) / num_steps
        start = _Selection(point, attr, jnp.bool_(False), jnp.int32(0))
        end = guided_ig_step(start, grad, x, baseline, alpha, max_dist, fraction=fraction)
        return end.point, end.attr

    return lax.fori_loop(0, num_steps, step, (baseline, jnp.zeros_like(x)))[1]


@register("guided_ig")
@dataclasses.dataclass(frozen=True)
class GuidedIG(Method):
    """Guided Integrated Gradients from `baseline` (default zeros) to x (PAIR's defaults).

    `max_dist` and `baseline` are traced; `num_steps` and `fraction` are static
    (the quantile's rank is computed on the host, as NumPy does). One image's
    path is one point at a time: B images keep B points in flight.
    """

    num_steps: int = DEFAULT_NUM_STEPS
    fraction: float = 0.25
    max_dist: float = 0.02
    baseline: object = None

    traced = ("max_dist", "baseline")
    per_image = ("baseline",)

    def __post_init__(self):
        positive_int("GuidedIG: num_steps", self.num_steps)
        real("GuidedIG: fraction", self.fraction, low=0.0, high=1.0, open_low=True)
        real("GuidedIG: max_dist", self.max_dist, low=0.0, high=1.0)

    def check(self, model, image_shape):
        super().check(model, image_shape)
        check_baseline(self.baseline, image_shape)

    def explain(self, model, x, target, *, key=None):
        return guided_integrated_gradients(logit_fn_of(model), x, target, baseline=self.baseline,
                                           num_steps=self.num_steps, fraction=self.fraction,
                                           max_dist=self.max_dist)

