"""Read PyTorch checkpoint files into numpy arrays without importing torch.

Both on-disk layouts written by ``torch.save`` are supported:

* the zip layout (the default since torch 1.6): ``<archive>/data.pkl`` plus one
  ``<archive>/data/<key>`` file of raw bytes per storage and an optional
  ``<archive>/byteorder`` record;
* the legacy layout (``_use_new_zipfile_serialization=False``): a run of
  pickles (magic number, protocol version, system info, the object itself, the
  list of storage keys) followed by, for each key, a little-endian int64
  element count and the storage's raw little-endian bytes.

Pickles are read with a restricted unpickler: it admits only the few globals
needed to rebuild tensors and plain containers, and refuses anything else
(``os.system``, ``builtins.eval`` ...) before it can run. Tensors are rebuilt
with numpy from their storage, offset, sizes and strides.
"""

from __future__ import annotations

import _compat_pickle
import collections
import dataclasses
import io
import os
import pickle
import struct
import zipfile
import zlib
from typing import Any, BinaryIO, Callable

import ml_dtypes
import numpy as np

__all__ = ["CheckpointError", "UnsafeCheckpointError", "load_torch_checkpoint"]

_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_UNWRAP_KEYS = ("state_dict", "model")
# What reading a damaged or foreign file can raise from pickle, zipfile or zlib.
_CORRUPT_FILE_ERRORS = (
    pickle.UnpicklingError, zipfile.BadZipFile, zlib.error, EOFError, ValueError,
    TypeError, KeyError, IndexError, AttributeError, OverflowError, RecursionError,
    MemoryError, NotImplementedError, struct.error,
)


class CheckpointError(ValueError):
    """A file is not a readable PyTorch checkpoint (corrupt, truncated, foreign)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint's pickle asks for a global that is not a tensor or container."""


# --- storages ---------------------------------------------------------------

_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "ComplexDoubleStorage": np.dtype(np.complex128),
    "UntypedStorage": np.dtype(np.uint8),
}


@dataclasses.dataclass(frozen=True, slots=True)
class _StorageType:
    """Stand-in for a ``torch.<Name>Storage`` class: just its numpy dtype."""

    name: str
    dtype: np.dtype


@dataclasses.dataclass(slots=True)
class _Storage:
    """A storage: a flat numpy array of its elements, filled in once read."""

    dtype: np.dtype
    data: np.ndarray | None = None


@dataclasses.dataclass(frozen=True, eq=False, slots=True)
class _Tensor:
    """A tensor awaiting its storage's bytes (legacy files store them last)."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    conj: bool = False
    neg: bool = False


def _storage_array(raw: bytes, dtype: np.dtype, byteorder: str) -> np.ndarray:
    """Views raw storage bytes as a flat native-endian array of ``dtype``."""
    if len(raw) % dtype.itemsize:
        raise CheckpointError(
            f"storage of {len(raw)} bytes is not a whole number of {dtype} elements"
        )
    array = np.frombuffer(raw, dtype=dtype.newbyteorder(byteorder))
    return array.astype(dtype, copy=False)


# --- tensor rebuilding ------------------------------------------------------


def _as_int_tuple(values: Any, what: str) -> tuple[int, ...]:
    """Checks that ``values`` is a sequence of non-negative ints."""
    if not isinstance(values, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values
    ):
        raise CheckpointError(f"tensor {what} {values!r} is not a tuple of ints >= 0")
    return tuple(values)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> _Tensor:
    """Stand-in for ``torch._utils._rebuild_tensor``: records the tensor's layout."""
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"tensor storage is a {type(storage).__name__}, not a storage")
    (offset,) = _as_int_tuple([storage_offset], "storage offset")
    shape = _as_int_tuple(size, "size")
    strides = _as_int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise CheckpointError(f"tensor size {shape} and stride {strides} differ in length")
    return _Tensor(storage, offset, shape, strides)


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _Tensor:
    """Stand-in for ``torch._utils._rebuild_tensor_v2`` (grad flags ignored)."""
    del requires_grad, backward_hooks
    tensor = _rebuild_tensor(storage, storage_offset, size, stride)
    metadata = metadata if isinstance(metadata, dict) else {}
    return dataclasses.replace(
        tensor, conj=bool(metadata.get("conj")), neg=bool(metadata.get("neg"))
    )


def _rebuild_parameter(
    data: Any, requires_grad: Any, backward_hooks: Any, state: Any = None
) -> Any:
    """Stand-in for ``torch._utils._rebuild_parameter[_with_state]``: the data."""
    del requires_grad, backward_hooks, state
    return data


