"""Eigen-CAM (Muhammad & Yeasin 2020): the first principal component of a layer's activations.

The activations A [h,w,K] as hw observations of K channels are centred per
channel, A_c = A - mean_ij A; the map is the projection A_c v on the first
right singular vector v of A_c (`jnp.linalg.svd`), on the layer's grid, then
clipped at zero and upsampled like Grad-CAM. Class-agnostic: the target is not
used.

Sign convention: a singular vector's sign is arbitrary (LAPACK's choice), so v
is flipped where needed to make sum_k v_k >= 0: the map grows with the total
activation along the component. (pytorch-grad-cam keeps LAPACK's sign.)
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from saliency_jax.methods.base import register
from saliency_jax.methods.gradcam import CAMMethod


def first_component_projection(acts):
    """The centred activations' projection on their first principal direction: A [h,w,K] -> [h,w]."""
    flat = acts.reshape(-1, acts.shape[-1])
    centred = flat - jnp.mean(flat, axis=0)
    _, _, vt = jnp.linalg.svd(centred, full_matrices=False)
    direction = vt[0] * jnp.where(jnp.sum(vt[0]) < 0, -1.0, 1.0)
    return (centred @ direction).reshape(acts.shape[:2])


@register("eigencam")
@dataclasses.dataclass(frozen=True)
class EigenCAM(CAMMethod):
    """Eigen-CAM on `layer`: the first principal component of the activations (no gradient, no target)."""

    title = "Eigen-CAM"

    def layer_map(self, model, x, target, layer: str):
        return first_component_projection(model.apply(x[None])[1][layer][0])
