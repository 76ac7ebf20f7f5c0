"""Hostile inputs and a contested job folder: each costs one line, never a hang, a traceback or the memory.

Files: a non-UTF-8 name, a FIFO, a symlink to /dev/zero, a 3 GiB sparse file, a
symlink loop, a 20 kB PNG of 13000x13000. Job folder: two writers, a killed
writer's lock, an image changed under its name, damaged shards.
"""

import os
import pathlib
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

import saliency_jax
from saliency_jax import cli
from saliency_jax.data import DecodeError, open_source, read_file
from saliency_jax.data.files import size_text
from saliency_jax.jobs import JobError, JobLock, load_outputs, run_batch_job

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from test_batch_job import _index, tiny_model, write_images  # noqa: E402

# saliency_jax.data.decode filters this warning process-wide at import, but pytest resets filters around
# collection; test_bomb_is_one_line_on_the_real_stderr checks a real process.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
NON_UTF8 = b"caf\xe9.png"
SPARSE = 3 * 2**30


def bounded(fn, seconds: float, fifo=None):
    """fn() in a thread; fails if it is still running after `seconds` (first releasing a reader
    blocked on `fifo` by opening its write end, so a broken implementation fails instead of hanging)."""
    result = {}

    def run():
        try:
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below, in the test's thread
            result["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    t0 = time.perf_counter()
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if fifo is not None:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(30)
        pytest.fail(f"still running after {seconds} s")
    if "error" in result:
        raise result["error"]
    return result["value"], time.perf_counter() - t0


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_hostile(root: pathlib.Path) -> dict:
    """Two good PNGs, one with a non-UTF-8 name, and the hostile files; {name: expected reason}."""
    write_images(root, 2)
    shutil.copy(root / "img000.png", os.fsencode(root) + b"/" + NON_UTF8)
    os.mkfifo(root / "x.jpg")
    os.symlink("/dev/zero", root / "z.jpg")
    with open(root / "s.jpg", "wb") as f:
        f.truncate(SPARSE)
    os.symlink("l.jpg", root / "l.jpg")
    return {
        "x.jpg": "is a FIFO (named pipe), not a regular file",
        "z.jpg": "is a character device, not a regular file",
        "s.jpg": "file is too large: 3 GiB exceeds the 256 MiB limit (max_bytes)",
        "l.jpg": "symlink loop (too many levels of symbolic links)",
    }


@pytest.fixture
def hostile(tmp_path):
    root = tmp_path / "in"
    reasons = make_hostile(root)
    return root, reasons


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


# ---- reading one file ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["x.jpg", "z.jpg", "s.jpg", "l.jpg"])
def test_read_file_refuses_before_reading(hostile, name):
    root, reasons = hostile
    before = peak_rss_bytes()
    with pytest.raises(DecodeError) as err:
        bounded(lambda: read_file(root / name), 10, fifo=root / "x.jpg")
    assert str(err.value) == reasons[name]
    assert peak_rss_bytes() - before < 2**28  # nothing of /dev/zero or the sparse 3 GiB was read


def test_broken_symlink_and_a_raised_cap(tmp_path):
    os.symlink("gone.png", tmp_path / "b.png")
    with pytest.raises(DecodeError, match=r"^broken symlink \(to 'gone.png'\)$"):
        read_file(tmp_path / "b.png")
    (tmp_path / "ok.bin").write_bytes(b"x" * 300)
    with pytest.raises(DecodeError, match=r"^file is too large: 300 bytes exceeds the 299 bytes limit"):
        read_file(tmp_path / "ok.bin", max_bytes=299)
    assert read_file(tmp_path / "ok.bin", max_bytes=300) == b"x" * 300


def test_load_image_takes_a_bytes_path_and_names_a_fifo(hostile):
    root, _ = hostile
    image = saliency_jax.load_image(os.fsencode(root) + b"/" + NON_UTF8)
    np.testing.assert_array_equal(image, saliency_jax.load_image(root / "img000.png"))
    with pytest.raises(saliency_jax.ImageError, match=r"x.jpg': is a FIFO \(named pipe\)"):
        bounded(lambda: saliency_jax.load_image(root / "x.jpg"), 10, fifo=root / "x.jpg")


# ---- a decompression bomb ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", (13000, 13000)).save(path)  # 20 kB on disk, 169 MP decoded
    return path


def test_bomb_refused_from_its_header(bomb, monkeypatch):
    assert bomb.stat().st_size < 50_000
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self.size))
    with pytest.raises(saliency_jax.ImageError, match=r"image is too large: 13000x13000 = 169.0 MP exceeds "
                                                      r"the 40.0 MP limit \(max_pixels\)$"):
        saliency_jax.load_image(bomb)
    assert decoded == []


