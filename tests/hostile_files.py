"""Crafted checkpoint files for the reader's security tests, written from scratch by each test.

Pickles are spelled opcode by opcode (the one-byte codes of `pickle`'s
protocol 2), zips with `zipfile`, HDF5 files with `h5py`; nothing binary is
committed. `ATTACKS` maps an attack's name to (writer, the refusal expected now);
a writer takes a folder and returns the file's path.
"""

from __future__ import annotations

import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

PROTO2 = b"\x80\x02"
MARK, TUPLE, TUPLE2, DUP, EMPTY_TUPLE, EMPTY_DICT = b"(", b"t", b"\x86", b"2", b")", b"}"
SETITEM, BUILD, REDUCE, POP, STOP, NEWFALSE, BINPERSID = b"s", b"b", b"R", b"0", b".", b"\x89", b"Q"
NONE = b"N"
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def glob(module: str, name: str) -> bytes:
    """GLOBAL module.name."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def text(value: str) -> bytes:
    """BINUNICODE."""
    data = value.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def int32(value: int) -> bytes:
    """BININT."""
    return b"J" + struct.pack("<i", value)


def int_tuple(values) -> bytes:
    return MARK + b"".join(int32(v) for v in values) + TUPLE


def binput(index: int) -> bytes:
    return b"q" + bytes([index])


def binget(index: int) -> bytes:
    return b"h" + bytes([index])


def shared_tuple(depth: int) -> bytes:
    """A tuple nested `depth` deep whose two items are one shared tuple: 2**depth leaves, 2 bytes a level."""
    return EMPTY_TUPLE + (DUP + TUPLE2) * depth


def storage_id(numel: int, storage: str = "FloatStorage", key: str = "0") -> bytes:
    """The persistent id of a storage, as `torch.save` writes it, loaded with BINPERSID."""
    pid = MARK + text("storage") + glob("torch", storage) + text(key) + text("cpu") + int32(numel) + TUPLE
    return pid + BINPERSID


def tensor(size: bytes, stride: bytes, offset: int = 0, numel: int = 4, after_storage: bytes = b"") -> bytes:
    """``_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``."""
    args = (MARK + storage_id(numel) + after_storage + int32(offset) + size + stride + NEWFALSE
            + glob("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE + TUPLE)
    return glob("torch._utils", "_rebuild_tensor_v2") + args + REDUCE


def state_dict(value: bytes, prefix: bytes = b"") -> bytes:
    """A protocol-2 pickle of ``{"w": value}``."""
    return PROTO2 + prefix + EMPTY_DICT + text("w") + value + SETITEM + STOP


def write_zip(path: Path, data_pkl: bytes, storages: dict[str, bytes] | None = None,
              byteorder: str = "little") -> Path:
    """A torch zip-layout checkpoint."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", byteorder)
        for key, raw in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", raw)
    return path


def _zip_with(path: Path, data_pkl: bytes) -> Path:
    return write_zip(path, data_pkl, {"0": np.zeros(4, np.float32).tobytes()})


def legacy_header() -> bytes:
    """Magic number, protocol version and system info of a legacy `torch.save` file."""
    return (pickle.dumps(LEGACY_MAGIC, protocol=2) + pickle.dumps(1001, protocol=2)
            + pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2))


def _deflated_zeros(archive: zipfile.ZipFile, name: str, nbytes: int) -> None:
    """A deflated record of `nbytes` zero bytes, streamed (a few hundred KiB on disk per 256 MiB)."""
    chunk, info = bytes(16 * 2**20), zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    with archive.open(info, "w", force_zip64=True) as record:
        for start in range(0, nbytes, len(chunk)):
            record.write(chunk[: nbytes - start])


# --- torch pickles -------------------------------------------------------------------


def build_on_tensor(folder: Path) -> Path:
    """BUILD rewrites the reader's tensor after it was made: 10**7 elements, stride -1 (reads before the buffer)."""
    state = MARK + binget(1) + int32(0) + int_tuple([10**7]) + int_tuple([-1]) + NEWFALSE + NEWFALSE + TUPLE
    return _zip_with(folder / "build.pt", state_dict(tensor(int_tuple([4]), int_tuple([1]), after_storage=binput(1))
                                                     + state + BUILD))


