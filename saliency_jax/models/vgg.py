"""VGG16 (Simonyan & Zisserman 2015, configuration D), inference only.

Thirteen 3x3 convolutions with ReLU in five blocks, each block ending in a 2x2
max-pool, then fc6/fc7 (ReLU) and the class layer; dropout is an identity at
inference and omitted. Two published weight layouts load into it
(`convert`): torchvision's (`features.N`, `classifier.N`; an
AdaptiveAvgPool2d((7,7)) before fc6, flattened in (c,h,w) order) and Keras
applications' (`block1_conv1` ... `fc1`, `fc2`, `predictions`; a plain (h,w,c)
flatten, BGR "caffe" input). Both become one param tree for RGB input and an
(h,w,c) flatten: the converter permutes fc6's rows and, for Keras, flips the
first conv's input channels.

Named features (each a `perturb` point): `conv{b}_{j}` (after ReLU, b = 1..5),
`pool{b}`, `fc6`, `fc7` (after ReLU). Param scopes use the Keras names:
`block{b}_conv{j}`, `fc1`, `fc2`, `predictions`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.checkpoints.match import TensorReader
from saliency_jax.models import convert as cv
from saliency_jax.models.taps import tap

BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
POOL_SIZE = (7, 7)  # torchvision's AdaptiveAvgPool2d output before fc6
GRADCAM_LAYER = "conv5_3"


@dataclasses.dataclass(frozen=True)
class Config:
    """num_classes and hidden (fc6/fc7 width) follow the checkpoint; adaptive_pool: torchvision semantics."""

    num_classes: int = 1000
    hidden: int = 4096
    adaptive_pool: bool = True


def layer_names() -> tuple[str, ...]:
    """Feature names in forward order: conv1_1, conv1_2, pool1, ..., conv5_3, pool5, fc6, fc7."""
    names = []
    for b, widths in enumerate(BLOCKS, 1):
        names += [f"conv{b}_{j}" for j in range(1, len(widths) + 1)] + [f"pool{b}"]
    return (*names, "fc6", "fc7")


def _pool_matrix(n: int, out: int) -> np.ndarray:
    """[out, n] averaging weights of torch's adaptive pooling: bin i spans [floor(i n/out), ceil((i+1) n/out))."""
    m = np.zeros((out, n), np.float32)
    for i in range(out):
        start, end = (i * n) // out, -(-(i + 1) * n // out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(x, out: tuple[int, int]):
    """torch.nn.AdaptiveAvgPool2d for NHWC: [B,H,W,C] -> [B,out_h,out_w,C] (the identity when sizes agree)."""
    ph = jnp.asarray(_pool_matrix(x.shape[1], out[0]), x.dtype)
    pw = jnp.asarray(_pool_matrix(x.shape[2], out[1]), x.dtype)
    return jnp.einsum("ih,bhwc,jw->bijc", ph, x, pw)


class VGG16(nn.Module):
    """x: [B,H,W,3] preprocessed RGB -> (logits [B,K], {feature name: activation})."""

    config: Config = Config()
    act: Callable = jax.nn.relu

    @nn.compact
    def __call__(self, x):
        feats = {}
        y = x
        for b, widths in enumerate(BLOCKS, 1):
            for j, width in enumerate(widths, 1):
                conv = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), name=f"block{b}_conv{j}")
                y = tap(self, feats, f"conv{b}_{j}", self.act(conv(y)))
            y = tap(self, feats, f"pool{b}", nn.max_pool(y, (2, 2), strides=(2, 2)))
        if self.config.adaptive_pool:
            y = adaptive_avg_pool(y, POOL_SIZE)
        y = y.reshape(y.shape[0], -1)  # (h, w, c) order
        y = tap(self, feats, "fc6", self.act(nn.Dense(self.config.hidden, name="fc1")(y)))
        y = tap(self, feats, "fc7", self.act(nn.Dense(self.config.hidden, name="fc2")(y)))
        return nn.Dense(self.config.num_classes, name="predictions")(y), feats


def _source_names(variant: str) -> tuple[list[str], tuple[str, str, str]]:
    """Checkpoint names of the 13 convs and the 3 dense layers in `variant`'s layout."""
    if variant == "keras":
        convs = [f"block{b}_conv{j}" for b, w in enumerate(BLOCKS, 1) for j in range(1, len(w) + 1)]
        return convs, ("fc1", "fc2", "predictions")
    convs, index = [], 0
    for widths in BLOCKS:
        for _ in widths:
            convs.append(f"features.{index}")
            index += 2  # conv, ReLU
        index += 1  # max-pool
    return convs, ("classifier.0", "classifier.3", "classifier.6")


