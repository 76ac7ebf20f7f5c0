"""Grad-CAM (Selvaraju et al. 2017) and guided Grad-CAM on a named layer of a `Model`.

cam = ReLU(sum_k alpha_k A_k), alpha_k = mean over positions of dS_c/dA_k, for
the activations A [h,w,K] of the chosen layer, upsampled (bilinear) to the
image size. The layer's gradient comes from the model's flax `perturb` point of
that name, in the same forward/backward pass that yields A.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from saliency_jax.attribution.gradients import TOP1, class_gradient
from saliency_jax.attribution.rules import guided_backprop
from saliency_jax.methods.backprop_rules import check_rule_sites
from saliency_jax.methods.base import Method, is_model, register
from saliency_jax.models.inspect import layer_shapes
from saliency_jax.targets import check_layer


def check_spatial_layer(model, layer: str, image_shape) -> None:
    """ValueError unless `layer` is one of the model's layers with a spatial activation [h,w,K]."""
    shape = check_layer(layer, layer_shapes(model, image_shape))
    if len(shape) != 3:
        raise ValueError(f"Grad-CAM needs a spatial layer [h,w,K]; {layer!r} has shape {shape}")


def layer_activations_and_gradient(model, x, target, layer: str):
    """(A [h,w,K], dS_target/dA [h,w,K]) for one image x [H,W,C] (TOP1 resolved on x)."""
    shape = jax.eval_shape(lambda x: model.apply(x[None])[1][layer], x)
    if len(shape.shape) != 4:
        raise ValueError(f"Grad-CAM needs a spatial layer [h,w,K]; {layer!r} has shape {shape.shape[1:]}")

    def score(perturbation):
        variables = {**model.variables, "perturbations": {layer: perturbation}}
        logits, feats = model.module.apply(variables, x[None])
        t = jnp.where(target == TOP1, jnp.argmax(logits[0]), target)
        return logits[0, t], feats[layer][0]

    grads, acts = jax.grad(score, has_aux=True)(jnp.zeros(shape.shape, shape.dtype))
    return acts, grads[0]


def gradcam(model, x, target, *, layer: str | None = None):
    """Grad-CAM map for one image, upsampled and broadcast to x's shape [H,W,C], >= 0."""
    acts, grads = layer_activations_and_gradient(model, x, target, layer or model.default_layer())
    cam = jax.nn.relu(jnp.einsum("hwk,k->hw", acts, jnp.mean(grads, axis=(0, 1))))
    cam = jax.image.resize(cam, x.shape[:2], method="bilinear")
    return jnp.broadcast_to(cam[..., None], x.shape)


def guided_gradcam(model, x, target, *, layer: str | None = None):
    """Guided backprop gradient times the Grad-CAM map: [H,W,C]."""
    return class_gradient(guided_backprop(model.logit_fn), x, target) * gradcam(model, x, target, layer=layer)


@dataclasses.dataclass(frozen=True)
class LayerMethod(Method):
    """A method on one named layer of a `Model` (`layer=None`: the model's Grad-CAM layer)."""

    layer: str | None = None

    def __post_init__(self):
        if self.layer is not None and not isinstance(self.layer, str):
            raise ValueError(f"{type(self).__name__}: layer must be a layer name (str), got {self.layer!r}")

    @property
    def needs_layers(self) -> bool:
        return True

    @property
    def class_only(self) -> bool:
        return True

    def check(self, model, image_shape):
        super().check(model, image_shape)
        check_spatial_layer(model, self.layer or model.default_layer(), image_shape)

    def prepare(self, model, image_shape, *, images_per_call):
        self.check(model, tuple(image_shape))
        return self if self.layer is not None else dataclasses.replace(self, layer=model.default_layer())


def _model(method: Method, model):
    if not is_model(model):
        raise ValueError(f"method {method.label!r} needs a Model with named layers, not a bare logit function")
    return model


@register("gradcam")
@dataclasses.dataclass(frozen=True)
class GradCAM(LayerMethod):
    """Grad-CAM on `layer`."""

    def explain(self, model, x, target, *, key=None):
        return gradcam(_model(self, model), x, target, layer=self.layer)


@register("guided_gradcam")
@dataclasses.dataclass(frozen=True)
class GuidedGradCAM(LayerMethod):
    """Guided backprop x Grad-CAM on `layer`."""

    def check(self, model, image_shape):
        super().check(model, image_shape)
        check_rule_sites(model, image_shape, what="guided Grad-CAM")

    def explain(self, model, x, target, *, key=None):
        return guided_gradcam(_model(self, model), x, target, layer=self.layer)
