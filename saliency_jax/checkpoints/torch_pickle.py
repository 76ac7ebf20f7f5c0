"""Read PyTorch checkpoint files into numpy arrays without importing torch.

Both on-disk layouts written by ``torch.save`` are supported:

* the zip layout (the default since torch 1.6): ``<archive>/data.pkl`` plus one
  ``<archive>/data/<key>`` file of raw bytes per storage and an optional
  ``<archive>/byteorder`` record;
* the legacy layout (``_use_new_zipfile_serialization=False``): a run of
  pickles (magic number, protocol version, system info, the object itself, the
  list of storage keys) followed by, for each key, a little-endian int64
  element count and the storage's raw little-endian bytes.

Pickles are read by the restricted machine of `checkpoints.unpickler` with the
globals of `checkpoints.torch_tensors`: nothing a file names outside them is
reached, let alone run. Every size the file declares is checked against a
`checkpoints.budget.Budget` before it is allocated: zip records before they are
inflated, tensors (only those of the returned state dict) before they are
copied out of their storages.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from typing import Any, BinaryIO, Callable

import numpy as np

from saliency_jax.checkpoints.budget import DEFAULT_BUDGET, Budget, Meter, read_zip_record, size_text
from saliency_jax.checkpoints.errors import CheckpointError, UnsafeCheckpointError, describe, one_line
from saliency_jax.checkpoints.torch_tensors import (
    TORCH_GLOBALS,
    Storage,
    StorageType,
    Tensor,
    storage_array,
    to_numpy,
)
from saliency_jax.checkpoints.unpickler import Unpickler

__all__ = ["CheckpointError", "UnsafeCheckpointError", "load_torch_checkpoint"]

_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_UNWRAP_KEYS = ("state_dict", "model")
_MAX_KEY_CHARS = 256
# What reading a damaged or foreign file can still raise from zipfile, zlib or the OS.
_CORRUPT_FILE_ERRORS = (
    zipfile.BadZipFile, zlib.error, EOFError, ValueError, TypeError, KeyError, IndexError,
    AttributeError, OverflowError, RecursionError, MemoryError, NotImplementedError, struct.error,
)


def _storage_key(key: Any) -> str:
    """A storage key as a short printable string."""
    if type(key) is int and 0 <= key < 2**63:
        return str(key)
    if isinstance(key, str) and len(key) <= _MAX_KEY_CHARS and key.isprintable():
        return key
    raise CheckpointError(f"storage key {describe(key)} is not a short name")


def _persistent(load_storage: Callable[..., Storage]) -> Callable[[Any], Storage]:
    """Checks a persistent id ``('storage', type, key, location, numel[, view])`` for `load_storage`."""

    def load(pid: Any) -> Storage:
        if not (isinstance(pid, tuple) and 5 <= len(pid) <= 6 and pid[0] in ("storage", b"storage")
                and isinstance(pid[1], StorageType)):
            raise CheckpointError(f"unexpected persistent id {describe(pid)}")
        return load_storage(pid[1], _storage_key(pid[2]), *pid[4:])

    return load


def _unpickle(file: BinaryIO, budget: Budget, load_storage: Callable[..., Storage] | None = None) -> Any:
    """Reads one pickle from `file` with the restricted machine."""
    persistent = None if load_storage is None else _persistent(load_storage)
    return Unpickler(TORCH_GLOBALS, persistent, budget).load(file)


# --- the zip layout ------------------------------------------------------------


def _zip_prefix(archive: zipfile.ZipFile) -> str:
    """The ``<archive>/`` folder that holds the one ``data.pkl``."""
    pickles = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise CheckpointError(f"zip archive has {len(pickles)} data.pkl records, expected 1")
    return pickles[0][: -len("data.pkl")]


def _load_zip(path: str, budget: Budget) -> tuple[Any, int]:
    """The object saved in a zip-layout checkpoint, and the bytes of the storages it uses."""
    with zipfile.ZipFile(path) as archive:
        prefix, names = _zip_prefix(archive), set(archive.namelist())
        inflated = Meter(budget.max_inflated_bytes, "all records of one file")
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = read_zip_record(archive, prefix + "byteorder", budget, inflated, 16).decode("ascii", "replace")
            if byteorder not in ("little", "big"):
                raise CheckpointError(f"unknown byteorder record {describe(byteorder)}")
        storages: dict[str, Storage] = {}

        def load_storage(storage_type: StorageType, key: str, *_: Any) -> Storage:
            """Reads (once) the storage record `key` as a flat array."""
            if key not in storages:
                record = f"{prefix}data/{key}"
                if record not in names:
                    raise CheckpointError(f"storage record {describe(record)} is missing")
                raw = read_zip_record(archive, record, budget, inflated)
                storages[key] = Storage(storage_type.dtype, storage_array(raw, storage_type.dtype, byteorder))
            return storages[key]

        data = read_zip_record(archive, prefix + "data.pkl", budget, inflated, budget.max_pickle_bytes)
        obj = _unpickle(io.BytesIO(data), budget, load_storage)
    return obj, sum(s.data.nbytes for s in storages.values())


# --- the legacy layout -----------------------------------------------------------


class _Clamped:
    """A file whose ``read(n)`` never asks the OS for more than the bytes left (genops trusts lengths)."""

    def __init__(self, file: BinaryIO):
        self.file, self.size = file, os.fstat(file.fileno()).st_size

    def read(self, n: int = -1) -> bytes:
        left = self.size - self.file.tell()
        return self.file.read(left if n is None or n < 0 else min(n, left))

    def readline(self) -> bytes:
        return self.file.readline()

    def tell(self) -> int:
        return self.file.tell()


def _read_exact(file: BinaryIO, size: int, what: str) -> bytes:
    """Reads exactly `size` bytes or reports a truncated file."""
    left = os.fstat(file.fileno()).st_size - file.tell()
    if size > left:
        raise CheckpointError(f"file is truncated: {what} needs {size} bytes, {left} are left")
    return file.read(size)


def _view(view: Any) -> tuple[str, int, int]:
    """A legacy storage view ``(key, offset, size)``, checked."""
    if not (isinstance(view, tuple) and len(view) == 3
            and all(type(v) is int and 0 <= v < 2**62 for v in view[1:])):
        raise CheckpointError(f"storage view {describe(view)} is not (key, offset, size)")
    return _storage_key(view[0]), view[1], view[2]


def _read_storages(file: BinaryIO, keys: Any, storages: dict[str, Storage]) -> int:
    """Fills the legacy storages named by `keys` from the bytes after the pickles; their total bytes."""
    if not isinstance(keys, list):
        raise CheckpointError("corrupt storage key list")
    total = 0
    for key in map(_storage_key, keys):
        if key not in storages:
            raise CheckpointError(f"storage key {describe(key)} is not used by any tensor")
        (numel,) = struct.unpack("<q", _read_exact(file, 8, f"storage {describe(key)} header"))
        dtype = storages[key].dtype
        if numel < 0:
            raise CheckpointError(f"storage {describe(key)} has negative size {numel}")
        raw = _read_exact(file, numel * dtype.itemsize, f"storage {describe(key)}")
        storages[key].data = storage_array(raw, dtype, "little")
        total += len(raw)
    return total


def _load_legacy(path: str, budget: Budget) -> tuple[Any, int]:
    """The object saved in a legacy (pre-zip) checkpoint, and the bytes of its storages."""
    storages: dict[str, Storage] = {}
    views: dict[str, tuple[str, int, int]] = {}

    def load_storage(storage_type: StorageType, key: str, numel: Any = None, view: Any = None) -> Storage:
        """An empty storage for `key` (or a view of it), filled in below."""
        del numel
        root = storages.setdefault(key, Storage(storage_type.dtype))
        if view is None:
            return root
        view_key, offset, size = _view(view)
        views.setdefault(view_key, (key, offset, size))
        return storages.setdefault(view_key, Storage(storage_type.dtype))

    with open(path, "rb") as raw:
        file = _Clamped(raw)
        if (magic := _unpickle(file, budget)) != _LEGACY_MAGIC or type(magic) is not int:
            raise CheckpointError("not a PyTorch checkpoint (bad magic number)")
        if (version := _unpickle(file, budget)) != _LEGACY_PROTOCOL or type(version) is not int:
            raise CheckpointError(f"unsupported legacy protocol version {describe(version)}")
        _unpickle(file, budget)  # sys_info; legacy storage bytes are always little-endian.
        obj = _unpickle(file, budget, load_storage)
        stored = _read_storages(raw, _unpickle(file, budget), storages)
    for view_key, (root_key, offset, size) in views.items():
        root = storages[root_key].data
        storages[view_key].data = None if root is None else root[offset : offset + size]
    return obj, stored


# --- public entry point -----------------------------------------------------


def _is_state_dict(obj: Any) -> bool:
    """Whether `obj` is a non-empty mapping of names to tensors."""
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def _as_state_dict(obj: Any, meter: Meter) -> dict[str, np.ndarray]:
    """Unwraps ``{"state_dict": ...}`` / ``{"model": ...}``, checks it, and copies its tensors out."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"holds {describe(obj)}, not a dict of tensors")
    if not _is_state_dict(obj):
        obj = next((obj[k] for k in _UNWRAP_KEYS if _is_state_dict(obj.get(k))), obj)
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise CheckpointError(
                f"entry {describe(key)} is a {type(value).__name__}, not a tensor "
                f"(expected a state dict, or one under {' or '.join(map(repr, _UNWRAP_KEYS))})"
            )
    return {key: to_numpy(tensor, meter) for key, tensor in obj.items()}