def _to_numpy(tensor: _Tensor) -> np.ndarray:
    """Copies a tensor out of its storage with numpy strides."""
    flat = tensor.storage.data
    if not isinstance(flat, np.ndarray) or flat.ndim != 1:
        raise CheckpointError("a tensor's storage is missing from the file")
    shape, strides, offset = tensor.shape, tensor.strides, tensor.offset
    if 0 in shape:
        return np.empty(shape, dtype=flat.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(shape, strides))
    if last >= flat.size:
        raise CheckpointError(
            f"tensor of size {shape}, stride {strides}, offset {offset} reads past "
            f"its storage of {flat.size} elements"
        )
    itemsize = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=shape, strides=[s * itemsize for s in strides], writeable=False
    )
    array = np.array(view, copy=True)
    if tensor.conj:
        array = np.conj(array)
    if tensor.neg:
        array = np.negative(array)
    return array


def _materialize(obj: Any, done: dict[int, Any] | None = None) -> Any:
    """Replaces every ``_Tensor`` inside plain containers with a numpy array.

    Objects the pickle shares are converted once (``done`` maps ``id`` to
    result), so a small pickle cannot make this walk exponentially long.
    """
    done = {} if done is None else done
    if id(obj) in done:
        return done[id(obj)]
    if isinstance(obj, _Tensor):
        result = _to_numpy(obj)
    elif isinstance(obj, dict):
        result = type(obj)((k, _materialize(v, done)) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        result = type(obj)(_materialize(v, done) for v in obj)
    else:
        return obj
    done[id(obj)] = result
    return result


def _encode_text(text: Any, encoding: Any = "utf-8") -> bytes:
    """``_codecs.encode``, as protocol-2 pickles use it for ``bytes`` values."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise CheckpointError(f"refusing _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode(encoding)


# --- restricted unpickling --------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Function:
    """An allowed function, frozen so a pickle's BUILD cannot patch it."""

    function: Callable[..., Any]

    def __call__(self, *args: Any) -> Any:
        return self.function(*args)


# Everything a pickle may name. Classes are immutable builtin types; functions
# are wrapped in `_Function`; storage types are frozen `_StorageType`s.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor"): _Function(_rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v2"): _Function(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_parameter"): _Function(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Function(_rebuild_parameter),
    ("torch", "Size"): tuple,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("_codecs", "encode"): _Function(_encode_text),
    **{("torch", name): _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals and torch storages."""

    def __init__(self, file: BinaryIO, path: str, load_storage: Callable[..., Any] | None):
        super().__init__(file, encoding="utf-8")
        self._path = path
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles spell some names the Python 2 way ('__builtin__').
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise UnsafeCheckpointError(
                f"refusing to load {self._path!r}: the checkpoint asks for "
                f"'{module}.{name}', which is not a tensor or a plain container"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if (
            self._load_storage is None
            or not isinstance(pid, tuple)
            or len(pid) < 5
            or pid[0] not in ("storage", b"storage")
            or not isinstance(pid[1], _StorageType)
        ):
            raise CheckpointError(f"unexpected persistent id {str(pid)[:80]!r}")
        return self._load_storage(*pid[1:])


def _unpickle(file: BinaryIO, path: str, load_storage: Callable[..., Any] | None = None) -> Any:
    """Reads one pickle from ``file`` with the restricted unpickler."""
    return _RestrictedUnpickler(file, path, load_storage).load()


# --- the two file layouts ---------------------------------------------------


def _load_zip(path: str) -> Any:
    """Loads the object saved in a zip-layout checkpoint."""
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        pickles = sorted(n for n in names if n == "data.pkl" or n.endswith("/data.pkl"))
        if len(pickles) != 1:
            raise CheckpointError(f"zip archive has {len(pickles)} data.pkl records, expected 1")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = archive.read(prefix + "byteorder").decode("ascii", "replace")
            if byteorder not in ("little", "big"):
                raise CheckpointError(f"unknown byteorder record {byteorder!r}")
        storages: dict[str, _Storage] = {}

        def load_storage(storage_type: _StorageType, key: Any, *_: Any) -> _Storage:
            """Reads (once) the storage record ``key`` as a flat array."""
            key = str(key)
            if key not in storages:
                record = f"{prefix}data/{key}"
                if record not in names:
                    raise CheckpointError(f"storage record {record!r} is missing")
                raw = archive.read(record)
                storages[key] = _Storage(
                    storage_type.dtype, _storage_array(raw, storage_type.dtype, byteorder)
                )
            return storages[key]

        obj = _unpickle(io.BytesIO(archive.read(pickles[0])), path, load_storage)
    return _materialize(obj)


def _read_exact(file: BinaryIO, size: int, what: str) -> bytes:
    """Reads exactly ``size`` bytes or reports a truncated file."""
    left = os.fstat(file.fileno()).st_size - file.tell()
    if size > left:
        raise CheckpointError(f"file is truncated: {what} needs {size} bytes, {left} are left")
    return file.read(size)


def _load_legacy(path: str) -> Any:
    """Loads the object saved in a legacy (pre-zip) checkpoint."""
    storages: dict[str, _Storage] = {}
    views: dict[str, tuple[str, int, int]] = {}

    def load_storage(
        storage_type: _StorageType, key: Any, location: Any, numel: Any, view: Any = None
    ) -> _Storage:
        """An empty storage for ``key`` (or a view of it), filled in below."""
        key = str(key)
        root = storages.setdefault(key, _Storage(storage_type.dtype))
        if view is None:
            return root
        view_key, offset, size = view
        views.setdefault(str(view_key), (key, int(offset), int(size)))
        return storages.setdefault(str(view_key), _Storage(storage_type.dtype))

    with open(path, "rb") as file:
        if _unpickle(file, path) != _LEGACY_MAGIC:
            raise CheckpointError("not a PyTorch checkpoint (bad magic number)")
        if (version := _unpickle(file, path)) != _LEGACY_PROTOCOL:
            raise CheckpointError(f"unsupported legacy protocol version {version!r}")
        _unpickle(file, path)  # sys_info; legacy storage bytes are always little-endian.
        obj = _unpickle(file, path, load_storage)
        keys = _unpickle(file, path)
        if not isinstance(keys, list):
            raise CheckpointError("corrupt storage key list")
        for key in map(str, keys):
            if key not in storages:
                raise CheckpointError(f"storage key {key!r} is not used by any tensor")
            (numel,) = struct.unpack("<q", _read_exact(file, 8, f"storage {key!r} header"))
            dtype = storages[key].dtype
            if numel < 0:
                raise CheckpointError(f"storage {key!r} has negative size {numel}")
            raw = _read_exact(file, numel * dtype.itemsize, f"storage {key!r}")
            storages[key].data = _storage_array(raw, dtype, "little")
    for view_key, (root_key, offset, size) in views.items():
        root = storages[root_key].data
        storages[view_key].data = None if root is None else root[offset : offset + size]
    return _materialize(obj)


# --- public entry point -----------------------------------------------------


def _is_state_dict(obj: Any) -> bool:
    """Whether ``obj`` is a non-empty mapping of names to arrays."""
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(v, np.ndarray) for v in obj.values())
    )


def _as_state_dict(obj: Any) -> dict[str, np.ndarray]:
    """Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` and checks the result."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"holds a {type(obj).__name__}, not a dict of tensors")
    if not _is_state_dict(obj):
        for key in _UNWRAP_KEYS:
            if _is_state_dict(obj.get(key)):
                obj = obj[key]
                break
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise CheckpointError(
                f"entry {key!r} is a {type(value).__name__}, not a tensor "
                f"(expected a state dict, or one under {' or '.join(map(repr, _UNWRAP_KEYS))})"
            )
    return dict(obj)


def load_torch_checkpoint(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Loads a PyTorch state dict as numpy arrays, without importing torch.

    Args:
      path: a file written by ``torch.save`` in the zip or the legacy layout.
        A top-level ``"state_dict"`` or ``"model"`` entry holding the tensors is
        unwrapped.

    Returns:
      The state dict: parameter name -> numpy array (bfloat16 via ml_dtypes).

    Raises:
      FileNotFoundError: ``path`` does not exist.
      UnsafeCheckpointError: the pickle asks for anything but tensors and plain
        containers; nothing from the file is run.
      CheckpointError: the file is empty, truncated, corrupt or not a checkpoint.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path!r}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"cannot load {path!r}: the file is empty")
    with open(path, "rb") as file:
        is_zip = file.read(4) == _ZIP_MAGIC
    try:
        return _as_state_dict(_load_zip(path) if is_zip else _load_legacy(path))
    except UnsafeCheckpointError:
        raise
    except CheckpointError as error:
        raise CheckpointError(f"cannot load {path!r}: {error}") from None
    except zipfile.BadZipFile as error:
        raise CheckpointError(
            f"cannot load {path!r}: corrupt or truncated zip archive ({error})"
        ) from error
    except _CORRUPT_FILE_ERRORS as error:
        reason = f"{type(error).__name__}: {error}".strip().splitlines()[0]
        raise CheckpointError(
            f"cannot load {path!r}: not a readable PyTorch checkpoint ({reason})"
        ) from error
