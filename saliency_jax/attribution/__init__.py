"""Attribution methods: functions of a logit function `logit_fn(x[H,W,C]) -> logits[K]` and one image.

Per-image functions (vmap them yourself) and the batched, jit-compiled
`attribute` entry point. Targets are classes or units of a named layer
(`unit(layer, channel[, position])`). Backward rules (`deconvnet`, `guided_backprop`) are
transforms of a function, so they reach every ReLU of any JAX model.
"""

from saliency_jax.attribution.api import METHODS, attribute, available_methods
from saliency_jax.attribution.gradcam import gradcam, guided_gradcam
from saliency_jax.attribution.gradients import TOP1, class_gradient, gradient_x_input, vanilla_gradient
from saliency_jax.attribution.integrated_gradients import integrated_gradients
from saliency_jax.attribution.rules import backward_rule, count_relus, deconvnet, guided_backprop
from saliency_jax.attribution.smoothgrad import smoothgrad
from saliency_jax.attribution.units import UnitTarget, project_activation, unit

__all__ = [
    "METHODS",
    "TOP1",
    "UnitTarget",
    "attribute",
    "available_methods",
    "backward_rule",
    "class_gradient",
    "count_relus",
    "deconvnet",
    "gradcam",
    "gradient_x_input",
    "guided_backprop",
    "guided_gradcam",
    "integrated_gradients",
    "project_activation",
    "smoothgrad",
    "unit",
    "vanilla_gradient",
]
