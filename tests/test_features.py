"""Top activations per channel (saliency_jax.features): streaming top-k, the Zeiler & Fergus figure, the CLI."""

import json

import pathlib

import numpy as np
import pytest

from saliency_jax.images import bundled_images, load_image, to_uint8_batch

from saliency_jax.features import NO_IMAGE, init_topk, merge_topk, top_activations, update_topk
from tests.tiny_models import tiny_model


# ---- an independent, all-in-memory reference ---------------------------------------------------------
def exact_topk(acts, channels, k, per_image=1, min_distance=0):
    """(values, ids, positions) by brute force over acts [N,h,w,K]: NumPy sorts, greedy picks per image."""
    n, h, w, _ = acts.shape
    values, ids, positions = [], [], []
    for c in channels:
        candidates = []  # (value, image, y, x)
        for i in range(n):
            v = acts[i, :, :, c].astype(np.float64)
            order = sorted(((-v[y, x], y, x) for y in range(h) for x in range(w)))
            picked = []
            for neg, y, x in order:
                if len(picked) == per_image:
                    break
                if all(max(abs(y - py), abs(x - px)) > min_distance for _, py, px in picked):
                    picked.append((-neg, y, x))
            candidates += [(value, i, y, x) for value, y, x in picked]
        best = sorted(candidates, key=lambda t: (-t[0], t[1], t[2], t[3]))[:k]
        values.append([t[0] for t in best])
        ids.append([t[1] for t in best])
        positions.append([(t[2], t[3]) for t in best])
    return np.array(values), np.array(ids), np.array(positions)


@pytest.fixture(scope="module")
def tiny():
    return tiny_model((8, 8))


@pytest.fixture(scope="module")
def tiny_images():
    """11 images with ties: two duplicates (ties across images) and a constant image (ties across positions)."""
    rng = np.random.default_rng(0)
    images = list(rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8))
    images += [images[2].copy(), images[5].copy(), np.full((8, 8, 3), 200, np.uint8)]
    return images


@pytest.mark.parametrize("per_image,min_distance", [(1, 0), (3, 0), (3, 2)])
def test_streaming_topk_equals_exact_topk(tiny, tiny_images, per_image, min_distance):
    channels, k = [0, 3, 5, 7], 6
    acts = np.asarray(tiny.features(tiny.preprocess(tiny_images))["conv"])
    values, ids, positions = exact_topk(acts, channels, k, per_image, min_distance)
    for batch_size in (1, 3, 4, 32):  # 3 and 4 do not divide the 11 images; 32 pads them to 16
        result = top_activations(tiny, tiny_images, "conv", channels, k=k, per_image=per_image,
                                 min_distance=min_distance, batch_size=batch_size, progress=False)
        np.testing.assert_array_equal(result.image_ids, ids)
        np.testing.assert_array_equal(result.positions, positions)
        np.testing.assert_allclose(result.values, values, rtol=1e-6)
        assert result.num_images == len(tiny_images) and result.errors == () and result.grid == (8, 8)


def test_ties_break_by_image_then_position(tiny):
    """All-equal activations: the order is image id, then (y, x), whatever the batch size."""
    state = init_topk(2, 5)
    for ids in ([3, 1], [2, 0]):  # batches out of order
        values = np.zeros((2, 2 * 2), np.float32)  # two images x per_image 2 each, all value 0 (one -0.0)
        values[0, 3] = -0.0  # in the second batch: image 0 at (1, 0)
        image_ids = np.repeat(np.array(ids, np.int32), 2)[None].repeat(2, 0)
        y = np.array([[0, 1, 0, 1]] * 2, np.int32)
        x = np.array([[1, 0, 1, 0]] * 2, np.int32)
        state = merge_topk(state, values, image_ids, y, x)
    np.testing.assert_array_equal(state.image_ids, [[0, 0, 1, 1, 2]] * 2)
    np.testing.assert_array_equal(state.positions[0], [[0, 1], [1, 0], [0, 1], [1, 0], [0, 1]])
    assert np.all(np.asarray(state.values) == 0)


def test_padding_never_wins(tiny, tiny_images):
    """Padded images (valid=False) are -inf with NO_IMAGE even when their pixels would win."""
    x = tiny.preprocess(tiny_images[:4])
    valid = np.array([True, False, False, False])
    state = update_topk(init_topk(1, 3), tiny, x, np.arange(4, dtype=np.int32), valid, np.array([0], np.int32),
                        layer="conv", per_image=2)
    assert np.asarray(state.image_ids).tolist() == [[0, 0, NO_IMAGE]]
    assert np.isneginf(np.asarray(state.values)[0, 2])


