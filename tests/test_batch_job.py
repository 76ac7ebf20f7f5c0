"""Batch jobs: nothing lost (bad files listed, kill -9 then resume == uninterrupted), outputs == `attribute`."""

import csv
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import saliency_jax
from saliency_jax.data import FolderSource, open_source
from saliency_jax.jobs import INDEX_COLUMNS, JobError, load_outputs, run_batch_job
from saliency_jax.jobs import store as store_lib
from saliency_jax.models.model import Model
from tiny_models import tiny_model as make_tiny_model

K = 10
SIZE = (32, 32)


def tiny_model() -> Model:
    """A `Model` at 32x32 with K=10 classes, fixed weights."""
    return make_tiny_model(SIZE, K, mean=127.5, std=64.0)


def write_images(root, n: int, *, seed: int = 0, classes=None, size=(40, 48)):
    """n random RGB PNGs in root (or root/<class>/ round-robin); returns their relative paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        rel = f"{classes[i % len(classes)]}/img{i:03d}.png" if classes else f"img{i:03d}.png"
        path = pathlib.Path(root) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(rel)
    return paths


BAD = {
    "corrupt.jpg": "not an image file",
    "badheader.jpg": "unreadable image header",
    "empty.png": "empty (0 bytes)",
    "truncated.jpg": "truncated or corrupt",
    "huge.png": "too large: 8000x8000 = 64.0 MP",
}
ODD_GOOD = ("gray.png", "rgba.png", "sixteen.png", "cmyk.jpg")


def write_messy_folder(root):
    """Good images in every awkward mode, plus corrupt, zero-byte, truncated and 8000x8000 files."""
    root = pathlib.Path(root)
    write_images(root, 5, seed=1)
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8)).save(root / "gray.png")
    Image.fromarray(rng.integers(0, 256, (30, 30, 4), dtype=np.uint8)).save(root / "rgba.png")
    Image.fromarray(rng.integers(0, 65536, (30, 30), dtype=np.uint16)).save(root / "sixteen.png")
    Image.fromarray(rng.integers(0, 256, (30, 30, 4), dtype=np.uint8), "CMYK").save(root / "cmyk.jpg")
    (root / "corrupt.jpg").write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    (root / "badheader.jpg").write_bytes(b"\xff\xd8\xff\xe0 a JPEG marker, then garbage" * 10)
    (root / "empty.png").write_bytes(b"")
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "full.jpg", quality=90)
    data = (root / "full.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "full.jpg").unlink()
    Image.new("L", (8000, 8000)).save(root / "huge.png")  # 62 kB on disk, 64 MP decoded
    (root / "notes.txt").write_text("not an image suffix: ignored by a folder source")


def _index(out) -> list[dict]:
    with open(pathlib.Path(out) / "index.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


def test_messy_folder_good_images_processed_bad_listed_with_reasons(tiny, tmp_path):
    write_messy_folder(tmp_path / "in")
    summary = run_batch_job(open_source(str(tmp_path / "in")), tiny, tmp_path / "out", batch_size=4,
                            shard_size=5, progress=False)
    good = sorted([f"img{i:03d}.png" for i in range(5)] + list(ODD_GOOD))
    assert (summary.images, summary.errors, summary.total) == (len(good), len(BAD), len(good) + len(BAD))
    rows = _index(tmp_path / "out")
    assert list(rows[0]) == list(INDEX_COLUMNS)
    assert sorted(r["id"] for r in rows) == good
    lines = (tmp_path / "out" / "errors.txt").read_text().splitlines()
    assert len(lines) == len(BAD)
    reasons = dict(line.split("\t") for line in lines)
    for name, reason in BAD.items():
        assert reason in reasons[str(tmp_path / "in" / name)]

    # Each map is exactly the library's: saliency_map(attribute(model, preprocess(load_image(path)))).
    out = load_outputs(tmp_path / "out")
    x = tiny.preprocess([saliency_jax.load_image(tmp_path / "in" / i) for i in out["id"]])
    expected = saliency_jax.saliency_map(saliency_jax.attribute(tiny, x, "top1"))
    np.testing.assert_allclose(out["maps"], expected, atol=2e-6)
    np.testing.assert_array_equal(out["predicted"], np.argmax(tiny(x), -1))
    np.testing.assert_array_equal(out["target"], out["predicted"])
    assert out["maps"].dtype == np.float32 and np.all(np.diff(out["position"]) > 0)


_KILLABLE = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_batch_job import tiny_model
    from saliency_jax.data import open_source
    from saliency_jax.jobs import run_batch_job

    slow = float(sys.argv[2])
    run_batch_job(open_source({src!r}), tiny_model(), sys.argv[1], method="smoothgrad",
                  options={{"num_samples": 3}}, batch_size=4, shard_size=6, float16=True,
                  progress=lambda n: time.sleep(slow * n))
""")


