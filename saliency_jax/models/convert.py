"""Shared pieces of the checkpoint converters: reading conv/dense/BN weights in either layout, BN folding.

A converter first checks the checkpoint's names and shapes against those its
architecture needs (`param_shapes`, from `jax.eval_shape`, then `layer_shapes` /
`batch_norm_shapes` in the checkpoint's layout), so a mismatched file is refused
before anything is converted or allocated.

Layouts ("variants"): "torchvision" (PyTorch names and [O,I,kh,kw] conv / [out,in]
dense weights; also what timm and safetensors exports of those models use) and
"keras" (Keras layer names, "layer/kernel" [kh,kw,I,O] / [in,out], see
`checkpoints.keras_h5.flatten_layers`). Everything is read through a
`checkpoints.match.TensorReader`, in float64; BN is folded in float64 too and
each result rounded once to the param dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.checkpoints.match import TensorReader

VARIANTS = ("torchvision", "keras")
# Input normalisation (x - mean) / std on RGB uint8 values, per variant.
# Keras' "caffe" mode (BGR, minus the BGR mean) becomes RGB minus the RGB mean once the
# first conv's input channels are flipped (`flip_input_channels`).
PREPROCESSING = {
    "torchvision": (tuple(255 * m for m in (0.485, 0.456, 0.406)), tuple(255 * s for s in (0.229, 0.224, 0.225))),
    "keras": ((123.68, 116.779, 103.939), (1.0,)),
}
_BN_FIELDS = {"keras": ("gamma", "beta", "moving_mean", "moving_variance"),
              "torchvision": ("weight", "bias", "running_mean", "running_var")}


def variant_of(fmt: str) -> str:
    """The weight layout a checkpoint format carries: Keras files are "keras", the rest "torchvision"."""
    return "keras" if fmt == "keras" else "torchvision"


def conv(get: TensorReader, name: str, variant: str, cin: int, cout: int, k: int, *, bias: bool = True):
    """(kernel [k,k,cin,cout], bias [cout] or zeros) of one convolution, float64."""
    if variant == "keras":
        kernel = get(f"{name}/kernel", (k, k, cin, cout))
        b = get(f"{name}/bias", (cout,)) if bias else np.zeros(cout)
    else:
        kernel = np.transpose(get(f"{name}.weight", (cout, cin, k, k)), (2, 3, 1, 0))
        b = get(f"{name}.bias", (cout,)) if bias else np.zeros(cout)
    return kernel, b


def batch_norm(get: TensorReader, name: str, variant: str, c: int):
    """(gamma, beta, mean, var) [c] of one BatchNorm, float64."""
    return tuple(get(key, shape) for key, shape in batch_norm_shapes(name, c, variant).items())


def dense(get: TensorReader, name: str, variant: str, cin: int, cout: int):
    """(kernel [cin,cout], bias [cout]) of one fully connected layer, float64."""
    if variant == "keras":
        return get(f"{name}/kernel", (cin, cout)), get(f"{name}/bias", (cout,))
    return get(f"{name}.weight", (cout, cin)).T, get(f"{name}.bias", (cout,))


def param_shapes(module, side: int) -> dict:
    """`module`'s param tree with shape tuples as leaves, for a [1,side,side,3] input: `jax.eval_shape`
    of its init, so nothing is allocated or computed (a 1000-class VGG16 costs no 550 MB)."""
    init = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, side, side, 3))))
    return jax.tree.map(lambda leaf: tuple(leaf.shape), init["params"])


def layer_shapes(name: str, kernel_shape: tuple[int, ...], variant: str, *, bias: bool = True) -> dict:
    """{checkpoint name: shape} that `conv` / `dense` read for a Flax kernel of shape [k,k,I,O] or [I,O]."""
    out, sep = kernel_shape[-1], "/" if variant == "keras" else "."
    if variant == "keras":
        shapes = {f"{name}/kernel": tuple(kernel_shape)}
    else:
        shapes = {f"{name}.weight": (out, kernel_shape[-2], *kernel_shape[:-2])}
    if bias:
        shapes[f"{name}{sep}bias"] = (out,)
    return shapes


def batch_norm_shapes(name: str, c: int, variant: str) -> dict:
    """{checkpoint name: shape} of one BatchNorm's four [c] vectors, in `batch_norm`'s order."""
    sep = "/" if variant == "keras" else "."
    return {f"{name}{sep}{field}": (c,) for field in _BN_FIELDS[variant]}


def fold_batch_norm(kernel, bias, bn, eps: float):
    """Conv then inference BN as one conv: (kernel * s, (bias - mean) * s + beta), s = gamma / sqrt(var + eps)."""
    gamma, beta, mean, var = bn
    scale = gamma / np.sqrt(var + eps)
    return kernel * scale, beta + (bias - mean) * scale


def flip_input_channels(kernel):
    """Reverses a [k,k,I,O] kernel's input channels: a BGR-trained first conv made to take RGB."""
    return kernel[:, :, ::-1, :]


def as_params(kernel, bias, dtype) -> dict:
    """{"kernel", "bias"} rounded once to `dtype` (contiguous, for the cache and device copies)."""
    return {"kernel": np.ascontiguousarray(kernel, dtype=dtype), "bias": np.asarray(bias, dtype=dtype)}


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
