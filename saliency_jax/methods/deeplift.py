"""DeepLift (Shrikumar et al. 2017, rescale rule) and DeepLiftShap, as Captum 0.9 defines them.

    DeepLift(baseline=None)          # (x - x0) * multipliers, x0 = zeros in model space
    DeepLiftShap(baselines=b)        # the mean of DeepLift over baselines b [N,H,W,C]

Summation to delta: sum(DeepLift(x)) = S_c(x) - S_c(x0). The multipliers come
from `saliency_jax.attribution.relevance.deeplift` (rescale at activations,
Captum's documented max-pool rule, the gradient at linear layers).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.attribution.relevance import deeplift
from saliency_jax.methods.base import Method, logit_fn_of, register
from saliency_jax.methods.integrated_gradients import check_baseline
from saliency_jax.methods.lrp import check_relevance_layers
from saliency_jax.targets import TOP1


def deeplift_map(logit_fn, x, target, baseline):
    """(x - x0) * DeepLift multipliers of S_target for one image x [H,W,C] and reference x0 (broadcastable)."""
    ref = jnp.broadcast_to(jnp.asarray(baseline, x.dtype), x.shape)
    (logits, _), pull = jax.vjp(lambda v: deeplift(logit_fn)(v, ref), x)
    target = jnp.where(target == TOP1, jnp.argmax(logits), target)
    one_hot = jax.nn.one_hot(target, logits.shape[-1], dtype=logits.dtype)
    (multipliers,) = pull((one_hot, jnp.zeros_like(logits)))
    return (x - ref) * multipliers


@register("deeplift")
@dataclasses.dataclass(frozen=True)
class DeepLift(Method):
    """DeepLift from `baseline` ([H,W,C] or broadcastable; None = zeros; per image [B,H,W,C] in `attribute`)."""

    baseline: object = None

    traced = ("baseline",)
    per_image = ("baseline",)

    def check(self, model, image_shape):
        super().check(model, image_shape)
        check_baseline(self.baseline, image_shape)
        check_relevance_layers(model, image_shape, what="DeepLift")

    def explain(self, model, x, target, *, key=None):
        baseline = jnp.zeros_like(x) if self.baseline is None else self.baseline
        return deeplift_map(logit_fn_of(model), x, target, baseline)


@register("deeplift_shap")
@dataclasses.dataclass(frozen=True)
class DeepLiftShap(Method):
    """The mean over `baselines` [N,H,W,C] of DeepLift from each (Captum's DeepLiftShap); None: one zero image."""

    baselines: object = None

    traced = ("baselines",)

    def check(self, model, image_shape):
        super().check(model, image_shape)
        shape = np.shape(self.baselines)
        if self.baselines is not None and (len(shape) != len(image_shape) + 1 or shape[0] < 1):
            raise ValueError(f"deeplift_shap needs baselines [N,H,W,C] (N >= 1), got shape {shape}")
        check_baseline(None if self.baselines is None else self.baselines[0], image_shape)
        check_relevance_layers(model, image_shape, what="DeepLiftShap")

    def explain(self, model, x, target, *, key=None):
        fn = logit_fn_of(model)
        baselines = jnp.zeros((1, *x.shape), x.dtype) if self.baselines is None else self.baselines
        maps = jax.vmap(lambda b: deeplift_map(fn, x, target, b))(jnp.asarray(baselines, x.dtype))
        return jnp.mean(maps, axis=0)