def test_kill_9_then_resume_equals_uninterrupted_run(tmp_path):
    src = tmp_path / "in"
    write_images(src, 30, seed=3)
    (src / "img007.png").write_bytes(b"broken")
    script = tmp_path / "job.py"
    script.write_text(_KILLABLE.format(tests=str(pathlib.Path(__file__).parent), src=str(src)))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}

    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "resumed"), "0.1"], env=env)
    first = tmp_path / "resumed" / "shards" / "shard-00000.npz"
    deadline = time.time() + 60
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert first.exists(), "the job never wrote its first shard"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    done = sorted(p.name for p in (tmp_path / "resumed" / "shards").glob("shard-*.npz"))
    assert 1 <= len(done) < 5, f"killed too late to test anything: {done}"

    runs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / out), "0"], env=env)
            for out in ("resumed", "straight")]  # the resume, and an uninterrupted run to compare with
    assert [run.wait(timeout=120) for run in runs] == [0, 0]
    resumed, straight = load_outputs(tmp_path / "resumed"), load_outputs(tmp_path / "straight")
    assert set(resumed) == set(straight)
    for key in straight:
        np.testing.assert_array_equal(resumed[key], straight[key], err_msg=key)
    assert len(straight["id"]) == 29 and len(set(straight["id"])) == 29 and resumed["maps"].dtype == np.float16
    for name in ("index.csv", "errors.txt"):
        assert (tmp_path / "resumed" / name).read_text() == (tmp_path / "straight" / name).read_text()
    assert not list((tmp_path / "resumed" / "shards").glob(".*"))  # no temporary files left behind


def test_a_shard_of_only_bad_files_keeps_shapes_and_dtype(tiny, tmp_path):
    write_images(tmp_path / "in", 2)
    for name in ("a_bad.png", "b_bad.png"):
        (tmp_path / "in" / name).write_bytes(b"")
    run_batch_job(open_source(str(tmp_path / "in")), tiny, tmp_path / "out", shard_size=2, float16=True,
                  progress=False)
    out = load_outputs(tmp_path / "out")
    assert out["maps"].shape == (2, *SIZE) and out["maps"].dtype == np.float16
    assert list(out["error_id"]) == ["a_bad.png", "b_bad.png"]


