"""Grad-CAM's gradient-weighted relatives on a named layer: Grad-CAM++, XGrad-CAM, LayerCAM, HiResCAM.

Each is a `GradientCAM`: a map [h,w] from the layer's activations A [h,w,K]
and gradient g = dS_c/dA [h,w,K] of the class logit S_c, clipped at zero and
upsampled like Grad-CAM (`relu=False` keeps the sign). Formulas as in the
papers and pytorch-grad-cam 1.5.7:

  Grad-CAM++ (Chattopadhyay et al. 2018):  w_k = sum_ij a_ij relu(g_ij),
      a_ij = g^2 / (2 g^2 + sum_ab A_ab g^3)   (the exponential form exp(S_c):
      exact when S_c is linear in A beyond the layer, e.g. pool + dense)
  XGrad-CAM (Fu et al. 2020):   w_k = sum_ij A_ij g_ij / (sum_ij A_ij + eps)
  LayerCAM (Jiang et al. 2021): cam = sum_k relu(g_k) * A_k   (per position)
  HiResCAM (Draelos & Carin 2020): cam = sum_k g_k * A_k      (per position)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from saliency_jax.methods.base import register
from saliency_jax.methods.gradcam import GradientCAM, weighted_sum

PLUS_PLUS_EPS = 1e-6  # pytorch-grad-cam's, in the denominator of Grad-CAM++'s a_ij
XGRAD_EPS = 1e-7  # pytorch-grad-cam's, in XGrad-CAM's normaliser


def gradcam_plus_plus_weights(acts, grads):
    """Grad-CAM++ channel weights [K] from A [h,w,K] and dS/dA [h,w,K] (exponential-form closed form)."""
    g2 = grads * grads
    denominator = 2 * g2 + jnp.sum(acts, axis=(0, 1)) * g2 * grads + PLUS_PLUS_EPS
    alphas = jnp.where(grads != 0, g2 / denominator, 0.0)
    return jnp.sum(alphas * jax.nn.relu(grads), axis=(0, 1))


def xgradcam_weights(acts, grads):
    """XGrad-CAM channel weights [K]: sum_ij A g / (sum_ij A + eps)."""
    return jnp.sum(acts * grads, axis=(0, 1)) / (jnp.sum(acts, axis=(0, 1)) + XGRAD_EPS)


@register("gradcam_plus_plus")
@dataclasses.dataclass(frozen=True)
class GradCAMPlusPlus(GradientCAM):
    """Grad-CAM++ on `layer`: positive gradients weighted by the second/third-order a_ij."""

    title = "Grad-CAM++"

    @staticmethod
    def combine(acts, grads):
        return weighted_sum(acts, gradcam_plus_plus_weights(acts, grads))


@register("xgradcam")
@dataclasses.dataclass(frozen=True)
class XGradCAM(GradientCAM):
    """XGrad-CAM on `layer`: gradients weighted by the normalised activations."""

    title = "XGrad-CAM"

    @staticmethod
    def combine(acts, grads):
        return weighted_sum(acts, xgradcam_weights(acts, grads))


@register("layercam")
@dataclasses.dataclass(frozen=True)
class LayerCAM(GradientCAM):
    """LayerCAM on `layer`: each position's activations weighted by its positive gradient."""

    title = "LayerCAM"

    @staticmethod
    def combine(acts, grads):
        return jnp.sum(jax.nn.relu(grads) * acts, axis=-1)


@register("hirescam")
@dataclasses.dataclass(frozen=True)
class HiResCAM(GradientCAM):
    """HiResCAM on `layer`: the element-wise gradient x activation, summed over channels."""

    title = "HiResCAM"

    @staticmethod
    def combine(acts, grads):
        return jnp.sum(grads * acts, axis=-1)