def build_on_allow_list(folder: Path) -> Path:
    """BUILD rewrites the allow-list entries `_rebuild_tensor_v2` and `FloatStorage` for every later load."""
    poison = (glob("torch._utils", "_rebuild_tensor_v2") + MARK + NONE + TUPLE + BUILD + POP
              + glob("torch", "FloatStorage") + MARK + text("FloatStorage") + int32(0) + TUPLE + BUILD + POP)
    return _zip_with(folder / "poison.pt", state_dict(tensor(int_tuple([4]), int_tuple([1])), prefix=poison))


def nested_key(folder: Path) -> Path:
    """A dict key of 60 levels of shared tuples: hashing it visits 2**60 leaves."""
    return _zip_with(folder / "hash.pt", PROTO2 + EMPTY_DICT + shared_tuple(60) + int32(1) + SETITEM + STOP)


def nested_size(folder: Path) -> Path:
    """A tensor size of 34 levels of shared tuples: its repr in an error message has 2**34 leaves."""
    return _zip_with(folder / "repr.pt", state_dict(tensor(shared_tuple(34), int_tuple([1]))))


def nested_persistent_id(folder: Path) -> Path:
    """A persistent id of 34 levels of shared tuples (str() of it in a message)."""
    return _zip_with(folder / "pid.pt", PROTO2 + shared_tuple(34) + BINPERSID + STOP)


def nested_legacy_version(folder: Path) -> Path:
    """A legacy file whose protocol version is 34 levels of shared tuples (repr'd in a message)."""
    path = folder / "version.pth"
    path.write_bytes(pickle.dumps(LEGACY_MAGIC, protocol=2) + PROTO2 + shared_tuple(34) + STOP)
    return path


def stride_zero(folder: Path) -> Path:
    """One 4-byte element expanded by stride 0 to 1.4e9 elements (5.6 GB)."""
    return _zip_with(folder / "expand.pt", state_dict(tensor(int_tuple([1_400_000_000]), int_tuple([0]), numel=1)))


def zip_bomb(folder: Path, nbytes: int = 256 * 2**20) -> Path:
    """A storage record that inflates to `nbytes` zeros from about 1/1000 of that."""
    path = folder / "bomb.pt"
    numel = nbytes // 4
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", state_dict(tensor(int_tuple([numel]), int_tuple([1]), numel=numel)))
        _deflated_zeros(archive, "archive/data/0", nbytes)
    return path


def memo_index(folder: Path) -> Path:
    """A memo entry stored at index 2**27 (pickle.Unpickler grows its memo array to that size)."""
    return _zip_with(folder / "memo.pt", state_dict(text("x") + b"r" + struct.pack("<I", 2**27)))


# --- HDF5 / Keras ------------------------------------------------------------------------


def _legacy_h5(path: Path, make_kernel) -> Path:
    """A legacy-layout Keras .h5 with one layer 'a' whose one weight 'a/kernel:0' `make_kernel(file)` creates."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"a"]
        group = f.create_group("a")
        group.attrs["weight_names"] = [b"a/kernel:0"]
        make_kernel(f)
    return path


def h5_soft_link_loop(folder: Path) -> Path:
    import h5py

    def kernel(f):
        del f["a"]
        f["a"] = h5py.SoftLink("/a")

    return _legacy_h5(folder / "soft.h5", kernel)


def h5_hard_link_loop(folder: Path) -> Path:
    """Keras 3 layout whose layers/x/layers is a hard link back to /layers."""
    import h5py

    path = folder / "hard.weights.h5"
    with h5py.File(path, "w") as f:
        f.create_group("layers/x")
        f["layers/x/layers"] = f["layers"]
    return path


def h5_fill_value(folder: Path) -> Path:
    """A 4 GiB dataset with no storage at all: reading it returns its fill value."""
    return _legacy_h5(folder / "fill.h5", lambda f: f.create_dataset("a/a/kernel:0", shape=(2**30,), dtype="f4"))


def h5_gzip_bomb(folder: Path) -> Path:
    """A 4 GiB gzip dataset of 64 MiB chunks, each the same precompressed zeros (about 4 MiB on disk)."""
    chunk = 2**24

    def kernel(f):
        dataset = f.create_dataset("a/a/kernel:0", shape=(2**30,), dtype="f4", chunks=(chunk,), compression="gzip")
        packed = zlib.compress(bytes(4 * chunk), 9)
        for i in range(2**30 // chunk):
            dataset.id.write_direct_chunk((i * chunk,), packed)

    return _legacy_h5(folder / "gzip.h5", kernel)


def _secret(folder: Path) -> Path:
    """A private local file that a weights file must not be able to read."""
    (folder / "secret").mkdir(exist_ok=True)
    path = folder / "secret" / "passwd"
    path.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 8)
    return path


def h5_external_link(folder: Path) -> Path:
    """The kernel is an external link to '../secret/other.h5' (another file next to the weights)."""
    import h5py

    with h5py.File(_secret(folder).parent / "other.h5", "w") as other:
        other["data"] = np.arange(6, dtype="f4")
    (folder / "sub").mkdir(exist_ok=True)
    return _legacy_h5(folder / "sub" / "extlink.h5",
                      lambda f: f["a"].__setitem__("a/kernel:0", h5py.ExternalLink("../secret/other.h5", "/data")))


def h5_virtual(folder: Path) -> Path:
    """The kernel is a virtual dataset mapping another local file's dataset."""
    import h5py

    source = _secret(folder).parent / "source.h5"
    with h5py.File(source, "w") as other:
        other["data"] = np.arange(6, dtype="f4")

    def kernel(f):
        layout = h5py.VirtualLayout(shape=(6,), dtype="f4")
        layout[:] = h5py.VirtualSource(str(source), "data", shape=(6,))
        f["a"].create_virtual_dataset("a/kernel:0", layout)

    return _legacy_h5(folder / "virtual.h5", kernel)


