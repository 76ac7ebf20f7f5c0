"""Deconvnet (Zeiler & Fergus 2014) and guided backprop (Springenberg et al. 2015) as method values.

Both are the gradient with the backward pass rewritten at every ReLU-family
site (`saliency_jax.attribution.rules.backward_rule`): deconvnet sends back
max(g, 0), guided g * 1[x > 0] * 1[g > 0].
"""

from __future__ import annotations

import dataclasses

from saliency_jax.attribution.gradients import class_gradient
from saliency_jax.attribution.rules import backward_rule
from saliency_jax.methods.base import Method, logit_fn_of, register


@register("deconvnet")
@dataclasses.dataclass(frozen=True)
class Deconvnet(Method):
    """The deconvnet reconstruction of the class score (paper Sec. 4)."""

    def explain(self, model, x, target, *, key=None):
        return class_gradient(backward_rule(logit_fn_of(model), "deconvnet"), x, target)


@register("guided")
@dataclasses.dataclass(frozen=True)
class GuidedBackprop(Method):
    """Guided backprop of the class score."""

    def explain(self, model, x, target, *, key=None):
        return class_gradient(backward_rule(logit_fn_of(model), "guided"), x, target)