def test_bomb_is_one_line_on_the_real_stderr(bomb, tmp_path):
    """No DecompressionBombWarning beside the error (pytest resets warning filters, so a real process)."""
    run = subprocess.run([sys.executable, "-m", "saliency_jax.cli", "explain", str(bomb), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert run.returncode == 1
    assert run.stderr.splitlines() == [f"saliency-jax: error: cannot read image {str(bomb)!r}: image is too "
                                       "large: 13000x13000 = 169.0 MP exceeds the 40.0 MP limit (max_pixels)"]


@pytest.mark.parametrize("command", ["predict", "explain", "localize"])
def test_bomb_is_one_line_in_the_commands(command, bomb, tmp_path, capsys):
    extra = ["--out", str(tmp_path / "o"), "--segmentation", "threshold"] if command == "localize" else []
    assert cli.main([command, str(bomb), *extra]) == 1  # explain: was 150 s and 12.3 GB
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"saliency-jax: error: cannot read image {str(bomb)!r}: image is too large: 13000x13000 = "
                   "169.0 MP exceeds the 40.0 MP limit (max_pixels)"]


def test_features_lists_a_bomb_in_its_source_and_goes_on(bomb, tmp_path, capsys):
    import shutil

    write_images(tmp_path / "src", 2)
    shutil.copy(bomb, tmp_path / "src" / "bomb.png")
    code = cli.main(["features", "--source", str(tmp_path / "src"), "--layer", "block5", "--channels", "0",
                     "--k", "2", "--out", str(tmp_path / "o"), "--no-progress", "--max-pixels", "1000000"])
    assert code == 1 and (tmp_path / "o" / "block5_ch0000.png").is_file()
    err = capsys.readouterr().err
    assert "saliency-jax: error: bomb.png: image is too large: 13000x13000 = 169.0 MP exceeds the 1.0 MP limit" in err


def test_max_bytes_flag(tmp_path, capsys):
    write_images(tmp_path, 1)
    size = (tmp_path / "img000.png").stat().st_size
    assert cli.main(["predict", str(tmp_path / "img000.png"), "--max-bytes", "100"]) == 1
    assert f"file is too large: {size_text(size)} exceeds the 100 bytes limit" in capsys.readouterr().err


# ---- a batch job over a hostile folder -----------------------------------------------------------
def test_batch_over_hostile_files_lists_each_and_finishes(hostile, tiny, tmp_path):
    root, reasons = hostile
    before = peak_rss_bytes()
    summary, seconds = bounded(lambda: run_batch_job(open_source(str(root)), tiny, tmp_path / "out",
                                                     batch_size=2, progress=False), 120, fifo=root / "x.jpg")
    assert (summary.images, summary.errors) == (3, 4)
    assert peak_rss_bytes() - before < 2**30  # nothing of /dev/zero or the sparse 3 GiB was read
    lines = (tmp_path / "out" / "errors.txt").read_text(encoding="utf-8").splitlines()
    assert dict(line.split("\t") for line in lines) == {str(root / name): why for name, why in reasons.items()}

    out = load_outputs(tmp_path / "out")
    assert list(out["id"]) == [os.fsdecode(NON_UTF8), "img000.png", "img001.png"]
    # the same pixels under both names (two places in one batch: XLA's CPU code may round them apart
    # by an ulp, e.g. on AVX2), and not the third image's map
    np.testing.assert_allclose(out["maps"][0], out["maps"][1], rtol=1e-5, atol=1e-6)
    assert np.abs(out["maps"][0] - out["maps"][2]).max() > 1e-3
    rows = _index(tmp_path / "out")
    assert rows[0]["id"] == "caf\\xe9.png"  # index.csv is UTF-8; undecodable bytes written as \xNN


# ---- one writer per folder -----------------------------------------------------------------------
_HOLDER = "import sys, time; from saliency_jax.jobs import JobLock; JobLock(sys.argv[1]); print('held', flush=True); " \
          "time.sleep(600)"


def test_second_writer_refused_and_a_killed_writers_lock_taken_over(tiny, tmp_path):
    write_images(tmp_path / "in", 3)
    source = open_source(str(tmp_path / "in"))
    (tmp_path / "out").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path / "out")], stdout=subprocess.PIPE,
                              env={**os.environ, "JAX_PLATFORMS": "cpu"}, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(JobError) as err:
            run_batch_job(source, tiny, tmp_path / "out", progress=False)
        message = str(err.value)
        assert f"is in use by another batch run (pid {holder.pid} on " in message and "\n" not in message
        assert "wait for it to finish, or use another --out" in message
        assert not (tmp_path / "out" / "job.json").exists()  # refused before touching anything
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    summary = run_batch_job(source, tiny, tmp_path / "out", progress=False)
    assert summary.images == 3
    assert summary.notes[0].startswith(f"took over the lock of a run that ended without releasing it "
                                       f"(pid {holder.pid} on ")
    assert (tmp_path / "out" / "job.lock").read_text() == ""  # released cleanly: nothing stale next time
    again = run_batch_job(source, tiny, tmp_path / "out", progress=False)
    assert again.notes == () and again.new_images == 0


