"""EfficientNet-Lite (Tan & Le 2019, the "lite" variant: ReLU6, no squeeze-excitation).

Inference mode only: batch normalisation is folded into each convolution's
kernel and bias when weights are converted (in inference, BN is an affine map),
so every conv layer here carries `kernel` and `bias`.

The module returns `(logits, features)`; `features` maps the names in
`layer_names(config)` to activations, each also exposed to `Module.perturb`
so gradients w.r.t. any named layer are one `jax.grad` away. Param scopes are
`stem_conv`, `mbconv{i}/{expand,depthwise,project}`, `head_conv`, `classifier`.

Layout of blocks follows the reference PyTorch implementation
(`efficientnet-lite-pytorch`, itself mirroring TensorFlow's
`efficientnet_lite_builder.py`); `convert_torch_state_dict` maps its
state-dict names to this module's params.
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
from saliency_jax.models import convert, layers
from saliency_jax.models.taps import tap

# (repeats, kernel, stride, expand_ratio, in_filters, out_filters) per stage, for width/depth 1.0.
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_EPSILON = 1e-3


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One MBConv block: expand 1x1 -> depthwise kxk -> project 1x1 (+ residual)."""

    kernel: int
    stride: int
    expand_ratio: int
    in_filters: int
    out_filters: int
    stage: int

    @property
    def hidden(self) -> int:
        return self.in_filters * self.expand_ratio

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_filters == self.out_filters


@dataclasses.dataclass(frozen=True)
class Config:
    """Scaling of one EfficientNet-Lite variant."""

    name: str
    width: float
    depth: float
    image_size: int
    num_classes: int = 1000


LITE0 = Config("efficientnet_lite0", 1.0, 1.0, 224)
LITE1 = Config("efficientnet_lite1", 1.0, 1.1, 240)
LITE2 = Config("efficientnet_lite2", 1.1, 1.2, 260)


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(new + divisor if new < 0.9 * scaled else new)


def block_specs(config: Config) -> tuple[BlockSpec, ...]:
    """Every block of the network, in order (stem and head are not scaled: "lite")."""
    specs = []
    last = len(_STAGES) - 1
    for stage, (repeats, kernel, stride, expand, fin, fout) in enumerate(_STAGES):
        fin = STEM_FILTERS if stage == 0 else _round_filters(fin, config.width)
        fout = _round_filters(fout, config.width)
        if stage not in (0, last):
            repeats = int(math.ceil(config.depth * repeats))
        for r in range(repeats):
            specs.append(BlockSpec(kernel, stride if r == 0 else 1, expand, fin if r == 0 else fout, fout, stage + 1))
    return tuple(specs)


def layer_names(config: Config) -> tuple[str, ...]:
    """Targetable feature names: stem, each block, the head (pre-pooling) and the pooled vector."""
    return ("stem", *(f"block{i}" for i in range(len(block_specs(config)))), "head", "pool")


def stage_layers(config: Config) -> dict[str, str]:
    """Alias `stageN` -> the last block of stage N (N = 1..7)."""
    out = {}
    for i, spec in enumerate(block_specs(config)):
        out[f"stage{spec.stage}"] = f"block{i}"
    return out