def test_repeat_run_does_not_recompile(tiny, tiny_images):
    run = dict(k=4, batch_size=4, progress=False)
    top_activations(tiny, tiny_images, "conv", [1, 2], **run)
    before = update_topk._cache_size()
    top_activations(tiny, tiny_images[::-1], "conv", [4, 6], **run)
    assert update_topk._cache_size() == before


def test_broken_images_are_reported_and_skipped(tiny, tiny_images):
    images = [tiny_images[0], np.zeros((8, 8, 3), np.float32), tiny_images[1], np.zeros((0, 4, 3), np.uint8)]
    seen = []
    result = top_activations(tiny, images, "conv", [0], k=2, progress=seen.append)
    assert [e[0] for e in result.errors] == [1, 3] and "uint8" in result.errors[0][2]
    assert result.num_images == 2 and sorted(result.image_ids[0].tolist()) == [0, 2] and sum(seen) == 4


@pytest.mark.parametrize("kwargs,message", [
    (dict(layer="conv", channels=[0], k=9), "k=9 but only 4 images x per_image=1 = 4 candidates; lower k or raise"),
    (dict(layer="nope", channels=[0]), "unknown layer 'nope' for tiny; choose one of conv, pool"),
    (dict(layer="conv", channels=[2, 8]), "channel 8 out of range for layer 'conv' with 8 channels"),
    (dict(layer="conv", channels=[-1]), "channel -1 out of range"),
    (dict(layer="pool", channels=[0]), "spatial layer"),
    (dict(layer="conv", channels=[0], k=2, per_image=65), r"per_image=65 but the layer has only 8x8 = 64 positions"),
])
def test_bad_requests_fail_with_a_clear_message(tiny, tiny_images, kwargs, message):
    with pytest.raises(ValueError, match=message):
        top_activations(tiny, tiny_images[:4], progress=False, **kwargs)


def test_too_few_usable_images_after_skipping(tiny, tiny_images):
    with pytest.raises(ValueError, match=r"k=3 but only 2 usable images \(1 of 3 images could not be read\)"):
        top_activations(tiny, [tiny_images[0], np.zeros((8, 8, 3), np.float32), tiny_images[1]], "conv", [0],
                        k=3, progress=False)


def test_folder_source_gives_positions_and_names(tiny, tiny_images, tmp_path):
    from saliency_jax import images
    from saliency_jax.features import load_examples

    for i, image in enumerate(tiny_images[:5]):
        images.save_image(tmp_path / f"img{i}.png", image)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    result = top_activations(tiny, str(tmp_path), "conv", [0, 1], k=3, batch_size=2, progress=False)
    in_memory = top_activations(tiny, tiny_images[:5], "conv", [0, 1], k=3, batch_size=2, progress=False)
    assert [e[1] for e in result.errors] == ["broken.png"]
    np.testing.assert_array_equal(result.image_ids - 1, in_memory.image_ids)  # broken.png sorts first
    loaded = load_examples(result.source, result.image_ids[0].tolist(), tiny.input_size)
    assert {loaded[i].id for i in result.image_ids[0]} <= {f"img{i}.png" for i in range(5)}


# ---- the figure -------------------------------------------------------------------------------------
def test_projection_pixels_is_symmetric_around_grey():
    from saliency_jax.features import projection_pixels

    p = np.array([[[-2.0, 0.0, 1.0]]], np.float32)
    np.testing.assert_array_equal(projection_pixels(p, percentile=100), [[[1, 128, 192]]])
    np.testing.assert_array_equal(projection_pixels(np.zeros((2, 2, 3))), np.full((2, 2, 3), 128))


def test_feature_grid_layout():
    """k=4 crops of 10x10 at tile 20: two 2x2 montages (2*20 + 3*2 = 46 px) side by side with a 4 px gap."""
    from saliency_jax.features import feature_grid

    patches = [np.full((10, 10, 3), 10 * i, np.uint8) for i in range(4)]
    grid = feature_grid([np.ones((10, 10, 3))] * 4, patches, tile=20, pad=2)
    assert grid.shape == (46, 96, 3) and grid.dtype == np.uint8
    assert (grid[2:22, 2:22] == 255).all()  # projection 0: all positive -> white
    assert (grid[24:44, 74:94] == 30).all()  # patch 3: bottom right of the right half
    with pytest.raises(ValueError, match="as many projections as patches"):
        feature_grid([np.ones((10, 10, 3))], patches)


