"""ResNet50 (He et al. 2016) with bottleneck blocks, inference only.

Two layouts of the same network load into it (`convert`):

* torchvision ("v1.5"; also timm's `resnet50` names): the stride of a
  downsampling block sits on its 3x3 conv; convs have no bias; BN eps 1e-5.
* Keras applications ("v1", as in the original Caffe model): the stride sits
  on the block's first 1x1 conv; convs have biases; BN eps 1.001e-5; BGR input.

Batch norm is folded into each conv at conversion (float64), so every conv
carries a kernel and a bias. Param scopes: `stem_conv`, `block{s}_{b}/
{conv1,conv2,conv3,downsample}`, `fc`.

Named features (each a `perturb` point): `stem` (after the max-pool), the
output of every block `layer{s}_{b}` (s = 1..4, b from 0, torchvision
numbering), each stage's output `layer{s}` (its last block's), and `pool`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.checkpoints.match import TensorReader
from saliency_jax.models import convert as cv
from saliency_jax.models.taps import tap

STAGES = ((3, 64), (4, 128), (6, 256), (3, 512))  # (blocks, bottleneck width); output width 4x
EXPANSION = 4
BN_EPSILON = {"torchvision": 1e-5, "keras": 1.001e-5}
GRADCAM_LAYER = "layer4"


@dataclasses.dataclass(frozen=True)
class Config:
    """num_classes follows the checkpoint; stride_in_3x3: torchvision v1.5 (True) or Keras v1 (False)."""

    num_classes: int = 1000
    stride_in_3x3: bool = True


def _blocks():
    """(stage s, block b, width, input channels, stride) for every bottleneck block."""
    cin = 64
    for s, (n, width) in enumerate(STAGES, 1):
        for b in range(n):
            yield s, b, width, cin, 2 if s > 1 and b == 0 else 1
            cin = width * EXPANSION


def layer_names() -> tuple[str, ...]:
    """Feature names in forward order: stem, layer1_0, layer1_1, layer1_2, layer1, ..., layer4, pool."""
    names = ["stem"]
    for s, b, *_ in _blocks():
        names.append(f"layer{s}_{b}")
        if b == STAGES[s - 1][0] - 1:
            names.append(f"layer{s}")
    return (*names, "pool")


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 channels), plus the identity or a strided 1x1 projection; ReLU after the sum."""

    width: int
    stride: int = 1
    project: bool = False
    stride_in_3x3: bool = True
    act: Callable = jax.nn.relu

    @nn.compact
    def __call__(self, x):
        s1, s3 = (1, self.stride) if self.stride_in_3x3 else (self.stride, 1)
        y = self.act(nn.Conv(self.width, (1, 1), strides=s1, padding="VALID", name="conv1")(x))
        y = self.act(nn.Conv(self.width, (3, 3), strides=s3, padding=((1, 1), (1, 1)), name="conv2")(y))
        y = nn.Conv(self.width * EXPANSION, (1, 1), padding="VALID", name="conv3")(y)
        if self.project:
            x = nn.Conv(self.width * EXPANSION, (1, 1), strides=self.stride, padding="VALID", name="downsample")(x)
        return self.act(y + x)


class ResNet50(nn.Module):
    """x: [B,H,W,3] preprocessed RGB -> (logits [B,K], {feature name: activation})."""

    config: Config = Config()
    act: Callable = jax.nn.relu

    @nn.compact
    def __call__(self, x):
        feats = {}
        y = self.act(nn.Conv(64, (7, 7), strides=2, padding=((3, 3), (3, 3)), name="stem_conv")(x))
        y = tap(self, feats, "stem", nn.max_pool(y, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))))
        for s, b, width, _, stride in _blocks():
            block = Bottleneck(width, stride, b == 0, self.config.stride_in_3x3, self.act, name=f"block{s}_{b}")
            y = tap(self, feats, f"layer{s}_{b}", block(y))
            if b == STAGES[s - 1][0] - 1:
                y = tap(self, feats, f"layer{s}", y)
        y = tap(self, feats, "pool", jnp.mean(y, axis=(1, 2)))
        return nn.Dense(self.config.num_classes, name="fc")(y), feats


