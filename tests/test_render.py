"""saliency_jax.render: colour lookup tables, overlays, montages, PNG output."""

import ast
import pathlib

import numpy as np
import pytest
from PIL import Image

from saliency_jax import render

NAMES = ("coolwarm", "gray", "inferno", "magma", "viridis")


def test_bundled_colormaps():
    assert render.colormap_names() == NAMES
    for name in NAMES:
        lut = render.colormap(name)
        assert lut.shape == (256, 3) and lut.dtype == np.uint8
        assert not lut.flags.writeable
    # well-known end points of matplotlib's tables
    np.testing.assert_array_equal(render.colormap("viridis")[[0, -1]], [[68, 1, 84], [253, 231, 37]])
    np.testing.assert_array_equal(render.colormap("inferno")[[0, -1]], [[0, 0, 4], [252, 255, 164]])
    np.testing.assert_array_equal(render.colormap("gray")[:, 0], np.arange(256))


def test_package_never_imports_matplotlib():
    root = pathlib.Path(render.__file__).parent
    for module in ("render.py", "maps.py"):
        tree = ast.parse((root / module).read_text())
        imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [m for m in imported if m.split(".")[0] == "matplotlib"], module


@pytest.mark.parametrize("cmap", ["inferno", "viridis", "magma", "gray"])
def test_colorize_endpoints_clipping_and_nan(cmap):
    lut = render.colormap(cmap)
    out = render.colorize(np.array([[0.0, 1.0, -3.0, 7.0, np.nan]]), cmap=cmap)
    assert out.shape == (1, 5, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], [lut[0], lut[-1], lut[0], lut[-1], [0, 0, 0]])
    np.testing.assert_array_equal(render.colorize(np.full((2, 2), 0.5), cmap=cmap)[0, 0], lut[128])


def test_colorize_diverging_maps_minus_one_to_one():
    lut = render.colormap("coolwarm")
    out = render.colorize(np.array([[-1.0, 0.0, 1.0, -9.0]]), cmap="coolwarm")
    np.testing.assert_array_equal(out[0], [lut[0], lut[128], lut[-1], lut[0]])


def test_colorize_accepts_jax_arrays():
    import jax.numpy as jnp

    np.testing.assert_array_equal(
        render.colorize(jnp.ones((3, 4))), np.broadcast_to(render.colormap("inferno")[-1], (3, 4, 3))
    )


def _photo(h=12, w=16):
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_overlay_keeps_image_where_map_is_zero():
    image = _photo()
    m = np.zeros((12, 16), np.float32)
    m[:, 8:] = 1.0
    out = render.overlay(image, m, alpha=0.5, dim=0.0)
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :8], image[:, :8])
    top = render.colormap("inferno")[-1].astype(np.float32)
    expected = np.rint(0.5 * image[:, 8:].astype(np.float32) + 0.5 * top).astype(np.uint8)
    np.testing.assert_array_equal(out[:, 8:], expected)


def test_overlay_resizes_map_to_image():
    image = _photo(30, 40)
    out = render.overlay(image, np.zeros((7, 5)), dim=0.0)  # smaller, other aspect ratio
    np.testing.assert_array_equal(out, image)
    full = render.overlay(image, np.ones((3, 3)), cmap="gray", alpha=1.0)  # constant stays 1
    np.testing.assert_array_equal(full, np.full_like(image, 255))
    np.testing.assert_array_equal(render.overlay(image, np.ones((3, 3)), alpha=0.0, dim=0.0), image)


def test_overlay_dim_darkens_the_photo_where_the_map_is_low_only():
    image = _photo()
    m = np.zeros((12, 16), np.float32)
    m[:, 8:] = 1.0
    np.testing.assert_array_equal(render.overlay(image, m, dim=1.0)[:, :8], 0)  # map 0, fully dimmed: black
    half = np.rint(0.5 * image[:, :8].astype(np.float32)).astype(np.uint8)
    np.testing.assert_array_equal(render.overlay(image, m, alpha=0.5, dim=0.5)[:, :8], half)
    np.testing.assert_array_equal(render.overlay(image, m, dim=0.7)[:, 8:], render.overlay(image, m)[:, 8:])  # map 1
    with pytest.raises(ValueError, match=r"overlay: dim must be a number in \[0, 1\], got -0\.1"):
        render.overlay(image, m, dim=-0.1)


def test_overlay_diverging_weights_by_magnitude_and_nan_shows_photo():
    image = _photo(2, 3)
    m = np.array([[-1.0, 0.0, np.nan], [1.0, 0.0, 0.0]])
    out = render.overlay(image, m, cmap="coolwarm", alpha=1.0, dim=0.0)
    lut = render.colormap("coolwarm")
    np.testing.assert_array_equal(out[0, 0], lut[0])
    np.testing.assert_array_equal(out[1, 0], lut[-1])
    np.testing.assert_array_equal(out[0, 1:], image[0, 1:])


