"""Read `.safetensors` files (e.g. timm / Hugging Face exports) into numpy arrays."""

from __future__ import annotations

import os

import numpy as np

from saliency_jax.checkpoints.errors import CheckpointError

INSTALL_HINT = "pip install 'saliency-jax[formats]' (or pip install safetensors)"


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """{tensor name: numpy array} of a `.safetensors` file, like `load_torch_checkpoint`.

    Raises:
      ImportError: the `safetensors` package is not installed.
      CheckpointError: the file is not a readable safetensors file.
    """
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise ImportError(f"reading .safetensors files needs the safetensors package: {INSTALL_HINT}") from None
    try:
        return dict(load_file(os.fspath(path)))
    except Exception as error:  # safetensors raises its own SafetensorError and OSError subclasses.
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"cannot load {os.fspath(path)!r}: not a readable safetensors file ({reason})") from None