def test_lock_refuses_a_second_holder_in_the_same_process(tmp_path):
    first = JobLock(tmp_path)
    with pytest.raises(JobError, match=rf"in use by another batch run \(pid {os.getpid()} on "):
        JobLock(tmp_path)
    first.release()
    JobLock(tmp_path).release()


# ---- a changed image on resume -------------------------------------------------------------------
def _write_ppm(path: pathlib.Path, seed: int) -> None:
    """A random 48x40 PPM (its byte count never depends on the pixels)."""
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path, "PPM")


def _rewrite(path: pathlib.Path, seed: int, keep_stat: bool = False) -> None:
    """New pixels in `path`, the same size; its old mtime with keep_stat, else one second later."""
    info = path.stat()
    _write_ppm(path, seed)
    if keep_stat:
        assert path.stat().st_size == info.st_size
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    else:
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))


@pytest.mark.parametrize("fingerprint,keep_stat", [("stat", False), ("content", False), ("content", True)])
def test_changed_image_is_computed_again_never_kept(tiny, tmp_path, fingerprint, keep_stat):
    (tmp_path / "in").mkdir()
    for i in range(6):
        _write_ppm(tmp_path / "in" / f"img{i:03d}.ppm", seed=i)
    job = dict(batch_size=2, shard_size=2, fingerprint=fingerprint, progress=False)
    run_batch_job(open_source(str(tmp_path / "in")), tiny, tmp_path / "out", **job)
    _rewrite(tmp_path / "in" / "img003.ppm", seed=99, keep_stat=keep_stat)

    resumed = run_batch_job(open_source(str(tmp_path / "in")), tiny, tmp_path / "out", **job)
    assert resumed.notes == (f"recomputing shard-00001.npz: 1 image(s) changed since their maps were computed "
                             f"({fingerprint}): img003.ppm",)
    assert (resumed.new_images, resumed.images, resumed.resumed_at) == (2, 6, 4)
    fresh = run_batch_job(open_source(str(tmp_path / "in")), tiny, tmp_path / "fresh", **job)
    assert fresh.new_images == 6
    a, b = load_outputs(tmp_path / "out"), load_outputs(tmp_path / "fresh")
    for key in b:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert (tmp_path / "out" / "index.csv").read_text() == (tmp_path / "fresh" / "index.csv").read_text()


