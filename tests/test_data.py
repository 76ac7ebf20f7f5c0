"""Sources: defensive decoding, folder/glob order and labels, threaded streams, TFDS (by name and ImageFolder)."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import saliency_jax
from saliency_jax.data import (
    NO_LABEL,
    DecodeError,
    FolderSource,
    Record,
    SourceError,
    decode_image,
    decode_resized,
    decode_stream,
    open_source,
)

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from test_batch_job import BAD, ODD_GOOD, tiny_model, write_images, write_messy_folder  # noqa: E402


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    root = tmp_path_factory.mktemp("messy")
    write_messy_folder(root)
    return root


# ---- decoding ------------------------------------------------------------------------------------
def test_decode_equals_load_image_for_every_mode(messy):
    for name in ODD_GOOD + ("img000.png",):
        np.testing.assert_array_equal(decode_image((messy / name).read_bytes()),
                                      saliency_jax.load_image(messy / name), err_msg=name)
    gray = decode_image((messy / "sixteen.png").read_bytes())
    raw = np.asarray(Image.open(messy / "sixteen.png"))
    np.testing.assert_array_equal(gray[..., 0], (raw >> 8).astype(np.uint8))  # 16-bit: top 8 bits


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_files_give_one_line_reasons(messy, name):
    with pytest.raises(DecodeError, match=BAD[name].replace("(", r"\(").replace(")", r"\)")) as err:
        decode_image((messy / name).read_bytes())
    assert "\n" not in str(err.value)


def test_pixel_limit_and_pillows_decompression_bomb_check(messy, monkeypatch):
    data = (messy / "img000.png").read_bytes()  # 48x40
    with pytest.raises(DecodeError, match=r"image is too large: 48x40 = 0.0 MP exceeds the 0.0 MP limit"):
        decode_image(data, max_pixels=100)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow's own guard: error above 2x this
    with pytest.raises(DecodeError, match="image is too large .*decompression bomb"):
        decode_image(data)


def test_decode_resized_is_model_preprocess_resize(messy):
    model = tiny_model()
    got = decode_resized((messy / "rgba.png").read_bytes(), model.input_size)
    want = model.deprocess(model.preprocess(saliency_jax.load_image(messy / "rgba.png")))[0]
    np.testing.assert_array_equal(got, want)


# ---- folder and glob sources -----------------------------------------------------------------------
def test_folder_source_is_sorted_recursive_and_skips_hidden_and_non_images(tmp_path):
    write_images(tmp_path / "b", 2)
    write_images(tmp_path, 2, seed=1)
    (tmp_path / ".hidden").mkdir()
    write_images(tmp_path / ".hidden", 1)
    (tmp_path / ".x.png").write_bytes(b"")
    (tmp_path / "readme.md").write_text("")
    source = open_source(str(tmp_path))
    ids = [r.id for r in source.records()]
    assert ids == ["img000.png", "img001.png", "b/img000.png", "b/img001.png"] or ids == sorted(ids, key=lambda
                                                                                                 s: s.split("/"))
    assert source.num_examples == 4 and source.label_names is None
    assert [r.position for r in source.records(1, 3)] == [1, 2]
    assert [r.label for r in source.records()] == [NO_LABEL] * 4


def test_glob_source_takes_every_matching_file(tmp_path):
    write_images(tmp_path / "x", 3)
    (tmp_path / "x" / "odd.jpg").write_bytes(b"not really")
    source = open_source(str(tmp_path / "x" / "*.*g"))
    assert [r.id for r in source.records()] == ["img000.png", "img001.png", "img002.png", "odd.jpg"]
    assert source.root == str(tmp_path / "x")
    with pytest.raises(SourceError, match="no files match"):
        open_source(str(tmp_path / "x" / "*.tiff"))


def test_folder_labels_follow_the_imagefolder_convention(tmp_path):
    write_images(tmp_path, 6, classes=["n02", "n01", "n03"])
    source = FolderSource(str(tmp_path))
    assert source.label_names == ("n01", "n02", "n03")
    assert {r.id: r.label for r in source.records()}["n02/img000.png"] == 1
    assert FolderSource(str(tmp_path), labels="none").label_names is None
    write_images(tmp_path / "n01" / "deeper", 1)
    assert FolderSource(str(tmp_path)).label_names is None
    with pytest.raises(SourceError, match="labels='dirs' needs"):
        FolderSource(str(tmp_path), labels="dirs")


def test_source_errors_are_one_line(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        open_source(str(tmp_path / "nope"))
    with pytest.raises(SourceError, match="holds no image files"):
        open_source(str(tmp_path))
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(SourceError, match="is a file, not a folder"):
        open_source(str(tmp_path / "a.png"))
    with pytest.raises(SourceError, match="expected tfds:NAME:SPLIT"):
        open_source("tfds:mnist")


# ---- the threaded stream -----------------------------------------------------------------------------
def test_stream_keeps_order_with_many_workers_and_reports_errors_inline(messy):
    source = open_source(str(messy))
    examples = list(decode_stream(source.records(), (16, 16), workers=4, window=3))
    assert [e.position for e in examples] == list(range(source.num_examples))
    bad = {e.id: e.error for e in examples if e.error}
    assert sorted(bad) == sorted(BAD)
    assert all(e.image.shape == (16, 16, 3) and e.image.dtype == np.uint8 for e in examples if not e.error)


def test_stream_turns_io_errors_into_reasons():
    def missing(max_bytes):
        raise FileNotFoundError

    def denied(max_bytes):
        raise PermissionError

    records = [Record(0, "a", "a", NO_LABEL, missing), Record(1, "b", "b", NO_LABEL, denied),
               Record(2, "c", "c", NO_LABEL, lambda max_bytes: b"")]
    assert [e.error for e in decode_stream(records, (8, 8))] == [
        "no such file", "permission denied", "file is empty (0 bytes)"]


def test_core_path_never_imports_tensorflow():
    code = ("import sys, saliency_jax, saliency_jax.data, saliency_jax.jobs, saliency_jax.sharding, "
            "saliency_jax.cli; saliency_jax.cli.build_parser(); "
            "assert 'tensorflow' not in sys.modules and 'tensorflow_datasets' not in sys.modules; print('ok')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.stdout.strip() == "ok", run.stderr[-2000:]


def test_missing_tensorflow_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import tensorflow -> ImportError
    with pytest.raises(SourceError, match=r"^TFDS sources need the 'data' extra: pip install 'saliency-jax\[data\]'"):
        open_source("imagefolder:/nowhere:train")


# ---- TFDS: built from local files, never downloading -----------------------------------------------
@pytest.fixture(scope="module")
def tfds():
    pytest.importorskip("tensorflow", reason="TFDS sources need the 'data' extra (tensorflow-cpu)")
    return pytest.importorskip("tensorflow_datasets", reason="TFDS sources need the 'data' extra")


def test_imagefolder_yields_the_same_maps_and_labels_as_the_folder_source(tfds, tmp_path):
    from saliency_jax.jobs import load_outputs, run_batch_job

    classes = ["cat", "dog", "fox"]
    write_images(tmp_path / "root" / "train", 10, classes=classes)
    (tmp_path / "root" / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    model = tiny_model()
    tf_source = open_source(f"imagefolder:{tmp_path / 'root'}:train")
    assert tf_source.label_names == tuple(classes) and tf_source.num_examples == 11
    folder = open_source(str(tmp_path / "root" / "train"))
    for name, source in (("tfds", tf_source), ("folder", folder)):
        summary = run_batch_job(source, model, tmp_path / name, targets="label", shard_size=4, batch_size=4,
                                progress=False)
        assert (summary.images, summary.errors) == (10, 1)
    a, b = load_outputs(tmp_path / "tfds"), load_outputs(tmp_path / "folder")
    order = np.argsort(a["id"])  # ImageFolder has its own (fixed, shuffled) order
    assert list(a["id"][order]) == list(b["id"])
    for key in ("label", "target", "predicted", "maps"):
        np.testing.assert_array_equal(a[key][order], b[key], err_msg=key)
    assert list(b["label"]) == [classes.index(i.split("/")[0]) for i in b["id"]]
    assert "broken.png\tnot an image file" in (tmp_path / "tfds" / "errors.txt").read_text()


def test_tfds_dataset_by_name_and_split_from_a_local_build(tfds, tmp_path):
    """A real TFDS dataset, prepared from local PNGs into data_dir (no download), read as tfds:NAME:SPLIT."""
    write_images(tmp_path / "png", 5, seed=4)
    files = sorted((tmp_path / "png").iterdir())

    class LocalShapes(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=["even", "odd"]),
                    "image/filename": tfds.features.Text()}),
                supervised_keys=("image", "label"))

        def _split_generators(self, dl_manager):
            return {"test": self._generate_examples()}

        def _generate_examples(self):
            for i, f in enumerate(files):
                yield i, {"image": str(f), "label": i % 2, "image/filename": f.name}

    LocalShapes(data_dir=str(tmp_path / "tfds")).download_and_prepare()
    source = open_source("tfds:local_shapes:test", data_dir=str(tmp_path / "tfds"))
    assert (source.num_examples, source.label_names) == (5, ("even", "odd"))
    records = list(source.records())
    by_name = {r.path: r for r in records}
    for i, f in enumerate(files):  # the bytes TFDS stored decode to the original pixels
        np.testing.assert_array_equal(decode_image(by_name[f.name].read()), saliency_jax.load_image(f))
        assert by_name[f.name].label == i % 2
    assert [r.position for r in source.records(2, 4)] == [2, 3]
    assert [r.id for r in source.records(2, 4)] == [r.id for r in records[2:4]]
    assert open_source("tfds:local_shapes:test[1:3]", data_dir=str(tmp_path / "tfds")).num_examples == 2

    with pytest.raises(SourceError, match="no split 'validation'"):
        open_source("tfds:local_shapes:validation", data_dir=str(tmp_path / "tfds"))
    with pytest.raises(SourceError, match="not prepared .* never downloads"):
        open_source("tfds:mnist:test", data_dir=str(tmp_path / "empty"))