def load_torch_checkpoint(path: str | os.PathLike[str], *, budget: Budget = DEFAULT_BUDGET) -> dict[str, np.ndarray]:
    """Loads a PyTorch state dict as numpy arrays, without importing torch.

    Args:
      path: a file written by ``torch.save`` in the zip or the legacy layout.
        A top-level ``"state_dict"`` or ``"model"`` entry holding the tensors is
        unwrapped.
      budget: the reading limits (`checkpoints.budget`); the default suits real checkpoints.

    Returns:
      The state dict: parameter name -> numpy array (bfloat16 via ml_dtypes).

    Raises:
      FileNotFoundError: `path` does not exist.
      UnsafeCheckpointError: the pickle asks for anything but tensors and plain
        containers; nothing from the file is run.
      CheckpointError: the file is empty, truncated, corrupt, not a checkpoint,
        or declares more than the budget allows. Messages are one short line.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path!r}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"cannot load {path!r}: the file is empty")
    with open(path, "rb") as file:
        is_zip = file.read(4) == _ZIP_MAGIC
    try:
        obj, stored = (_load_zip if is_zip else _load_legacy)(path, budget)
        meter = Meter(budget.tensor_limit(stored), f"arrays from {size_text(stored)} of storages")
        return _as_state_dict(obj, meter)
    except UnsafeCheckpointError as error:
        raise UnsafeCheckpointError(f"refusing to load {path!r}: {error}") from None
    except CheckpointError as error:
        raise CheckpointError(f"cannot load {path!r}: {error}") from None
    except zipfile.BadZipFile as error:
        raise CheckpointError(f"cannot load {path!r}: corrupt or truncated zip archive ({one_line(error)})") from None
    except _CORRUPT_FILE_ERRORS as error:
        raise CheckpointError(f"cannot load {path!r}: not a readable PyTorch checkpoint ({one_line(error)})") from None
