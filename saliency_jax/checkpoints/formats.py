"""One entry point for every checkpoint format: detect it from the file's bytes, read it to {name: array}."""

from __future__ import annotations

import os
import zipfile

import numpy as np

from saliency_jax.checkpoints.keras_h5 import flatten_layers, load_keras_weights
from saliency_jax.checkpoints.safetensors_reader import load_safetensors
from saliency_jax.checkpoints.errors import CheckpointError
from saliency_jax.checkpoints.torch_pickle import load_torch_checkpoint

FORMATS = ("torch", "safetensors", "keras")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_HDF5_OFFSETS = (0, 512, 1024, 2048)  # HDF5 allows a user block of 512 * 2^k bytes.
_WRAPPER_PREFIXES = ("module.", "model.")  # DataParallel / Lightning-style wrappers.


def detect_format(path: str | os.PathLike) -> str:
    """"torch" (zip or legacy `torch.save`), "safetensors" or "keras" (`.h5`, `.weights.h5`, `.keras`).

    Decided by the file's content, not its name. Raises CheckpointError for anything else.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path!r}")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(_HDF5_OFFSETS[-1] + len(_HDF5_MAGIC))
    if any(head[o : o + len(_HDF5_MAGIC)] == _HDF5_MAGIC for o in _HDF5_OFFSETS):
        return "keras"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                return "keras" if "model.weights.h5" in archive.namelist() else "torch"
        except zipfile.BadZipFile:
            return "torch"  # the torch reader reports the damage
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if head.startswith(b"\x80"):  # a pickle: the legacy torch.save layout
        return "torch"
    raise CheckpointError(
        f"cannot load {path!r}: unrecognised checkpoint format (expected a PyTorch .pth/.pt, "
        "a .safetensors, or a Keras .h5 / .weights.h5 / .keras file)"
    )


def _strip_wrapper_prefix(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drops a prefix that every key shares, such as DataParallel's "module."."""
    for prefix in _WRAPPER_PREFIXES:
        if tensors and all(k.startswith(prefix) for k in tensors):
            return {k[len(prefix) :]: v for k, v in tensors.items()}
    return tensors


def read_checkpoint(path: str | os.PathLike, fmt: str | None = None) -> dict[str, np.ndarray]:
    """{tensor name: array} of a checkpoint in any supported format.

    Torch and safetensors files keep their state-dict names (a prefix shared by all
    keys, like "module.", is dropped); Keras files become "layer/kernel",
    "layer/bias", "layer/gamma", ... (see `keras_h5.flatten_layers`).
    """
    fmt = fmt or detect_format(path)
    if fmt == "keras":
        return flatten_layers(load_keras_weights(path))
    if fmt == "safetensors":
        return _strip_wrapper_prefix(load_safetensors(path))
    if fmt == "torch":
        return _strip_wrapper_prefix(load_torch_checkpoint(path))
    raise ValueError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
