"""A tiny ReLU ConvNet wrapped as a `Model`: fast stand-in for the pretrained network in tests."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.models.model import Model


class TinyConvNet(nn.Module):
    """conv-ReLU (named "conv", a perturb point) -> max-pool -> conv-tanh -> mean ("pool") -> dense."""

    num_classes: int = 4

    @nn.compact
    def __call__(self, x):
        y = nn.relu(nn.Conv(8, (3, 3))(x))
        y = self.perturb("conv", y)
        feats = {"conv": y}
        y = nn.max_pool(y, (2, 2), strides=(2, 2))
        y = jnp.tanh(nn.Conv(6, (3, 3))(y))
        feats["pool"] = y.mean(axis=(1, 2))
        return nn.Dense(self.num_classes)(feats["pool"]), feats


def tiny_model(size=(8, 8), num_classes: int = 4, *, mean: float = 0.0, std: float = 1.0, seed: int = 0) -> Model:
    """A `Model` of `TinyConvNet` with fixed weights (shapes from an abstract init, values seeded)."""
    module = TinyConvNet(num_classes)
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, *size, 3)))
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.3, s.shape), s.dtype), shapes["params"])
    return Model("tiny", module, {"params": params}, tuple(size), (mean,), (std,),
                 tuple(f"class{i}" for i in range(num_classes)), ("conv", "pool"))
