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

Only what the file itself holds is read (no soft or external links, virtual
datasets or external storage), each dataset's declared size checked against a
`checkpoints.budget.Budget` first. Weights come in each layer's own order (kernel, bias; BatchNorm gamma, beta,
moving mean, moving variance).
"""

from __future__ import annotations

import io
import math
import os
import zipfile

import numpy as np

from saliency_jax.checkpoints.budget import DEFAULT_BUDGET, Budget, Meter, check_inflation, read_zip_record
from saliency_jax.checkpoints.errors import CheckpointError, describe, one_line

_MAX_GROUPS = 100_000  # layer groups walked in a Keras 3 file
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


def _child(group, name: str, h5py):
    """`group[name]`, following hard links only, one path component at a time."""
    node = group
    for part in name.split("/"):
        if part in ("", ".", "..") or not isinstance(node, h5py.Group):
            raise CheckpointError(f"path {describe(name)} is not a plain HDF5 path")
        link = node.get(part, getlink=True)
        if link is None:
            raise CheckpointError(f"{describe(name)} is missing")
        if not isinstance(link, h5py.HardLink):
            raise CheckpointError(f"{describe(name)} is an HDF5 {type(link).__name__}: soft and external links are refused")
        node = node[part]
    return node


def _read_dataset(dataset, h5py, budget: Budget, meter: Meter) -> np.ndarray:
    """A dataset's values, after refusing outside data and checking its declared size against the budget."""
    what = f"dataset {describe(dataset.name)}"
    if not isinstance(dataset, h5py.Dataset):
        raise CheckpointError(f"{what} is not a dataset")
    if dataset.is_virtual or dataset.external:
        raise CheckpointError(f"{what} reads data from other files (virtual or external storage is refused)")
    if dataset.dtype.kind not in "biuf":
        raise CheckpointError(f"{what} holds {dataset.dtype.kind!r}-kind values, not numbers")
    declared = math.prod(dataset.shape or ()) * dataset.dtype.itemsize
    if dataset.chunks:  # a chunk is inflated whole, even past the dataset's end
        declared = max(declared, math.prod(dataset.chunks) * dataset.dtype.itemsize)
    check_inflation(budget, declared, dataset.id.get_storage_size(), what)
    meter.charge(declared, what)
    return np.asarray(dataset[()])


def _read_legacy(root, read, h5py) -> dict[str, list[np.ndarray]]:
    layers = {}
    for layer in _attr_list(root, "layer_names"):
        group = _child(root, layer, h5py)
        weights = [read(_child(group, w, h5py)) for w in _attr_list(group, "weight_names")]
        if weights:
            layers[layer] = weights
    return layers


def _has(group, name: str) -> bool:
    """Whether `group` has a link `name` (without following it, unlike `name in group`)."""
    return group.get(name, getlink=True) is not None


def _visit_once(group, seen: set, h5py) -> None:
    """Refuses a group reached twice (a hard-link loop) or more groups than `_MAX_GROUPS`."""
    address = h5py.h5o.get_info(group.id).addr
    if address in seen:
        raise CheckpointError(f"group {describe(group.name)} is reached twice (a hard-link loop?)")
    if len(seen) >= _MAX_GROUPS:
        raise CheckpointError(f"the file has over {_MAX_GROUPS} layer groups")
    seen.add(address)


def _read_keras3(root, read, h5py) -> dict[str, list[np.ndarray]]:
    """Walks `layers/<key>/vars` groups depth first (nested models too), each group once, without recursion."""
    layers, seen, todo = {}, set(), [(None, root)]
    while todo:
        key, group = todo.pop()
        _visit_once(group, seen, h5py)
        vars_ = _child(group, "vars", h5py) if key is not None and _has(group, "vars") else None
        if vars_ is not None and len(vars_):
            name = _text(vars_.attrs.get("name", key))
            layers[name] = [read(_child(vars_, i, h5py)) for i in sorted(vars_, key=int)]
        if _has(group, "layers"):
            children = _child(group, "layers", h5py)
            todo.extend((k, _child(children, k, h5py)) for k in reversed(list(children)))
    return layers


def _open(path: str, h5py, budget: Budget):
    """An open h5py.File for a `.h5` file or the weights inside a `.keras` zip (checked before inflating)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if "model.weights.h5" not in archive.namelist():
                raise CheckpointError(f"{path!r} is a zip archive without model.weights.h5 (not a .keras file)")
            meter = Meter(budget.max_inflated_bytes, "all records of one file")
            data = read_zip_record(archive, "model.weights.h5", budget, meter)
            return h5py.File(io.BytesIO(data), "r")
    return h5py.File(path, "r")


def _read_layers(f, h5py, budget: Budget) -> dict[str, list[np.ndarray]]:
    meter = Meter(budget.max_inflated_bytes, "all datasets of one file")

    def read(dataset) -> np.ndarray:
        return _read_dataset(dataset, h5py, budget, meter)

    root = _child(f, "model_weights", h5py) if "layer_names" not in f.attrs and _has(f, "model_weights") else f
    if _attr_list(root, "layer_names"):
        return _read_legacy(root, read, h5py)
    return _read_keras3(root, read, h5py)


def load_keras_weights(path: str | os.PathLike, *, budget: Budget = DEFAULT_BUDGET) -> dict[str, list[np.ndarray]]:
    """{layer name: [weight arrays in the layer's order]} of a Keras `.h5`/`.weights.h5`/`.keras` file.

    Layers without weights are left out. Only what the file itself holds is read:
    soft and external links, virtual datasets and external storage are refused,
    and every dataset's declared size is checked against `budget` before it is read.

    Raises:
      ImportError: h5py is not installed.
      CheckpointError: the file is not a Keras weight file, or declares more than the budget allows.
    """
    path = os.fspath(path)
    h5py = _h5py()
    try:
        with _open(path, h5py, budget) as f:
            layers = _read_layers(f, h5py, budget)
    except CheckpointError as error:
        raise CheckpointError(f"cannot load {path!r}: {error}") from None
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, MemoryError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"cannot load {path!r}: not a readable Keras weight file ({one_line(error)})") from None
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
