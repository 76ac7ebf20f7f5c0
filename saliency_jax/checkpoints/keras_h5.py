"""Read Keras weight files (HDF5) into numpy arrays, without importing Keras or TensorFlow.

Two layouts are read:

* the legacy layout (Keras 2 `save_weights("x.h5")`, and the files that
  `keras.applications` downloads): root attribute `layer_names`, one group per
  layer with attribute `weight_names`, datasets such as
  `block1_conv1/block1_conv1/kernel:0`. A full-model `.h5` keeps the same
  layout under `model_weights/`.
* the Keras 3 layout (`save_weights("x.weights.h5")`, also inside a `.keras`
  zip): `layers/<key>/vars/0, 1, ...`, the layer's name in the `vars` group's
  `name` attribute (older files: the key itself).

Weights come in each layer's own order (kernel, bias; BatchNorm gamma, beta,
moving mean, moving variance).
"""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np

from saliency_jax.checkpoints.errors import CheckpointError

INSTALL_HINT = "pip install 'saliency-jax[formats]' (or pip install h5py)"
# Names of a layer's weights by count, for `flatten_layers` (Conv/Dense; Dense without bias; BatchNorm).
_WEIGHT_NAMES = {
    2: ("kernel", "bias"),
    1: ("kernel",),
    4: ("gamma", "beta", "moving_mean", "moving_variance"),
}


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError(f"reading Keras .h5 weights needs h5py: {INSTALL_HINT}") from None
    return h5py


def _text(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _attr_list(group, name: str) -> list[str]:
    """A string-list attribute, also when Keras split it into `name0`, `name1`, ... chunks."""
    if name in group.attrs:
        return [_text(v) for v in group.attrs[name]]
    out, chunk = [], 0
    while f"{name}{chunk}" in group.attrs:
        out.extend(_text(v) for v in group.attrs[f"{name}{chunk}"])
        chunk += 1
    return out


def _read_legacy(root) -> dict[str, list[np.ndarray]]:
    layers = {}
    for layer in _attr_list(root, "layer_names"):
        group = root[layer]
        weights = [np.asarray(group[w]) for w in _attr_list(group, "weight_names")]
        if weights:
            layers[layer] = weights
    return layers


def _read_keras3(root, layers: dict) -> dict[str, list[np.ndarray]]:
    """Walks `layers/<key>/vars` groups (recursing into nested models)."""
    for key, group in root.get("layers", {}).items():
        vars_ = group.get("vars")
        if vars_ is not None and len(vars_):
            name = _text(vars_.attrs.get("name", key))
            layers[name] = [np.asarray(vars_[i]) for i in sorted(vars_, key=int)]
        _read_keras3(group, layers)
    return layers


def _open(path: str, h5py):
    """An open h5py.File for a `.h5` file or the weights inside a `.keras` zip."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if "model.weights.h5" not in archive.namelist():
                raise CheckpointError(f"{path!r} is a zip archive without model.weights.h5 (not a .keras file)")
            return h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")
    return h5py.File(path, "r")


def load_keras_weights(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """{layer name: [weight arrays in the layer's order]} of a Keras `.h5`/`.weights.h5`/`.keras` file.

    Layers without weights are left out.

    Raises:
      ImportError: h5py is not installed.
      CheckpointError: the file is not a Keras weight file.
    """
    path = os.fspath(path)
    h5py = _h5py()
    try:
        with _open(path, h5py) as f:
            root = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
            layers = _read_legacy(root) if _attr_list(root, "layer_names") else _read_keras3(root, {})
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"cannot load {path!r}: not a readable Keras weight file ({error})") from None
    if not layers:
        raise CheckpointError(f"cannot load {path!r}: no Keras layer weights found in the file")
    return layers


def flatten_layers(layers: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    """{layer: [w0, w1]} -> {"layer/kernel": w0, "layer/bias": w1} (BatchNorm: gamma, beta, moving_mean,
    moving_variance; other counts: "layer/0", "layer/1", ...)."""
    flat = {}
    for layer, weights in layers.items():
        names = _WEIGHT_NAMES.get(len(weights), tuple(map(str, range(len(weights)))))
        flat.update({f"{layer}/{n}": w for n, w in zip(names, weights)})
    return flat
