"""The machinery of gradient attribution: class gradients, backward rules, chunked sums, unit targets.

Everything here is a function of a logit function `logit_fn(x[H,W,C]) -> logits[K]`
and one image (vmap it yourself). Backward rules (`deconvnet`, `guided_backprop`)
are transforms of a function, so they reach every ReLU of any JAX model. The
attribution *methods* built on this are values in `saliency_jax.methods`.
"""

from saliency_jax.attribution.gradients import TOP1, class_gradient, gradient_x_input, vanilla_gradient
from saliency_jax.attribution.rules import backward_rule, count_relus, deconvnet, guided_backprop
from saliency_jax.attribution.units import UnitTarget, project_activation, unit

__all__ = [
    "TOP1",
    "UnitTarget",
    "backward_rule",
    "class_gradient",
    "count_relus",
    "deconvnet",
    "gradient_x_input",
    "guided_backprop",
    "project_activation",
    "unit",
    "vanilla_gradient",
]