_CONV_SCOPES = tuple(f"block{b}_conv{j}" for b, w in enumerate(BLOCKS, 1) for j in range(1, len(w) + 1))


def _spec(get: TensorReader, variant: str) -> tuple[Config, int, dict]:
    """(Config, input side, {checkpoint name: shape}) for the head sizes the checkpoint declares.

    The class count and fc width come from 1-D biases and the Keras input side from fc6's rows
    (`TensorReader.dim`); the shapes from `jax.eval_shape` of the VGG16 so configured.
    """
    convs, (fc6, fc7, fc8) = _source_names(variant)
    sep = "/" if variant == "keras" else "."
    hidden = get.dim(f"{fc6}{sep}bias", 0, 4096, ndim=1)
    config = Config(get.dim(f"{fc8}{sep}bias", 0, 1000, ndim=1), hidden, adaptive_pool=variant == "torchvision")
    side = 224
    if variant == "keras":  # plain flatten of [s,s,512]: rows = 512 s^2, input side 32 s
        side = 32 * max(1, round(math.sqrt(get.dim(f"{fc6}/kernel", 0, 512 * 49, ndim=2) / 512)))
    params = cv.param_shapes(VGG16(config), side)
    shapes = {}
    for scope, name in zip((*_CONV_SCOPES, "fc1", "fc2", "predictions"), (*convs, fc6, fc7, fc8)):
        shapes.update(cv.layer_shapes(name, params[scope]["kernel"], variant))
    return config, side, shapes


def convert(tensors: Mapping[str, np.ndarray], variant: str, dtype=np.float32) -> dict:
    """Maps a torchvision or Keras VGG16 checkpoint to `VGG16` params (pure dict -> dict).

    Args:
      tensors: {name: array}, from `checkpoints.read_checkpoint`.
      variant: "torchvision" or "keras".
      dtype: param dtype.

    The class count and fc width come from the checkpoint (fine-tuned heads load);
    a Keras fc1 fixes the input size (`input_size`). Raises CheckpointError
    listing missing, unexpected and misshapen tensors, before converting any.
    """
    cv.check_variant(variant)
    get = TensorReader(tensors, f"vgg16 ({variant} layout)")
    config, side, shapes = _spec(get, variant)
    get.expect(shapes)
    convs, (fc6, fc7, fc8) = _source_names(variant)
    params, cin = {}, 3
    for scope, name, cout in zip(_CONV_SCOPES, convs, [w for ws in BLOCKS for w in ws]):
        kernel, bias = cv.conv(get, name, variant, cin, cout, 3)
        if variant == "keras" and cin == 3:
            kernel = cv.flip_input_channels(kernel)
        params[scope] = cv.as_params(kernel, bias, dtype)
        cin = cout
    hidden, classes = config.hidden, config.num_classes
    if variant == "keras":
        params["fc1"] = cv.as_params(*cv.dense(get, fc6, variant, 512 * (side // 32) ** 2, hidden), dtype)
    else:  # torchvision flattens [512,7,7] as (c,h,w); ours is (h,w,c)
        kernel, bias = cv.dense(get, fc6, variant, 512 * POOL_SIZE[0] * POOL_SIZE[1], hidden)
        kernel = kernel.reshape(512, *POOL_SIZE, hidden).transpose(1, 2, 0, 3).reshape(-1, hidden)
        params["fc1"] = cv.as_params(kernel, bias, dtype)
    params["fc2"] = cv.as_params(*cv.dense(get, fc7, variant, hidden, hidden), dtype)
    params["predictions"] = cv.as_params(*cv.dense(get, fc8, variant, hidden, classes), dtype)
    get.finish()
    return params


def config_for(params: dict, variant: str) -> Config:
    """The `Config` that converted `params` need (class count and fc width from their shapes)."""
    return Config(
        num_classes=int(params["predictions"]["bias"].shape[0]),
        hidden=int(params["fc1"]["bias"].shape[0]),
        adaptive_pool=variant == "torchvision",
    )


def input_size(params: dict, variant: str) -> int:
    """Input side length: 224, or for Keras weights the one fc1 was trained at (512 s^2 rows -> 32 s)."""
    if variant == "torchvision":
        return 224
    return 32 * round(math.sqrt(params["fc1"]["kernel"].shape[0] / 512))
