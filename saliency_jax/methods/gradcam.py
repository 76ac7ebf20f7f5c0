"""Grad-CAM (Selvaraju et al. 2017), guided Grad-CAM, and the skeleton every CAM method shares.

cam = ReLU(sum_k alpha_k A_k), alpha_k = mean over positions of dS_c/dA_k, for
the activations A [h,w,K] of the chosen layer, upsampled (bilinear) to the
image size. The layer's gradient comes from the model's flax `perturb` point of
that name, in the same forward/backward pass that yields A.

The CAM family (`CAMMethod`): a method computes a map [h,w] on the layer's grid
from the layer's activations (and, for `GradientCAM` subclasses, their
gradient); the base clips it at zero (`relu=True`) and upsamples it to the
image. A non-spatial layer [K] (after a global pool) is a 1x1 map for Grad-CAM
only (as Captum's `LayerGradCam`): its map is then one constant.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from saliency_jax.attribution.gradients import TOP1, class_gradient
from saliency_jax.attribution.rules import guided_backprop
from saliency_jax.methods.base import Method, is_model, register
from saliency_jax.models.inspect import layer_shapes
from saliency_jax.targets import check_layer


def check_spatial_layer(model, layer: str, image_shape, *, title: str = "Grad-CAM", vectors: bool = False) -> tuple:
    """The per-image shape of `layer`; ValueError unless it is spatial [h,w,K] (or [K] with `vectors`)."""
    shape = check_layer(layer, layer_shapes(model, image_shape))
    if len(shape) != 3 and not (vectors and len(shape) == 1):
        raise ValueError(f"{title} needs a spatial layer [h,w,K]; {layer!r} has shape {shape}")
    return shape


def perturbed_output(model, x, layer: str, perturbation):
    """(logits [K], the layer's activation) of one image x [H,W,C] with `perturbation` added at `layer`.

    The perturbation has the layer's batched shape [1,...]; replacing the
    activation A by A' is the perturbation A' - A.
    """
    variables = {**model.variables, "perturbations": {layer: perturbation}}
    logits, feats = model.module.apply(variables, x[None])
    return logits[0], feats[layer][0]


def layer_activations_and_gradient(model, x, target, layer: str):
    """(A [h,w,K], dS_target/dA [h,w,K]) for one image x [H,W,C] (TOP1 resolved on x); [K] layers as 1x1."""
    shape = jax.eval_shape(lambda x: model.apply(x[None])[1][layer], x)
    if len(shape.shape) not in (2, 4):
        raise ValueError(f"Grad-CAM needs a spatial layer [h,w,K]; {layer!r} has shape {shape.shape[1:]}")

    def score(perturbation):
        logits, acts = perturbed_output(model, x, layer, perturbation)
        t = jnp.where(target == TOP1, jnp.argmax(logits), target)
        return logits[t], acts

    grads, acts = jax.grad(score, has_aux=True)(jnp.zeros(shape.shape, shape.dtype))
    spatial = acts.shape if acts.ndim == 3 else (1, 1, acts.shape[-1])
    return acts.reshape(spatial), grads[0].reshape(spatial)


def upsample_map(cam, x):
    """A map [h,w] on the layer's grid, resized (bilinear) and broadcast to x's shape [H,W,C]."""
    cam = jax.image.resize(cam, x.shape[:2], method="bilinear")
    return jnp.broadcast_to(cam[..., None], x.shape)


def weighted_sum(acts, weights):
    """sum_k weights_k A_k: A [h,w,K], weights [K] -> [h,w]."""
    return jnp.einsum("hwk,k->hw", acts, weights)


def gradcam_map(acts, grads):
    """Grad-CAM on the layer's grid: sum_k mean_hw(dS/dA_k) A_k -> [h,w] (signed)."""
    return weighted_sum(acts, jnp.mean(grads, axis=(0, 1)))


def gradcam(model, x, target, *, layer: str | None = None, relu: bool = True):
    """Grad-CAM map for one image, upsampled and broadcast to x's shape [H,W,C] (>= 0 with `relu`)."""
    cam = gradcam_map(*layer_activations_and_gradient(model, x, target, layer or model.default_layer()))
    return upsample_map(jax.nn.relu(cam) if relu else cam, x)


def guided_gradcam(model, x, target, *, layer: str | None = None):
    """Guided backprop gradient times the Grad-CAM map: [H,W,C]."""
    return class_gradient(guided_backprop(model.logit_fn), x, target) * gradcam(model, x, target, layer=layer)


def model_of(method: Method, model):
    """`model` if it is a `Model` (named layers); ValueError naming the method otherwise."""
    if not is_model(model):
        raise ValueError(f"method {method.label!r} needs a Model with named layers, not a bare logit function")
    return model


@dataclasses.dataclass(frozen=True)
class LayerMethod(Method):
    """A method on one named layer of a `Model` (`layer=None`: the model's Grad-CAM layer).

    Class attributes: `title` (the method's name in messages) and `vectors`
    (True: a non-spatial layer [K] is accepted as a 1x1 map).
    """

    layer: str | None = None

    title: ClassVar[str] = "Grad-CAM"
    vectors: ClassVar[bool] = False

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
        self.layer_shape(model, image_shape)

    def layer_shape(self, model, image_shape) -> tuple:
        """The checked per-image shape of the layer ([h,w,K], or [K] where `vectors`)."""
        return check_spatial_layer(model, self.layer or model.default_layer(), tuple(image_shape),
                                   title=self.title, vectors=self.vectors)

    def prepare(self, model, image_shape, *, images_per_call):
        self.check(model, tuple(image_shape))
        return self if self.layer is not None else dataclasses.replace(self, layer=model.default_layer())


@dataclasses.dataclass(frozen=True)
class CAMMethod(LayerMethod):
    """A class activation map: `layer_map` [h,w] on the layer's grid, clipped at 0 (`relu`), upsampled.

    Subclasses implement `layer_map(model, x, target, layer) -> [h,w]`.
    """

    relu: bool = True

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.relu, bool):
            raise ValueError(f"{type(self).__name__}: relu must be True or False, got {self.relu!r}")

    def layer_map(self, model, x, target, layer: str) -> jax.Array:
        """The signed map [h,w] on the layer's grid for one image."""
        raise NotImplementedError

    def explain(self, model, x, target, *, key=None):
        model = model_of(self, model)
        cam = self.layer_map(model, x, target, self.layer or model.default_layer())
        return upsample_map(jax.nn.relu(cam) if self.relu else cam, x)


@dataclasses.dataclass(frozen=True)
class GradientCAM(CAMMethod):
    """A CAM computed from the layer's activations A [h,w,K] and gradient dS_c/dA [h,w,K] (`combine`)."""

    @staticmethod
    def combine(acts, grads) -> jax.Array:
        """The signed map [h,w] from A [h,w,K] and dS_c/dA [h,w,K]."""
        raise NotImplementedError

    def layer_map(self, model, x, target, layer: str):
        return self.combine(*layer_activations_and_gradient(model, x, target, layer))


@register("gradcam")
@dataclasses.dataclass(frozen=True)
class GradCAM(GradientCAM):
    """Grad-CAM on `layer`; `relu=False` keeps the signed map; a [K] layer is a 1x1 map."""

    vectors = True
    combine = staticmethod(gradcam_map)


@register("guided_gradcam")
@dataclasses.dataclass(frozen=True)
class GuidedGradCAM(LayerMethod):
    """Guided backprop x Grad-CAM on `layer`."""

    def explain(self, model, x, target, *, key=None):
        return guided_gradcam(model_of(self, model), x, target, layer=self.layer)