def test_rerun_of_a_finished_job_changes_nothing(tiny, tmp_path):
    write_images(tmp_path / "in", 7)
    source = open_source(str(tmp_path / "in"))
    run_batch_job(source, tiny, tmp_path / "out", batch_size=4, shard_size=3, progress=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    again = run_batch_job(source, tiny, tmp_path / "out", batch_size=4, shard_size=3, progress=False)
    assert (again.new_images, again.images, again.resumed_at) == (0, 7, 7)
    after = {p.name: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert after == before


def test_a_different_job_in_the_folder_is_refused(tiny, tmp_path):
    write_images(tmp_path / "in", 3)
    source = open_source(str(tmp_path / "in"))
    run_batch_job(source, tiny, tmp_path / "out", batch_size=4, progress=False)
    with pytest.raises(JobError, match="holds a different job.*method: 'vanilla' -> 'guided'"):
        run_batch_job(source, tiny, tmp_path / "out", method="guided", batch_size=4, progress=False)
    write_images(tmp_path / "in", 4, seed=9)  # the source gained a file
    with pytest.raises(JobError, match="different job"):
        run_batch_job(open_source(str(tmp_path / "in")), tiny, tmp_path / "out", batch_size=4, progress=False)


def test_unwritable_output_folder_is_one_clear_error(tiny, tmp_path):
    write_images(tmp_path / "in", 2)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(JobError, match=r"^output folder '.*a_file/out/shards' is not writable: Not a directory$"):
        run_batch_job(open_source(str(tmp_path / "in")), tiny, tmp_path / "a_file" / "out", progress=False)


def test_disk_full_stops_with_a_clear_error_and_leaves_no_partial_shard(tiny, tmp_path, monkeypatch):
    write_images(tmp_path / "in", 6)

    def full(f, **arrays):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_lib.np, "savez", full)
    with pytest.raises(JobError, match=r"cannot write '.*shard-00000.npz': No space left on device"):
        run_batch_job(open_source(str(tmp_path / "in")), tiny, tmp_path / "out", shard_size=3, progress=False)
    assert [p.name for p in (tmp_path / "out" / "shards").iterdir()] == []


def test_label_targets_flow_through_and_bad_labels_are_listed(tiny, tmp_path):
    write_images(tmp_path / "in", 8, classes=[f"c{i:02d}" for i in range(12)])  # labels 0..7 of 12 folders
    source = FolderSource(str(tmp_path / "in"))
    assert source.label_names[:2] == ("c00", "c01")
    summary = run_batch_job(source, tiny, tmp_path / "out", targets="label", batch_size=4, progress=False)
    out = load_outputs(tmp_path / "out")
    np.testing.assert_array_equal(out["target"], out["label"])
    np.testing.assert_array_equal(out["label"], [int(i[1:3]) for i in out["id"]])
    assert summary.errors == 0

    write_images(tmp_path / "more", 12, classes=[f"c{i:02d}" for i in range(12)])
    summary = run_batch_job(FolderSource(str(tmp_path / "more")), tiny, tmp_path / "out2", targets="label",
                            progress=False)
    assert (summary.images, summary.errors) == (10, 2)  # labels 10, 11 are not classes of a 10-class model
    assert "label 10 is not a class of the model" in (tmp_path / "out2" / "errors.txt").read_text()

    with pytest.raises(ValueError, match="targets='label' needs a source with labels"):
        run_batch_job(FolderSource(str(tmp_path / "more"), labels="none"), tiny, tmp_path / "o3", targets="label")


def test_fixed_target_float16_and_overlays(tiny, tmp_path):
    write_images(tmp_path / "in", 3)
    run_batch_job(open_source(str(tmp_path / "in")), tiny, tmp_path / "out", targets=4, float16=True,
                  save_png=True, progress=False)
    out = load_outputs(tmp_path / "out")
    assert out["maps"].dtype == np.float16 and set(out["target"]) == {4}
    pngs = sorted(p.name for p in (tmp_path / "out" / "png").iterdir())
    assert pngs == [f"img00{i}.png_overlay.png" for i in range(3)]
    assert np.asarray(Image.open(tmp_path / "out" / "png" / pngs[0])).shape == (*SIZE, 3)


def test_each_process_takes_its_own_slice(tiny, tmp_path):
    write_images(tmp_path / "in", 11)
    source = open_source(str(tmp_path / "in"))
    run_batch_job(source, tiny, tmp_path / "one", shard_size=4, progress=False)
    parts = [run_batch_job(source, tiny, tmp_path / "many", shard_size=4, process_index=i, process_count=3,
                           progress=False) for i in range(3)]
    assert [p.total for p in parts] == [4, 4, 3]
    merged = [load_outputs(tmp_path / "many" / f"process-{i:05d}-of-00003") for i in range(3)]
    one = load_outputs(tmp_path / "one")
    for key in ("id", "position", "predicted", "maps"):
        np.testing.assert_array_equal(np.concatenate([m[key] for m in merged]), one[key])


def test_cli_batch_with_the_pretrained_model(tmp_path, capsys):
    """The real model end to end: bundled photos plus a corrupt file; exit 1 because one file failed."""
    from saliency_jax import cli

    src = tmp_path / "in"
    src.mkdir()
    for name in ("chelsea", "coffee"):
        (src / f"{name}.jpg").write_bytes(saliency_jax.bundled_images()[name].read_bytes())
    (src / "broken.jpg").write_bytes(b"nope")
    argv = ["batch", str(src), "--out", str(tmp_path / "out"), "--batch-size", "2", "--float16", "--no-progress"]
    assert cli.main(argv) == 1
    rows = {r["id"]: r for r in _index(tmp_path / "out")}
    assert (rows["chelsea.jpg"]["predicted"], rows["coffee.jpg"]["predicted"]) == ("285", "967")
    assert "2 images -> maps, 1 errors" in capsys.readouterr().out
    assert cli.main(argv) == 1  # resumed: nothing left to do, same answer
    assert len(_index(tmp_path / "out")) == 2


def test_cli_errors_are_one_line(tmp_path, capsys):
    from saliency_jax import cli

    write_images(tmp_path / "in", 1)
    (tmp_path / "f").write_text("")
    assert cli.main(["batch", str(tmp_path / "in"), "--out", str(tmp_path / "f" / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("saliency-jax: error: output folder") and "not writable" in err[-1]
    assert cli.main(["batch", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["batch", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--steps", "5"]) == 2
    assert capsys.readouterr().err == "saliency-jax batch: error: --steps does not apply to vanilla\n"
