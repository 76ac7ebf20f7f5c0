"""Stand-ins for the torch objects a checkpoint's pickle names, and copying tensors out of storages.

A pickle may name only the globals in `TORCH_GLOBALS`: the tensor and
parameter rebuild functions, storage types, `torch.Size` and plain
containers. The rebuild functions record a tensor's layout in a frozen
`Tensor`; `to_numpy` validates that layout against the storage it reads (in
Python integers: offset, sizes and strides, zero and negative strides
included) at the moment it copies, and charges the copy to a byte `Meter`
first. None of these classes accepts pickle state.
"""

from __future__ import annotations

import dataclasses
import math
import types
from typing import Any

import ml_dtypes
import numpy as np

from saliency_jax.checkpoints.budget import Meter
from saliency_jax.checkpoints.errors import CheckpointError, describe
from saliency_jax.checkpoints.unpickler import CONTAINER_GLOBALS, Function, as_tuple, refuse_state

_MAX_DIMS = 32
_MAX_EXTENT = 2**62  # largest size, stride or offset accepted (numpy's index type holds it)

STORAGE_DTYPES: dict[str, np.dtype] = {
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
class StorageType:
    """Stand-in for a ``torch.<Name>Storage`` class: its numpy dtype."""

    name: str
    dtype: np.dtype
    __setstate__ = refuse_state


@dataclasses.dataclass(eq=False, slots=True)
class Storage:
    """A storage: its dtype, and the flat array of its elements once the reader has them."""

    dtype: np.dtype
    data: np.ndarray | None = None
    __setstate__ = refuse_state


@dataclasses.dataclass(frozen=True, eq=False, slots=True)
class Tensor:
    """A tensor's layout in its storage, as the pickle declared it (checked when copied)."""

    storage: Storage
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    conj: bool = False
    neg: bool = False
    __setstate__ = refuse_state


def storage_array(raw: bytes, dtype: np.dtype, byteorder: str) -> np.ndarray:
    """Views raw storage bytes as a flat native-endian array of `dtype`."""
    if len(raw) % dtype.itemsize:
        raise CheckpointError(f"storage of {len(raw)} bytes is not a whole number of {dtype} elements")
    return np.frombuffer(raw, dtype=dtype.newbyteorder(byteorder)).astype(dtype, copy=False)


def _ints(values: Any, what: str, low: int) -> tuple[int, ...]:
    """`values` as a tuple of at most `_MAX_DIMS` ints in [low, 2**62)."""
    ok = isinstance(values, (tuple, list)) and len(values) <= _MAX_DIMS and all(
        type(v) is int and low <= v < _MAX_EXTENT for v in values
    )
    if not ok:
        bound = "ints >= 0" if low == 0 else "ints"
        raise CheckpointError(f"tensor {what} is {describe(values)}, not a tuple of {bound} below 2**62")
    return tuple(values)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> Tensor:
    """Stand-in for ``torch._utils._rebuild_tensor``: records the tensor's layout."""
    if not isinstance(storage, Storage):
        raise CheckpointError(f"tensor storage is {describe(storage)}, not a storage")
    (offset,) = _ints([storage_offset], "storage offset", 0)
    shape = _ints(size, "size", 0)
    strides = _ints(stride, "stride", -_MAX_EXTENT)
    if len(shape) != len(strides):
        raise CheckpointError(f"tensor size and stride differ in length ({len(shape)}, {len(strides)})")
    return Tensor(storage, offset, shape, strides)


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any = False, backward_hooks: Any = None, metadata: Any = None) -> Tensor:
    """Stand-in for ``torch._utils._rebuild_tensor_v2`` (grad flags ignored)."""
    del requires_grad, backward_hooks
    tensor = _rebuild_tensor(storage, storage_offset, size, stride)
    metadata = metadata if isinstance(metadata, dict) else {}
    return dataclasses.replace(tensor, conj=metadata.get("conj") is True, neg=metadata.get("neg") is True)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any, state: Any = None) -> Any:
    """Stand-in for ``torch._utils._rebuild_parameter[_with_state]``: the data."""
    del requires_grad, backward_hooks, state
    return data


def _encode_text(text: Any, encoding: Any = "utf-8") -> bytes:
    """``_codecs.encode``, as protocol-2 pickles use it for ``bytes`` values."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise CheckpointError(f"refusing _codecs.encode({describe(text)}, {describe(encoding)})")
    return text.encode(encoding)


def _dims(shape: tuple[int, ...]) -> str:
    return str(shape) if len(shape) <= 6 else f"({', '.join(map(str, shape[:6]))}, ... {len(shape)} dims)"


def _check_layout(tensor: Tensor, numel_stored: int) -> None:
    """Refuses a layout that reads outside its storage (or has negative strides), in Python ints."""
    shape, strides, offset = tensor.shape, tensor.strides, tensor.offset
    if any(s < 0 for s in strides):
        raise CheckpointError(f"tensor stride {_dims(strides)} is negative (torch never writes one)")
    if 0 in shape:
        return
    last = offset + sum((n - 1) * s for n, s in zip(shape, strides))
    if last >= numel_stored:
        raise CheckpointError(
            f"tensor of size {_dims(shape)}, stride {_dims(strides)}, offset {offset} reads past "
            f"its storage of {numel_stored} elements"
        )


def to_numpy(tensor: Tensor, meter: Meter) -> np.ndarray:
    """Copies a tensor out of its storage, after checking its layout and charging its bytes to `meter`."""
    flat = tensor.storage.data
    if not isinstance(flat, np.ndarray) or flat.ndim != 1:
        raise CheckpointError("a tensor's storage is missing from the file")
    _check_layout(tensor, flat.size)
    meter.charge(math.prod(tensor.shape) * flat.dtype.itemsize, f"tensor of size {_dims(tensor.shape)}")
    if 0 in tensor.shape:
        return np.empty(tensor.shape, dtype=flat.dtype)
    itemsize = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[tensor.offset:], shape=tensor.shape, strides=[s * itemsize for s in tensor.strides],
        writeable=False,
    )
    array = np.array(view, copy=True)
    if tensor.conj:
        array = np.conj(array)
    if tensor.neg:
        array = np.negative(array)
    return array


# Everything a torch pickle may name; the values are immutable.
TORCH_GLOBALS = types.MappingProxyType({
    **CONTAINER_GLOBALS,
    ("torch._utils", "_rebuild_tensor"): Function("_rebuild_tensor", _rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v2"): Function("_rebuild_tensor_v2", _rebuild_tensor_v2),
    ("torch._utils", "_rebuild_parameter"): Function("_rebuild_parameter", _rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): Function("_rebuild_parameter_with_state",
                                                                _rebuild_parameter),
    ("torch", "Size"): Function("torch.Size", as_tuple),
    ("_codecs", "encode"): Function("_codecs.encode", _encode_text),
    **{("torch", name): StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()},
})
