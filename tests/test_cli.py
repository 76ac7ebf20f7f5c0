"""`saliency-jax predict`: right answers, and one clear line (never a traceback) for bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest

from saliency_jax import cli
from saliency_jax.images import save_image


@pytest.fixture(scope="module")
def photos(tmp_path_factory, skimage_images):
    folder = tmp_path_factory.mktemp("photos")
    return {name: str(save_image(folder / f"{name}.png", img)) for name, img in skimage_images.items()}


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "notes.jpg").write_text("this is not a picture")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "folder.jpg").mkdir()
    return {
        "missing": (str(tmp_path / "missing.jpg"), "no such file"),
        "text": (str(tmp_path / "notes.jpg"), "not an image"),
        "empty": (str(tmp_path / "empty.png"), "empty"),
        "directory": (str(tmp_path / "folder.jpg"), "directory"),
    }


def test_predict_table(model, photos, capsys):
    assert cli.main(["predict", photos["chelsea"], photos["coffee"], "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "Egyptian cat" in out and "espresso" in out
    assert out.count("class") == 6


def test_predict_json(model, photos, capsys):
    assert cli.main(["predict", photos["chelsea"], "--json", "--top", "2"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["image"] == photos["chelsea"]
    assert [t["class"] for t in record["top"]][:1] == [285]
    probs = [t["probability"] for t in record["top"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1


def test_predict_defaults_to_bundled_images(model, capsys):
    assert cli.main(["predict", "--top", "1", "--json"]) == 0
    captured = capsys.readouterr()
    records = {r["image"].rsplit("/", 1)[-1]: r["top"][0]["class"] for r in json.loads(captured.out)}
    assert records["chelsea.jpg"] == 285 and records["coffee.jpg"] == 967
    assert "bundled examples" in captured.err


@pytest.mark.parametrize("kind", ["missing", "text", "empty", "directory"])
def test_bad_input_is_one_line_and_nonzero(kind, bad_files, capsys):
    path, reason = bad_files[kind]
    assert cli.main(["predict", path]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("saliency-jax: error: cannot read image") and path in err[0] and reason in err[0]


def test_bad_file_among_good_is_skipped_not_fatal(model, photos, bad_files, capsys):
    assert cli.main(["predict", photos["coffee"], bad_files["text"][0], "--json"]) == 1
    captured = capsys.readouterr()
    records = json.loads(captured.out)
    assert records[0]["top"][0]["class"] == 967
    assert "not an image" in records[1]["error"]
    assert len(captured.err.strip().splitlines()) == 1


def test_unknown_model_is_one_line(photos, capsys):
    assert cli.main(["predict", photos["coffee"], "--model", "resnet9"]) == 1
    assert capsys.readouterr().err.strip() == (
        "saliency-jax: error: unknown model 'resnet9'; available: efficientnet_lite0, efficientnet_lite1, "
        "efficientnet_lite2"
    )


@pytest.mark.parametrize("top", ["0", "-3", "five"])
def test_bad_top_is_a_usage_error(top, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["predict", "x.jpg", "--top", top])
    assert exit_info.value.code == 2
    assert "expected a positive integer" in capsys.readouterr().err


def test_console_script_prints_no_traceback(tmp_path):
    empty = tmp_path / "zero.jpg"
    empty.write_bytes(b"")
    proc = subprocess.run(
        [sys.executable, "-m", "saliency_jax.cli", "predict", str(empty)], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"saliency-jax: error: cannot read image '{empty}': file is empty (0 bytes)"