def _source_names(variant: str, s: int, b: int, i: int) -> tuple[str, str]:
    """Checkpoint (conv, bn) names of conv `i` (1..3; 0 = the projection) of block (s, b)."""
    if variant == "keras":
        pre = f"conv{s + 1}_block{b + 1}_{i}"
        return f"{pre}_conv", f"{pre}_bn"
    if i == 0:
        return f"layer{s}.{b}.downsample.0", f"layer{s}.{b}.downsample.1"
    return f"layer{s}.{b}.conv{i}", f"layer{s}.{b}.bn{i}"


def _conv_bn_shapes(names: tuple[str, str], kernel_shape: tuple[int, ...], variant: str) -> dict:
    """{checkpoint name: shape} of one conv (bias only in Keras) and its BatchNorm."""
    conv = cv.layer_shapes(names[0], kernel_shape, variant, bias=variant == "keras")
    return {**conv, **cv.batch_norm_shapes(names[1], kernel_shape[-1], variant)}


def _spec(get: TensorReader, variant: str) -> tuple[Config, dict]:
    """(Config, {checkpoint name: shape} in `convert`'s reading order); the class count comes from
    the checkpoint's 1-D fc bias, the shapes from `jax.eval_shape` of the ResNet50 so configured."""
    keras = variant == "keras"
    fc = "predictions" if keras else "fc"
    config = Config(get.dim(f"{fc}{'/' if keras else '.'}bias", 0, 1000, ndim=1), stride_in_3x3=not keras)
    params = cv.param_shapes(ResNet50(config), 64)
    stem = ("conv1_conv", "conv1_bn") if keras else ("conv1", "bn1")
    shapes = _conv_bn_shapes(stem, params["stem_conv"]["kernel"], variant)
    for s, b, *_ in _blocks():
        for i in (1, 2, 3, 0) if b == 0 else (1, 2, 3):
            kernel = params[f"block{s}_{b}"]["downsample" if i == 0 else f"conv{i}"]["kernel"]
            shapes.update(_conv_bn_shapes(_source_names(variant, s, b, i), kernel, variant))
    return config, {**shapes, **cv.layer_shapes(fc, params["fc"]["kernel"], variant)}


def convert(tensors: Mapping[str, np.ndarray], variant: str, dtype=np.float32) -> dict:
    """Maps a torchvision/timm or Keras ResNet50 checkpoint to `ResNet50` params (pure dict -> dict).

    Args:
      tensors: {name: array}, from `checkpoints.read_checkpoint`.
      variant: "torchvision" or "keras" (also fixes the stride placement, `config_for`).
      dtype: param dtype.

    BN is folded in float64. The class count comes from the checkpoint. Raises
    CheckpointError listing missing, unexpected and misshapen tensors, before converting any.
    """
    cv.check_variant(variant)
    get = TensorReader(tensors, f"resnet50 ({variant} layout)")
    config, shapes = _spec(get, variant)
    get.expect(shapes)
    keras = variant == "keras"

    def conv_bn(names, cin, cout, k):
        kernel, bias = cv.conv(get, names[0], variant, cin, cout, k, bias=keras)
        return cv.fold_batch_norm(kernel, bias, cv.batch_norm(get, names[1], variant, cout), BN_EPSILON[variant])

    kernel, bias = conv_bn(("conv1_conv", "conv1_bn") if keras else ("conv1", "bn1"), 3, 64, 7)
    params = {"stem_conv": cv.as_params(cv.flip_input_channels(kernel) if keras else kernel, bias, dtype)}
    for s, b, width, cin, _ in _blocks():
        out = width * EXPANSION
        shapes = {1: (cin, width, 1), 2: (width, width, 3), 3: (width, out, 1)}
        if b == 0:
            shapes[0] = (cin, out, 1)
        block = {}
        for i, (ci, co, k) in shapes.items():
            scope = "downsample" if i == 0 else f"conv{i}"
            block[scope] = cv.as_params(*conv_bn(_source_names(variant, s, b, i), ci, co, k), dtype)
        params[f"block{s}_{b}"] = block
    fc = "predictions" if keras else "fc"
    params["fc"] = cv.as_params(*cv.dense(get, fc, variant, 2048, config.num_classes), dtype)
    get.finish()
    return params


def config_for(params: dict, variant: str) -> Config:
    """The `Config` that converted `params` need (class count from their shapes; stride per variant)."""
    return Config(num_classes=int(params["fc"]["bias"].shape[0]), stride_in_3x3=variant == "torchvision")


def input_size(params: dict, variant: str) -> int:
    """224: the resolution both published weight sets were trained at (any size runs)."""
    del params, variant
    return 224