def h5_external_storage(folder: Path) -> Path:
    """The kernel's raw bytes are stored in a local file outside the weights ('passwd')."""
    secret = _secret(folder)
    size = secret.stat().st_size
    return _legacy_h5(folder / "external.h5", lambda f: f.create_dataset(
        "a/a/kernel:0", shape=(size,), dtype="u1", external=[(str(secret), 0, size)]))


def keras_zip_bomb(folder: Path) -> Path:
    """A .keras zip whose model.weights.h5 inflates to 256 MiB of zeros."""
    path = folder / "bomb.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", "{}")
        _deflated_zeros(archive, "model.weights.h5", 256 * 2**20)
    return path


# --- safetensors --------------------------------------------------------------------------


def safetensors_huge_header(folder: Path) -> Path:
    path = folder / "header.safetensors"
    path.write_bytes(struct.pack("<Q", 2**40) + b'{"w": {}}')
    return path


def safetensors_huge_shape(folder: Path) -> Path:
    header = b'{"w":{"dtype":"F32","shape":[100000,100000],"data_offsets":[0,4]}}'
    path = folder / "shape.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))
    return path


# name -> (writer, regex the one-line refusal must match now)
ATTACKS = {
    "build_on_tensor": (build_on_tensor, r"sets pickle state on a Tensor"),
    "build_on_allow_list": (build_on_allow_list, r"sets pickle state on a Function"),
    "nested_dict_key": (nested_key, r"a dict key or set item is a tuple of 2 items"),
    "nested_tensor_size": (nested_size, r"tensor size is a tuple of 2 items, not a tuple of ints"),
    "nested_persistent_id": (nested_persistent_id, r"unexpected persistent id a tuple of 2 items"),
    "nested_legacy_version": (nested_legacy_version, r"legacy protocol version a tuple of 2 items"),
    "stride_zero_expand": (stride_zero, r"tensor of size \(1400000000,\) needs 5\.2 GiB, over the budget"),
    "zip_bomb": (zip_bomb, r"zip record 'archive/data/0' declares 256\.0 MiB from .* KiB stored"),
    "memo_index_2**27": (memo_index, r"entry 'w' is a str, not a tensor"),
    "h5_soft_link_loop": (h5_soft_link_loop, r"'a' is an HDF5 SoftLink: soft and external links are refused"),
    "h5_hard_link_loop": (h5_hard_link_loop, r"group '/layers/x\S*' is reached twice"),
    "h5_fill_value": (h5_fill_value, r"declares 4\.0 GiB from 0 B stored"),
    "h5_gzip_bomb": (h5_gzip_bomb, r"declares 4\.0 GiB from .* stored"),
    "h5_external_link": (h5_external_link, r"'a/kernel:0' is an HDF5 ExternalLink: soft and external links"),
    "h5_virtual_dataset": (h5_virtual, r"reads data from other files"),
    "h5_external_storage": (h5_external_storage, r"reads data from other files"),
    "keras_zip_bomb": (keras_zip_bomb, r"zip record 'model\.weights\.h5' declares 256\.0 MiB"),
    "safetensors_huge_header": (safetensors_huge_header, r"unrecognised checkpoint format"),
    "safetensors_huge_shape": (safetensors_huge_shape, r"not a readable safetensors file"),
}
