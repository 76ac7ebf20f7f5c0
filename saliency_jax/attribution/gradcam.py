"""Grad-CAM (Selvaraju et al. 2017) and guided Grad-CAM on a named layer of a `Model`.

cam = ReLU(sum_k alpha_k A_k), alpha_k = mean over positions of dS_c/dA_k, for
the activations A [h,w,K] of the chosen layer, upsampled (bilinear) to the
image size. The layer's gradient comes from the model's flax `perturb` point of
that name, in the same forward/backward pass that yields A.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from saliency_jax.attribution.gradients import TOP1, class_gradient
from saliency_jax.attribution.rules import guided_backprop


def check_layer(model, layer: str) -> None:
    """Raises ValueError unless `layer` is one of the model's spatial feature names."""
    if layer not in model.layers:
        raise ValueError(f"unknown layer {layer!r} for {model.name}; choose one of {', '.join(model.layers)}")


def with_layer(model, options: dict) -> dict:
    """`options` with "layer" checked, or set to the model's default Grad-CAM layer when absent/None."""
    layer = options.get("layer")
    layer = model.default_layer() if layer is None else layer
    check_layer(model, layer)
    return {**options, "layer": layer}


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
