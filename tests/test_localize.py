"""Weakly supervised localisation (paper Sec. 3.2): seeded graph cut on synthetic photos with a known
object box, degenerate maps, connected components, top-k boxes, and the `localize` command."""

import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import saliency_jax
from saliency_jax import cli
from saliency_jax.localize import (
    SEGMENTATIONS,
    _largest_component_cv2,
    draw_boxes,
    largest_component,
    localize,
    localize_topk,
    seeds,
)
from saliency_jax.images import save_image
from saliency_jax.metrics import box_iou

cv2 = pytest.importorskip("cv2", reason="the localize extra (opencv-python-headless) is not installed")

OBJECT_BOX = (50, 30, 130, 90)  # x0, y0, x1, y1 (end-exclusive)


def _scene(noise=0.0, seed=0, size=(120, 160)):
    """A red rectangle on a plain beige background, and a saliency blob on part of the object."""
    height, width = size
    image = np.full((height, width, 3), (200, 200, 185), np.float64)
    x0, y0, x1, y1 = OBJECT_BOX
    image[y0:y1, x0:x1] = (190, 30, 40)
    image += np.random.default_rng(seed).normal(0.0, noise, image.shape)
    yy, xx = np.mgrid[:height, :width]
    blob = np.exp(-((yy - 55.0) ** 2 + (xx - 80.0) ** 2) / (2 * 10.0**2))  # covers a corner of the object
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), blob.astype(np.float32)


@pytest.mark.parametrize("noise", [0.0, 10.0])
def test_graph_cut_recovers_the_object_box(noise):
    image, blob = _scene(noise)
    found = localize(image, blob)
    assert float(box_iou(found.box, OBJECT_BOX)) >= 0.8, found.box
    assert found.mask.shape == image.shape[:2] and found.mask.dtype == bool
    assert not found.empty
    # The seeds alone find only the blob: the colour model is what reaches the whole object.
    seeds_only = localize(image, blob, segmentation="threshold")
    assert float(box_iou(seeds_only.box, OBJECT_BOX)) < 0.5


def test_map_is_resized_to_the_photo_and_large_photos_are_segmented_smaller():
    image, blob = _scene()
    assert float(box_iou(localize(image, blob[::4, ::4]).box, OBJECT_BOX)) >= 0.8  # a 30x40 map
    big = np.asarray(Image.fromarray(image).resize((640, 480), Image.Resampling.NEAREST))
    found = localize(big, blob, max_side=160)
    assert found.mask.shape == (480, 640)
    assert float(box_iou(found.box, [4 * v for v in OBJECT_BOX])) >= 0.8


def test_smoothing_keeps_the_answer_on_a_smooth_map():
    image, blob = _scene()
    assert float(box_iou(localize(image, blob, smooth_sigma=2.0).box, OBJECT_BOX)) >= 0.8


@pytest.mark.parametrize("value", [0.0, 0.37])
def test_constant_maps_give_the_explicit_empty_result(value):
    image, _ = _scene()
    for segmentation in SEGMENTATIONS:
        found = localize(image, np.full((20, 30), value), segmentation=segmentation)
        assert found.box is None and found.empty
        assert found.mask.shape == image.shape[:2] and not found.mask.any()


def test_method_is_a_deprecated_alias_of_segmentation():
    image, blob = _scene()
    with pytest.warns(DeprecationWarning, match=r"localize\(segmentation=\.\.\.\)"):
        old = localize(image, blob, method="threshold")
    assert old.box == localize(image, blob, segmentation="threshold").box
    with pytest.raises(ValueError, match="pass segmentation only"), pytest.warns(DeprecationWarning):
        localize(image, blob, segmentation="threshold", method="grabcut")
    with pytest.warns(DeprecationWarning, match="use SEGMENTATIONS"):
        from saliency_jax.localize import METHODS
    assert METHODS == SEGMENTATIONS == ("grabcut", "threshold")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_maps_raise(bad):
    image, blob = _scene()
    blob[3, 4] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        localize(image, blob)


def test_sparse_maps_with_ties_still_seed_both_sides():
    m = np.zeros((40, 40), np.float32)
    m[10:12, 10:12] = 1.0  # 0.25% of the pixels: the 95% and 30% quantiles are both 0
    fg, bg = seeds(m)
    assert fg.sum() == 4 and bg.sum() == 1596 and not (fg & bg).any()
    m = np.ones((40, 40), np.float32)
    m[:5] = 0.5  # the maximum is tied over most of the map
    fg, bg = seeds(m)
    assert fg.sum() == 1400 and bg.sum() == 200
    image, _ = _scene(size=(40, 40))
    assert localize(image, m, segmentation="threshold").box == (0, 5, 40, 40)


def test_largest_component_matches_opencv():
    rng = np.random.default_rng(0)
    for _ in range(10):
        mask = rng.random((30, 37)) < 0.45
        np.testing.assert_array_equal(largest_component(mask), _largest_component_cv2(cv2, mask))
    diagonal = np.eye(6, dtype=bool)  # one 8-connected component
    np.testing.assert_array_equal(largest_component(diagonal), diagonal)
    assert not largest_component(np.zeros((4, 4), bool)).any()