class _ConvBias(nn.Module):
    """Convolution with bias (folded batch norm). kind: 'dense' | 'depthwise' | 'pointwise'."""

    features: int
    kernel: int = 1
    stride: int = 1
    kind: str = "pointwise"
    depthwise_impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        cin = x.shape[-1]
        init = nn.initializers.lecun_normal()
        if self.kind == "depthwise":
            w = self.param("kernel", nn.initializers.normal(0.3), (self.kernel, self.kernel, cin))
            y = layers.depthwise_conv(x, w, stride=self.stride, impl=self.depthwise_impl)
        elif self.kind == "dense":
            w = self.param("kernel", init, (self.kernel, self.kernel, cin, self.features))
            y = layers.conv(x, w, stride=self.stride)
        else:
            y = layers.pointwise_conv(x, self.param("kernel", init, (cin, self.features)))
        return y + self.param("bias", nn.initializers.zeros, (y.shape[-1],))


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation."""

    spec: BlockSpec
    act: Callable = jax.nn.relu6
    depthwise_impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        s = self.spec
        y = x
        if s.expand_ratio != 1:
            y = self.act(_ConvBias(s.hidden, name="expand")(y))
        y = _ConvBias(s.hidden, s.kernel, s.stride, "depthwise", self.depthwise_impl, name="depthwise")(y)
        y = self.act(y)
        y = _ConvBias(s.out_filters, name="project")(y)
        return y + x if s.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier. x: [B,H,W,3] preprocessed -> (logits [B,K], features)."""

    config: Config = LITE0
    act: Callable = jax.nn.relu6
    depthwise_impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        feats = {}
        y = tap(self, feats, "stem", self.act(_ConvBias(STEM_FILTERS, 3, 2, "dense", name="stem_conv")(x)))
        for i, spec in enumerate(block_specs(self.config)):
            y = tap(self, feats, f"block{i}", MBConv(spec, self.act, self.depthwise_impl, name=f"mbconv{i}")(y))
        y = tap(self, feats, "head", self.act(_ConvBias(HEAD_FILTERS, name="head_conv")(y)))
        y = tap(self, feats, "pool", jnp.mean(y, axis=(1, 2)))
        logits = nn.Dense(self.config.num_classes, name="classifier")(y)
        return logits, feats


def convert_torch_state_dict(sd: Mapping[str, np.ndarray], config: Config = LITE0, dtype=np.float32) -> dict:
    """Maps an `efficientnet_pytorch`-style state dict to this module's params (pure dict -> dict).

    Batch norm (eps 1e-3, running statistics) is folded into the preceding conv,
    computed in float64 and rounded once to `dtype`. Raises CheckpointError
    listing missing, unexpected and misshapen tensors if the checkpoint does not
    fit `config`.
    """
    get = TensorReader(sd, config.name)

    def conv_bn(conv: str, bn: str, cin: int, cout: int, k: int):
        # Torch conv weight [O,I,k,k] and BN stats -> (kernel [k,k,I,O] scaled, bias [O]).
        kernel, bias = convert.conv(get, conv, "torchvision", cin, cout, k, bias=False)
        return convert.fold_batch_norm(kernel, bias, convert.batch_norm(get, bn, "torchvision", cout), BN_EPSILON)

    def pointwise(kernel, bias):
        return convert.as_params(kernel[0, 0], bias, dtype)

    params: dict = {"stem_conv": convert.as_params(*conv_bn("_conv_stem", "_bn0", 3, STEM_FILTERS, 3), dtype)}
    specs = block_specs(config)
    for i, spec in enumerate(specs):
        pre = f"_blocks.{i}"
        block = {}
        if spec.expand_ratio != 1:
            block["expand"] = pointwise(*conv_bn(f"{pre}._expand_conv", f"{pre}._bn0", spec.in_filters, spec.hidden, 1))
        k, b = conv_bn(f"{pre}._depthwise_conv", f"{pre}._bn1", 1, spec.hidden, spec.kernel)
        block["depthwise"] = convert.as_params(k[:, :, 0, :], b, dtype)
        block["project"] = pointwise(*conv_bn(f"{pre}._project_conv", f"{pre}._bn2", spec.hidden, spec.out_filters, 1))
        params[f"mbconv{i}"] = block
    params["head_conv"] = pointwise(*conv_bn("_conv_head", "_bn1", specs[-1].out_filters, HEAD_FILTERS, 1))
    fc = convert.dense(get, "_fc", "torchvision", HEAD_FILTERS, config.num_classes)
    params["classifier"] = convert.as_params(*fc, dtype)
    get.finish()
    return params