def test_a_fixed_bad_image_is_computed_again(tiny, tmp_path):
    write_images(tmp_path / "in", 3)
    (tmp_path / "in" / "img001.png").write_bytes(b"broken")
    run_batch_job(open_source(str(tmp_path / "in")), tiny, tmp_path / "out", shard_size=2, progress=False)
    write_images(tmp_path / "fixed", 3)
    shutil.copy(tmp_path / "fixed" / "img001.png", tmp_path / "in" / "img001.png")  # the same name, now good
    summary = run_batch_job(open_source(str(tmp_path / "in")), tiny, tmp_path / "out", shard_size=2,
                            progress=False)
    assert (summary.images, summary.errors, summary.new_images) == (3, 0, 2)
    assert (tmp_path / "out" / "errors.txt").read_text() == ""


# ---- damaged shards ------------------------------------------------------------------------------
def _damage(path: pathlib.Path, kind: str) -> None:
    if kind == "unreadable":
        path.write_bytes(path.read_bytes()[:300])
        return
    with np.load(path) as z:
        arrays = dict(z)
    if kind == "missing key":
        del arrays["maps"]
    elif kind == "misshapen maps":
        arrays["maps"] = arrays["maps"][:, :16, :16]
    elif kind == "wrong dtype":
        arrays["maps"] = arrays["maps"].astype(np.float64)
    elif kind == "short rows":
        arrays["score"] = arrays["score"][:1]
    np.savez(path, **arrays)


DAMAGE = {
    "missing key": "missing 'maps'",
    "misshapen maps": "'maps' has shape (2, 16, 16), expected (2, 32, 32)",
    "wrong dtype": "'maps' has dtype float64, expected float32",
    "short rows": "'score' has shape (1,) and dtype float32, expected (2,) of kind 'f'",
    "unreadable": "unreadable (",
}


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("finished")
    write_images(root / "in", 6)
    run_batch_job(open_source(str(root / "in")), tiny, root / "out", shard_size=2, progress=False)
    return root


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_shard_is_named_then_recomputed_on_request(finished, tiny, tmp_path, kind):
    out = tmp_path / "out"
    shutil.copytree(finished / "out", out)
    _damage(out / "shards" / "shard-00001.npz", kind)
    source = open_source(str(finished / "in"))
    with pytest.raises(JobError) as err:
        run_batch_job(source, tiny, out, shard_size=2, progress=False)
    message = str(err.value)
    assert message.startswith(f"{str(out / 'shards' / 'shard-00001.npz')!r} is damaged: {DAMAGE[kind]}")
    assert message.endswith("rerun with --recompute-damaged (recompute_damaged=True) to compute it again")
    assert "\n" not in message

    summary = run_batch_job(source, tiny, out, shard_size=2, recompute_damaged=True, progress=False)
    assert summary.new_images == 2 and summary.notes[0].startswith("recomputing damaged shard-00001.npz: ")
    a, b = load_outputs(out), load_outputs(finished / "out")
    for key in b:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert (out / "index.csv").read_text() == (finished / "out" / "index.csv").read_text()


def test_cli_damaged_shard_is_one_line_and_flag_recomputes(finished, tmp_path, capsys, monkeypatch):
    """The CLI path: --recompute-damaged reaches run_batch_job (checked without loading the real model)."""
    calls = {}

    def fake_job(source, model, out, **kwargs):
        calls.update(kwargs)
        raise JobError("'x/shards/shard-00001.npz' is damaged: missing 'maps'; rerun with --recompute-damaged")

    monkeypatch.setattr("saliency_jax.jobs.run_batch_job", fake_job)
    monkeypatch.setattr(cli, "_load_model", lambda args: tiny_model())
    argv = ["batch", str(finished / "in"), "--out", str(tmp_path / "o"), "--no-progress", "--recompute-damaged",
            "--fingerprint", "content", "--max-bytes", "1000000"]
    assert cli.main(argv) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "saliency-jax: error: 'x/shards/shard-00001.npz' is damaged: missing 'maps'; rerun with --recompute-damaged")
    assert (calls["recompute_damaged"], calls["fingerprint"], calls["max_bytes"]) == (True, "content", 1000000)