@pytest.fixture(scope="module")
def block1_top(model):
    """The 4 bundled photos' top-4 activations of block1 channels 0 and 8 (the CLI test's defaults)."""
    images = [load_image(p) for p in bundled_images().values()]
    return images, top_activations(model, images, "block1", [0, 8], k=4, progress=False)


def test_projections_lie_inside_their_receptive_field(model, block1_top):
    from saliency_jax.attribution.units import project_activation
    from saliency_jax.features import project_top
    from saliency_jax.receptive_field import receptive_field

    images, result = block1_top
    tops = project_top(model, result)
    field = receptive_field(model, "block1")
    h, w = model.input_size
    pixels = model.preprocess(images)
    for c, channel in enumerate(result.channels):
        assert sorted(result.image_ids[c].tolist()) == [0, 1, 2, 3]
        ids, positions = result.image_ids[c], result.positions[c]
        full = np.asarray(project_activation(model, pixels[ids], "block1", np.full(4, channel), positions))
        for r in range(4):
            y0, y1, x0, x1 = tops.windows[c, r]
            assert (y0, y1, x0, x1) == field.window(*positions[r], (h, w))
            assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
            outside = full[r].copy()
            outside[y0:y1, x0:x1] = 0
            assert np.abs(full[r]).max() > 0 and not outside.any()  # the support lies inside the window
            np.testing.assert_allclose(tops.projections[c][r], full[r][y0:y1, x0:x1], rtol=1e-5, atol=1e-7)
            np.testing.assert_array_equal(tops.patches[c][r], to_uint8_batch(images[ids[r]], (h, w))[0][y0:y1, x0:x1])
    assert tops.names == {i: f"image {i}" for i in sorted(set(result.image_ids.ravel().tolist()))}


# ---- the command line -------------------------------------------------------------------------------
def test_cli_features_writes_grids_and_table(model, block1_top, tmp_path):
    from saliency_jax.cli import main

    out = tmp_path / "feat"
    assert main(["features", "--layer", "block1", "--channels", "0,8", "--k", "4", "--no-progress",
                 "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["block1_ch0000.png", "block1_ch0008.png", "topk.json"]
    table = json.loads((out / "topk.json").read_text())
    assert (table["layer"], table["k"], table["per_image"], table["images"]) == ("block1", 4, 1, 4)
    assert table["receptive_field"] == {"size": [11, 11], "stride": [4, 4], "offset": [-2, -2]}
    expected = block1_top[1]  # the same images, as arrays
    names = sorted(p.name for p in bundled_images().values())
    for c, row in enumerate(table["channels"]):
        assert row["channel"] == [0, 8][c]
        assert [e["image_id"] for e in row["top"]] == expected.image_ids[c].tolist()
        assert [e["position"] for e in row["top"]] == expected.positions[c].tolist()
        np.testing.assert_allclose([e["value"] for e in row["top"]], expected.values[c], rtol=1e-5)
        for e in row["top"]:
            y, x = e["position"]
            assert e["window"] == [max(4 * y - 2, 0), min(4 * y + 9, 224), max(4 * x - 2, 0), min(4 * x + 9, 224)]
            assert e["image"] == names[e["image_id"]] == pathlib.Path(e["path"]).name
    grid = load_image(out / "block1_ch0000.png")  # 2x2 cells of 64 px, pad 2, twice, a 4 px gap, a 2 px frame
    assert grid.shape[1] == 2 * (2 * 64 + 3 * 2) + 4 + 2 * 2


@pytest.mark.parametrize("argv,message", [
    (["--layer", "nope", "--channels", "0"], "unknown layer 'nope' for efficientnet_lite0; choose one of stem, block0, block1"),
    (["--layer", "block1", "--channels", "0,24"], "channel 24 out of range for layer 'block1' with 24 channels"),
    (["--layer", "block1", "--channels", "0", "--k", "9", "--per-image", "1"],
     "k=9 but only 4 images x per_image=1 = 4 candidates; lower k or raise per_image"),
    (["--layer", "block1", "--channels", "0", "--source", "{empty}"], "holds no image files"),
    (["--layer", "pool", "--channels", "0"], "spatial layer"),
])
def test_cli_features_bad_input_is_one_line(tmp_path, capsys, argv, message):
    from saliency_jax.cli import main

    (tmp_path / "empty").mkdir()
    argv = [a.replace("{empty}", str(tmp_path / "empty")) for a in argv]
    assert main(["features", *argv, "--no-progress", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("saliency-jax: error: ") and message in err[0]
    assert not (tmp_path / "out").exists()
