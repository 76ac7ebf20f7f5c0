"""What a model's layers look like: per-image activations and their shapes, without attribution.

Shared by attribution (unit targets, Grad-CAM), maximisation, features and
receptive fields; everything here is abstract (`jax.eval_shape`) or one forward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from saliency_jax.models.model import Model


def layer_activation(model: Model, x, layer: str):
    """The named feature of one image: x [H,W,C] -> [h,w,K] (or [K])."""
    return model.apply(x[None])[1][layer][0]


def architecture_key(model: Model) -> tuple:
    """What a model's shapes depend on (module, variable structure, shapes and dtypes), hashable:
    a key for host-side caches of shape computations."""
    leaves, treedef = jax.tree.flatten(model.variables)
    return model.module, treedef, tuple((tuple(v.shape), str(v.dtype)) for v in leaves)


def layer_shapes(model: Model, image_shape) -> dict[str, tuple]:
    """{layer: per-image activation shape} for images of `image_shape` [H,W,C], in `model.layers` order.

    Abstract (`jax.eval_shape`, no compute) and cached per architecture and image shape.
    """
    key = (architecture_key(model), tuple(image_shape))
    if key not in _SHAPES:
        feats = jax.eval_shape(lambda x: model.apply(x[None])[1], jax.ShapeDtypeStruct(key[1], jnp.float32))
        order = [name for name in model.layers if name in feats] + [n for n in feats if n not in model.layers]
        _SHAPES[key] = {name: tuple(feats[name].shape[1:]) for name in order}
    return dict(_SHAPES[key])


_SHAPES: dict = {}


__all__ = ["architecture_key", "layer_activation", "layer_shapes"]