def test_montage_shape_arithmetic_and_background():
    tiles = [np.zeros((10, 20, 3), np.uint8)] * 5
    out = render.montage(tiles, cols=3, pad=4)
    assert out.shape == (2 * 10 + 3 * 4, 3 * 20 + 4 * 4, 3) and out.dtype == np.uint8
    assert (out[:4] == 255).all() and (out[4:14, 4:24] == 0).all()
    assert (out[18:28, 52:72] == 255).all()  # sixth cell is empty
    # default cols = ceil(sqrt(5)) = 3; cols larger than n is capped at n
    assert render.montage(tiles, pad=0).shape == (20, 60, 3)
    assert render.montage(tiles[:2], cols=10, pad=0).shape == (10, 40, 3)
    # mixed sizes: cells as large as the largest image; gray tiles accepted
    mixed = render.montage([np.zeros((4, 6), np.uint8), np.zeros((8, 2, 3), np.uint8)], pad=1, background=(9, 8, 7))
    assert mixed.shape == (8 + 2, 2 * 6 + 3, 3)
    np.testing.assert_array_equal(mixed[0, 0], [9, 8, 7])


def test_montage_labels_add_a_text_strip_per_row():
    tiles = [np.zeros((20, 30, 3), np.uint8)] * 4
    plain = render.montage(tiles, cols=2, pad=4)
    labelled = render.montage(tiles, cols=2, pad=4, labels=["a", "bb", "ccc", "a much longer label"])
    assert labelled.shape[1] == plain.shape[1]
    strip = (labelled.shape[0] - plain.shape[0]) // 2
    assert strip > 4 and labelled.shape[0] == plain.shape[0] + 2 * strip
    text_area = labelled[4 + 20 : 4 + 20 + strip, 4 : 4 + 30]
    assert (text_area < 128).any()  # some dark ink on the white background


def test_save_png_round_trip(tmp_path):
    image = _photo()
    path = render.save_png(tmp_path / "sub" / "x.png", image)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), image)
    with pytest.raises(ValueError, match=r"save_png: expected a path ending in \.png"):
        render.save_png(tmp_path / "x.jpg", image)


def test_bad_inputs_have_clear_messages():
    valid = "valid names are coolwarm, gray, inferno, magma, viridis"
    with pytest.raises(ValueError, match=f"unknown cmap 'jet'; {valid}"):
        render.colorize(np.zeros((2, 2)), cmap="jet")
    with pytest.raises(ValueError, match="unknown cmap"):
        render.overlay(_photo(), np.zeros((2, 2)), cmap="hot")
    with pytest.raises(ValueError, match=r"colorize: expected a non-empty map \[H,W\], got shape \(2, 4, 4\); pass one map"):
        render.colorize(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="expected a real-valued map"):
        render.colorize(np.array([["a"]]))
    with pytest.raises(ValueError, match=r"overlay: expected uint8 pixels in 0\.\.255, got dtype float64"):
        render.overlay(np.zeros((4, 4, 3)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"overlay: expected an RGB image \[H,W,3\], got shape \(4, 4, 2\)"):
        render.overlay(np.zeros((4, 4, 2), np.uint8), np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\], got 1\.5"):
        render.overlay(_photo(), np.zeros((4, 4)), alpha=1.5)
    with pytest.raises(ValueError, match="non-empty list"):
        render.montage([])
    with pytest.raises(ValueError, match=r"montage: images\[1\]: expected uint8"):
        render.montage([_photo(), np.zeros((4, 4, 3))])
    with pytest.raises(ValueError, match=r"expected one label per image \(2\), got 1 labels"):
        render.montage([_photo(), _photo()], labels=["one"])
    with pytest.raises(ValueError, match="cols must be a positive int"):
        render.montage([_photo()], cols=0)
    with pytest.raises(ValueError, match="pad must be an int >= 0"):
        render.montage([_photo()], pad=-1)
    with pytest.raises(ValueError, match="background must be an int or"):
        render.montage([_photo()], background=300)


def test_save_png_palette_is_smaller_and_close(tmp_path):
    rng = np.random.default_rng(0)
    image = np.repeat(np.repeat(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), 4, 0), 4, 1)
    full = render.save_png(tmp_path / "full.png", image)
    small = render.save_png(tmp_path / "small" / "pal.png", image, palette=True)
    assert small.stat().st_size < full.stat().st_size
    back = np.asarray(Image.open(small).convert("RGB"), np.int32)
    assert back.shape == image.shape and np.abs(back - image).mean() < 12
    with pytest.raises(ValueError, match="expected an RGB image"):
        render.save_png(tmp_path / "bad.png", image[..., 0], palette=True)
