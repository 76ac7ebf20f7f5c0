"""Tests for saliency_jax.images: every Pillow mode -> RGB uint8, bad files, batching."""

import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from saliency_jax import images
from saliency_jax.images import ImageError, bundled_images, load_image, save_image, to_uint8_batch


def _save(tmp_path, name, image, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def _rgb(*values):
    return np.array(values, dtype=np.uint8)


# ----------------------------------------------------------------------------- modes


def test_rgb_png_round_trips_exactly(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = _save(tmp_path, "rgb.png", Image.fromarray(pixels))
    out = load_image(path)
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, pixels)


def test_accepts_str_and_pathlike(tmp_path):
    path = _save(tmp_path, "a.png", Image.new("RGB", (3, 2), (1, 2, 3)))
    np.testing.assert_array_equal(load_image(str(path)), load_image(path))


def test_grayscale_l(tmp_path):
    gray = np.array([[0, 17], [128, 255]], dtype=np.uint8)
    out = load_image(_save(tmp_path, "l.png", Image.fromarray(gray, "L")))
    assert out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out, np.repeat(gray[:, :, None], 3, axis=2))


def test_one_bit(tmp_path):
    bits = Image.fromarray(np.array([[0, 255], [255, 0]], dtype=np.uint8)).convert("1")
    out = load_image(_save(tmp_path, "one.png", bits))
    np.testing.assert_array_equal(out[:, :, 0], [[0, 255], [255, 0]])
    assert (out == out[:, :, :1]).all()


def test_16_bit_grayscale_keeps_top_byte_not_clipping(tmp_path):
    values = np.array([[0, 255, 256, 256 * 7], [256 * 128 + 255, 65280, 65534, 65535]], np.uint16)
    path = _save(tmp_path, "g16.png", Image.fromarray(values))
    with Image.open(path) as im:
        assert im.mode == "I;16"
    out = load_image(path)
    np.testing.assert_array_equal(out[:, :, 0], [[0, 0, 1, 7], [128, 255, 255, 255]])
    assert (out == out[:, :, :1]).all()


def test_16_bit_in_mode_i(tmp_path):
    # A 16-bit PGM opens in mode 'I' (a 32-bit container holding 16-bit data).
    values = np.array([[0, 256 * 3, 65535]], np.uint16)
    path = _save(tmp_path, "g16.pgm", Image.fromarray(values))
    with Image.open(path) as im:
        assert im.mode == "I"
    np.testing.assert_array_equal(load_image(path)[0, :, 0], [0, 3, 255])


def test_32_bit_integer_tiff(tmp_path):
    values = np.array([[0, 2**24 * 5, 2**31 - 1, -7]], np.int32)
    path = _save(tmp_path, "i32.tif", Image.fromarray(values))
    with Image.open(path) as im:
        assert im.mode == "I"
    np.testing.assert_array_equal(load_image(path)[0, :, 0], [0, 5, 127, 0])


@pytest.mark.parametrize(
    "values, expected",
    [
        ([0.0, 0.5, 1.0], [0, 128, 255]),  # [0, 1] -> x 255
        ([0.0, 100.0, 255.0], [0, 100, 255]),  # [0, 255] kept
        ([-1.0, 0.0, 1.0, 3.0], [0, 64, 128, 255]),  # other ranges: min..max
    ],
)
def test_float_tiff(tmp_path, values, expected):
    path = _save(tmp_path, "f.tif", Image.fromarray(np.array([values], np.float32)))
    with Image.open(path) as im:
        assert im.mode == "F"
    np.testing.assert_array_equal(load_image(path)[0, :, 0], expected)


def test_palette_colours_exact(tmp_path):
    image = Image.new("P", (3, 1))
    image.putpalette([255, 0, 0, 0, 255, 0, 12, 34, 56] + [0] * (256 * 3 - 9))
    image.putdata([0, 1, 2])
    out = load_image(_save(tmp_path, "p.png", image))
    np.testing.assert_array_equal(out[0], [[255, 0, 0], [0, 255, 0], [12, 34, 56]])


def test_palette_with_transparency_composites_over_white(tmp_path):
    image = Image.new("P", (3, 1))
    image.putpalette([255, 0, 0, 0, 0, 0, 12, 34, 56] + [0] * (256 * 3 - 9))
    image.putdata([0, 1, 2])
    out = load_image(_save(tmp_path, "pt.png", image, transparency=1))
    np.testing.assert_array_equal(out[0], [[255, 0, 0], [255, 255, 255], [12, 34, 56]])
    gif = load_image(_save(tmp_path, "pt.gif", image, transparency=1))
    np.testing.assert_array_equal(gif[0], [[255, 0, 0], [255, 255, 255], [12, 34, 56]])


