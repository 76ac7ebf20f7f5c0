"""Image-specific class saliency (Simonyan et al. 2014, Sec. 3): one backward pass.

The saliency of image I0 for class c is w = dS_c/dI at I0, with S_c the
*unnormalised* class score (a logit, never a softmax output). All functions
here take a logit function `logit_fn(x[H,W,C]) -> logits[K]` and ONE image;
batch them with `jax.vmap` (or use `saliency_jax.attribute`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from saliency_jax.targets import TOP1


def class_gradient(logit_fn, x, target):
    """dS_target/dx for one image, in a single forward and backward pass.

    Args:
      logit_fn: `[H,W,C] -> [K]` unnormalised scores.
      x: one image [H,W,C] in the model's input space.
      target: int32 scalar class index, or `TOP1` (-1) for the argmax of
        `logit_fn(x)`, resolved from the same forward pass.

    Returns:
      The gradient, shaped like `x`.
    """
    logits, pullback = jax.vjp(logit_fn, x)
    target = jnp.where(target == TOP1, jnp.argmax(logits), target)
    (grad,) = pullback(jax.nn.one_hot(target, logits.shape[-1], dtype=logits.dtype))
    return grad


def vanilla_gradient(logit_fn, x, target):
    """The paper's saliency gradient w = dS_c/dI at x: [H,W,C] -> [H,W,C].

    The paper's 2-D map is `max_c |w|` over colour channels
    (`saliency_jax.maps.saliency_map`).

    Example:
      >>> grads = jax.vmap(vanilla_gradient, (None, 0, 0))(model.logit_fn, x, targets)
    """
    return class_gradient(logit_fn, x, target)


def gradient_x_input(logit_fn, x, target):
    """Gradient times input, x * dS_c/dx (Shrikumar et al. 2016): [H,W,C]."""
    return x * class_gradient(logit_fn, x, target)


def resolve_target(logit_fn, x, target):
    """`target`, or the top-1 class of `logit_fn(x)` where target is `TOP1` (one forward pass)."""
    return jnp.where(target == TOP1, jnp.argmax(logit_fn(x)), target)
