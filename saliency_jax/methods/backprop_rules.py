"""Deconvnet (Zeiler & Fergus 2014) and guided backprop (Springenberg et al. 2015) as method values.

Both are the gradient with the backward pass rewritten at every ReLU-family
site (`saliency_jax.attribution.rules.backward_rule`): deconvnet sends back
max(g, 0), guided g * 1[x > 0] * 1[g > 0].
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from saliency_jax.attribution.gradients import class_gradient
from saliency_jax.attribution.rules import backward_rule, require_relus
from saliency_jax.methods.base import Method, is_model, logit_fn_of, register
from saliency_jax.models.inspect import architecture_key


def check_rule_sites(model, image_shape, *, what: str) -> None:
    """ValueError (naming the nonlinearities found) if `model` has no ReLU site for a backward rule.

    Traced once per architecture (a `Model`) or function and image shape; cached.
    """
    key = (architecture_key(model) if is_model(model) else model, tuple(image_shape))
    if key not in _CHECKED:
        example = jax.ShapeDtypeStruct(tuple(image_shape), jnp.float32)
        require_relus(logit_fn_of(model), example, what=what)
        _CHECKED.add(key)


_CHECKED: set = set()


class RuleMethod(Method):
    """The class-score gradient with `rule` at every ReLU site; refuses a function without one."""

    rule: ClassVar[str] = "gradient"
    what: ClassVar[str] = "this rule"

    def check(self, model, image_shape):
        super().check(model, image_shape)
        check_rule_sites(model, image_shape, what=self.what)

    def explain(self, model, x, target, *, key=None):
        return class_gradient(backward_rule(logit_fn_of(model), self.rule), x, target)


@register("deconvnet")
@dataclasses.dataclass(frozen=True)
class Deconvnet(RuleMethod):
    """The deconvnet reconstruction of the class score (paper Sec. 4)."""

    rule, what = "deconvnet", "deconvnet"


@register("guided")
@dataclasses.dataclass(frozen=True)
class GuidedBackprop(RuleMethod):
    """Guided backprop of the class score."""

    rule, what = "guided", "guided backprop"