def test_rgba_composites_over_white(tmp_path):
    pixels = np.array([[[200, 100, 0, 255], [200, 100, 0, 0], [200, 100, 0, 128]]], np.uint8)
    out = load_image(_save(tmp_path, "rgba.png", Image.fromarray(pixels, "RGBA")))
    # 128/255 of the colour + 127/255 of white, rounded.
    blend = [round((c * 128 + 255 * 127) / 255) for c in (200, 100, 0)]
    np.testing.assert_array_equal(out[0], [[200, 100, 0], [255, 255, 255], blend])


def test_la_composites_over_white(tmp_path):
    pixels = np.array([[[40, 255], [40, 0], [0, 51]]], np.uint8)
    out = load_image(_save(tmp_path, "la.png", Image.fromarray(pixels, "LA")))
    np.testing.assert_array_equal(out[0, :, 0], [40, 255, 204])  # 0*0.2 + 255*0.8
    assert (out == out[:, :, :1]).all()


def test_cmyk(tmp_path):
    image = Image.new("CMYK", (2, 1), (0, 255, 255, 0))  # pure red in naive CMYK
    out = load_image(_save(tmp_path, "cmyk.tif", image))
    np.testing.assert_array_equal(out[0], [[255, 0, 0], [255, 0, 0]])


def test_exif_orientation_is_applied(tmp_path):
    # 32 wide x 16 high: left half red, right half blue; orientation 6 = rotate 90 CW.
    pixels = np.zeros((16, 32, 3), np.uint8)
    pixels[:, :16] = (255, 0, 0)
    pixels[:, 16:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(tmp_path, "rot.jpg", Image.fromarray(pixels), exif=exif.tobytes(), quality=95)
    out = load_image(path).astype(int)
    assert out.shape == (32, 16, 3)
    assert np.abs(out[:12] - (255, 0, 0)).max() < 40  # left side is now on top
    assert np.abs(out[20:] - (0, 0, 255)).max() < 40


# ----------------------------------------------------------------------------- bad files


def _assert_image_error(path, reason):
    with pytest.raises(ImageError) as info:
        load_image(path)
    message = str(info.value)
    assert "\n" not in message
    assert repr(str(path)) in message, message
    assert reason in message, message
    return message


def test_missing_file(tmp_path):
    _assert_image_error(tmp_path / "nope.jpg", "no such file")


def test_image_error_is_a_value_error_not_file_not_found():
    assert issubclass(ImageError, ValueError)
    assert not issubclass(ImageError, OSError)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    _assert_image_error(path, "file is empty (0 bytes)")


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    _assert_image_error(path, "not an image file Pillow can decode")


def test_directory(tmp_path):
    path = tmp_path / "folder.png"
    path.mkdir()
    _assert_image_error(path, "is a directory")


def _open_fds():
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_truncated_file(tmp_path, suffix):
    pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full = _save(tmp_path, f"full.{suffix}", Image.fromarray(pixels))
    data = full.read_bytes()
    path = tmp_path / f"cut.{suffix}"
    path.write_bytes(data[: len(data) // 2])
    before = _open_fds()
    _assert_image_error(path, "image data is truncated or corrupt")
    assert _open_fds() == before  # the file was closed


# ----------------------------------------------------------------------------- batching


def test_batch_4d_resized():
    batch = np.random.default_rng(2).integers(0, 256, (2, 10, 12, 3), dtype=np.uint8)
    out = to_uint8_batch(batch, (6, 8))
    assert out.shape == (2, 6, 8, 3) and out.dtype == np.uint8
    expected = np.asarray(Image.fromarray(batch[1]).resize((8, 6), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out[1], expected)


def test_already_sized_passes_unchanged():
    batch = np.random.default_rng(3).integers(0, 256, (3, 6, 8, 3), dtype=np.uint8)
    out = to_uint8_batch(batch, (6, 8))
    np.testing.assert_array_equal(out, batch)
    assert out is not batch
    np.testing.assert_array_equal(to_uint8_batch(batch[0], (6, 8)), batch[:1])
    np.testing.assert_array_equal(to_uint8_batch(list(batch), (6, 8)), batch)


def test_single_image_and_grayscale():
    image = np.full((9, 5, 3), 7, np.uint8)
    assert to_uint8_batch(image, (4, 4)).shape == (1, 4, 4, 3)
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5)
    out = to_uint8_batch(gray, (4, 5))
    np.testing.assert_array_equal(out[0], np.repeat(gray[:, :, None], 3, axis=2))


def test_list_of_differing_sizes_and_pil_images():
    items = [
        np.zeros((10, 20, 3), np.uint8),
        Image.new("RGB", (7, 3), (1, 2, 3)),
        np.full((5, 5), 9, np.uint8),
        Image.new("L", (4, 4), 50),
        np.full((8, 8, 4), 200, np.uint8),  # alpha dropped
    ]
    out = to_uint8_batch(items, (4, 6))
    assert out.shape == (5, 4, 6, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[1], np.broadcast_to(_rgb(1, 2, 3), (4, 6, 3)))
    assert (out[2] == 9).all() and (out[3] == 50).all() and (out[4] == 200).all()


def test_pil_rgba_composited_over_white():
    out = to_uint8_batch(Image.new("RGBA", (2, 2), (0, 0, 0, 0)), (2, 2))
    assert (out == 255).all()


def test_float_input_is_rejected_with_hint():
    with pytest.raises(ValueError) as info:
        to_uint8_batch(np.zeros((1, 4, 4, 3), np.float32), (4, 4))
    message = str(info.value)
    assert "uint8" in message and "float32" in message and "\n" not in message
    with pytest.raises(ValueError, match="uint8"):
        to_uint8_batch([np.zeros((4, 4, 3), np.float64)], (4, 4))


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((4, 4, 5), np.uint8), "1, 3 or 4 channels.*got 5"),
        (np.zeros((2, 4, 4, 2), np.uint8), "1, 3 or 4 channels.*got 2"),
        ([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 6), np.uint8)], r"images\[1\].*got 6"),
        ([], "empty"),
        (np.zeros((0, 4, 4, 3), np.uint8), "empty"),
        (np.zeros((1, 1, 4, 4, 3), np.uint8), "shape"),
        (np.zeros(4, np.uint8), "shape"),
        ([np.zeros((1, 4, 4, 3), np.uint8)], "one image"),
        (np.zeros((4, 4, 3), np.int64), "uint8"),
    ],
)
def test_batch_bad_inputs(bad, match):
    with pytest.raises(ValueError, match=match):
        to_uint8_batch(bad, (4, 4))


