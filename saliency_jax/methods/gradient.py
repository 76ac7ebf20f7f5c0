"""The paper's image-specific class saliency (Simonyan et al. 2014) and gradient x input.

    Vanilla():        w = dS_c/dx at x                       (one backward pass)
    GradientXInput(): x * dS_c/dx                            (Shrikumar et al. 2016)
"""

from __future__ import annotations

import dataclasses

from saliency_jax.attribution.gradients import class_gradient
from saliency_jax.methods.base import Method, logit_fn_of, register


@register("vanilla")
@dataclasses.dataclass(frozen=True)
class Vanilla(Method):
    """dS_c/dx: the paper's saliency gradient (its 2-D map is max_c |w|, `saliency_map`)."""

    def explain(self, model, x, target, *, key=None):
        return class_gradient(logit_fn_of(model), x, target)


@register("gradient_x_input")
@dataclasses.dataclass(frozen=True)
class GradientXInput(Method):
    """x * dS_c/dx."""

    def explain(self, model, x, target, *, key=None):
        return x * class_gradient(logit_fn_of(model), x, target)
