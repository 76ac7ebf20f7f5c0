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
        "efficientnet_lite2, resnet50, vgg16"
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


# ---- explain ------------------------------------------------------------------------------
def test_explain_writes_heatmaps_overlays_montage_and_npz(model, photos, tmp_path, capsys):
    out = tmp_path / "maps"
    code = cli.main(["explain", photos["chelsea"], "--method", "vanilla,gradcam", "--out", str(out), "--save-npz"])
    assert code == 0
    for method in ("vanilla", "gradcam"):
        for kind in ("heatmap", "overlay"):
            assert (out / f"chelsea_{method}_{kind}.png").is_file()
    from saliency_jax.images import load_image

    assert load_image(out / "chelsea_vanilla_overlay.png").shape == (300, 451, 3)
    assert load_image(out / "chelsea_vanilla_heatmap.png").shape == (224, 224, 3)
    assert load_image(out / "chelsea_montage.png").shape[1] > 2 * 451
    with np.load(out / "chelsea.npz") as npz:
        assert int(npz["target"]) == 285 and str(npz["label"]) == "Egyptian cat"
        assert npz["vanilla_attribution"].shape == (224, 224, 3)
        sal = npz["vanilla_saliency"]
        assert sal.shape == (224, 224) and sal.min() >= 0 and sal.max() == pytest.approx(1.0)
    assert "target 285 (Egyptian cat)" in capsys.readouterr().out


def test_explain_bar_moves_per_chunk_of_a_long_running_method(model, photos, tmp_path, monkeypatch):
    from saliency_jax import progress

    class Recorder:  # stands in for the tqdm bar: what the explain loop reports
        def __init__(self, total, **kw):
            self.total, self.updates, self.postfix = total, [], []

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            self.updates.append((self.postfix[-1], n))

        def set_postfix_str(self, s):
            self.postfix.append(s)

    bars = []
    monkeypatch.setattr(progress, "open_bar", lambda total, **kw: bars.append(Recorder(total, **kw)) or bars[-1])
    code = cli.main(["explain", photos["chelsea"], "--method", "rise,smoothgrad,vanilla", "--masks", "40",
                     "--samples", "33", "--out", str(tmp_path / "bar")])
    assert code == 0
    (bar,) = bars
    assert bar.total == 3 and bar.postfix == ["rise", "smoothgrad", "vanilla"]
    rise = [n for name, n in bar.updates if name == "rise"]
    assert rise == pytest.approx([0.5, 0.5])  # 40 masks in 2 chunks of the default chunk size
    # short calls (33 samples, one gradient) move once, and keep the program cache
    assert [n for name, n in bar.updates if name != "rise"] == [1, 1]


def test_explain_explicit_target_matches_library(model, photos, tmp_path):
    out = tmp_path / "t"
    assert cli.main(["explain", photos["coffee"], "--target", "504", "--out", str(out), "--save-npz"]) == 0
    import saliency_jax

    x = model.preprocess(saliency_jax.load_image(photos["coffee"]))
    expected = np.asarray(saliency_jax.attribute(model, x, 504))[0]
    with np.load(out / "coffee.npz") as npz:
        assert int(npz["target"]) == 504
        np.testing.assert_allclose(npz["vanilla_attribution"], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--method", "nosuch"], "unknown method 'nosuch'"),
        (["--target", "cat"], "expected 'top1' or a class index"),
        (["--samples", "0"], "expected a positive integer"),
        (["--dim", "1.5"], "expected a number in [0, 1]"),
    ],
)
def test_explain_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["explain", "x.jpg", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--method", "vanilla", "--samples", "3"], "--samples does not apply to vanilla"),
    (["--method", "vanilla,gradcam", "--steps", "3"], "--steps does not apply to vanilla, gradcam"),
    (["--method", "ig", "--quadrature", "simpson"], "unknown integration rule 'simpson'; choose one of midpoint"),
    (["--method", "smoothgrad", "--layer", "head"], "--layer does not apply to smoothgrad"),
])
def test_explain_an_option_that_does_not_apply_is_a_one_line_usage_error(photos, argv, message, capsys):
    assert cli.main(["explain", photos["coffee"], *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("saliency-jax explain: error: ") and message in err and err.count("\n") == 1


def test_explain_out_of_range_target_is_one_line(photos, tmp_path, capsys):
    assert cli.main(["explain", photos["coffee"], "--target", "1000", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == (
        "saliency-jax: error: --target must be 'top1' or a class index in [0, 1000), got 1000"
    )


def test_explain_skips_a_bad_file(photos, bad_files, tmp_path, capsys):
    assert cli.main(["explain", photos["coffee"], bad_files["empty"][0], "--out", str(tmp_path / "o")]) == 1
    assert (tmp_path / "o" / "coffee_vanilla_overlay.png").is_file()
    assert "file is empty" in capsys.readouterr().err