def test_batch_bad_size_and_type():
    with pytest.raises(ValueError, match="height, width"):
        to_uint8_batch(np.zeros((4, 4, 3), np.uint8), (4, 0))
    with pytest.raises(TypeError, match="load_image"):
        to_uint8_batch(["x.jpg"], (4, 4))


# ----------------------------------------------------------------------------- saving


def test_save_png_round_trip_and_creates_dirs(tmp_path):
    pixels = np.random.default_rng(4).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    path = save_image(tmp_path / "a" / "b" / "out.png", pixels)
    assert path.is_file()
    np.testing.assert_array_equal(load_image(path), pixels)


def test_save_jpeg(tmp_path):
    pixels = np.full((16, 16, 3), (10, 200, 90), np.uint8)
    path = save_image(str(tmp_path / "out.JPEG"), pixels)
    with Image.open(path) as im:
        assert im.format == "JPEG"
    assert np.abs(load_image(path).astype(int) - pixels).max() <= 3


def test_save_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match=".png, .jpg or .jpeg"):
        save_image(tmp_path / "out.bmp", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        save_image(tmp_path / "out.png", np.zeros((2, 2, 3), np.float32))
    with pytest.raises(ValueError, match="JPEG"):
        save_image(tmp_path / "out.jpg", np.zeros((2, 2, 4), np.uint8))


# ----------------------------------------------------------------------------- bundled


def test_bundled_images():
    paths = bundled_images()
    assert list(paths) == ["astronaut", "chelsea", "coffee", "rocket"]
    for path in paths.values():
        assert isinstance(path, pathlib.Path) and path.is_file()
        image = load_image(path)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def test_module_exports():
    assert set(images.__all__) == {
        "ImageError",
        "bundled_images",
        "load_image",
        "save_image",
        "to_uint8_batch",
    }