@pytest.mark.parametrize(
    "image, saliency, options, message",
    [
        (np.zeros((20, 20, 3), np.float32), np.ones((20, 20)), {}, "uint8"),
        (np.zeros((20, 20), np.uint8), np.ones((20, 20)), {}, "[H,W,3]"),
        (np.zeros((20, 20, 3), np.uint8), np.ones((2, 20, 20)), {}, "maps[0]"),
        (np.zeros((20, 20, 3), np.uint8), np.ones((20, 20)), {"fg_quantile": 0.2}, "must be below fg_quantile"),
        (np.zeros((20, 20, 3), np.uint8), np.ones((20, 20)), {"bg_quantile": 1.5}, "bg_quantile must be a number in (0,"),
        (np.zeros((20, 20, 3), np.uint8), np.ones((20, 20)), {"segmentation": "watershed"}, "unknown segmentation 'watershed'"),
        (np.zeros((20, 20, 3), np.uint8), np.ones((20, 20)), {"iterations": 0}, "iterations must be a positive"),
        (np.zeros((20, 20, 3), np.uint8), np.ones((20, 20)), {"smooth_sigma": -1}, "smooth_sigma"),
    ],
)
def test_bad_input_messages(image, saliency, options, message):
    with pytest.raises(ValueError) as err:
        localize(image, saliency, **options)
    assert message in str(err.value)


def test_missing_opencv_names_the_extra(monkeypatch):
    image, blob = _scene()
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ImportError, match=r"pip install 'saliency-jax\[localize\]'"):
        localize(image, blob)
    assert localize(image, blob, segmentation="threshold").box is not None  # NumPy only
    assert cli.main(["localize", "--out", "unused"]) == 1


def test_draw_boxes_marks_the_box_edges():
    image = np.zeros((50, 60, 3), np.uint8)
    drawn = draw_boxes(image, [(10, 20, 30, 40), None], ["cat", "none"], width=1)
    assert drawn.shape == image.shape and not image.any()  # a new array
    assert (drawn[20, 10:30] > 0).any(axis=-1).all() and (drawn[39, 10:30] > 0).any(axis=-1).all()
    assert not drawn[30, 20].any()  # inside stays untouched
    with pytest.raises(ValueError, match="2 labels for 1 boxes"):
        draw_boxes(image, [(0, 0, 1, 1)], ["a", "b"])


# ---- top-k boxes and the command, on a tiny stand-in model ------------------------------------
class TinyConvNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        y = nn.relu(nn.Conv(6, (3, 3))(x))
        pooled = y.mean(axis=(1, 2))
        return nn.Dense(5)(pooled), {"conv": y, "pool": pooled}


@pytest.fixture(scope="module")
def tiny():
    module = TinyConvNet()
    variables = module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    return saliency_jax.Model("tiny", module, {"params": variables["params"]}, (32, 32), (127.0,), (128.0,),
                              tuple(f"class {i}" for i in range(5)), ("conv", "pool"))


def test_localize_topk_one_box_per_class(tiny):
    image, _ = _scene(noise=5.0)
    found = localize_topk(tiny, image, k=3)
    assert [c.target for c in found] == [c for c, _, _ in tiny.predict(image, top=3)[0]]
    assert [c.probability for c in found] == sorted((c.probability for c in found), reverse=True)
    for c in found:
        assert c.label == f"class {c.target}" and c.localization.mask.shape == image.shape[:2]
        if c.localization.box is not None:
            x0, y0, x1, y1 = c.localization.box
            assert 0 <= x0 < x1 <= 160 and 0 <= y0 < y1 <= 120
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 5\]"):
        localize_topk(tiny, image, k=6)
    with pytest.raises(ValueError, match="unknown segmentation"):
        localize_topk(tiny, image, segmentation="snake")


def test_cli_localize_writes_boxes_and_masks_and_skips_bad_files(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(saliency_jax, "load_model", lambda name="efficientnet_lite0", **kw: tiny)
    image, _ = _scene(noise=5.0)
    good = save_image(tmp_path / "scene.png", image)
    (tmp_path / "broken.jpg").write_text("not a picture")
    out = tmp_path / "out"
    code = cli.main(["localize", str(good), str(tmp_path / "broken.jpg"), "--out", str(out), "--top-k", "2"])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.count("saliency-jax: error:") == 1 and "broken.jpg" in captured.err
    assert "Traceback" not in captured.err
    boxes = np.asarray(Image.open(out / "scene_boxes.png"))
    assert boxes.shape == image.shape and not np.array_equal(boxes, image)
    for name in ("scene_mask.png", "scene_mask_top2.png"):
        mask = np.asarray(Image.open(out / name))
        assert mask.shape == image.shape[:2] and set(np.unique(mask)) <= {0, 255}
    assert str(good) in captured.out and captured.out.count("class ") >= 2
    assert cli.main(["localize", str(good), "--out", str(out), "--fg-quantile", "0.2"]) == 1
    assert "--bg-quantile (0.3) must be below --fg-quantile (0.2)" in capsys.readouterr().err
