"""Decoding one encoded image, defensively: bytes -> ``uint8 [h,w,3]`` RGB, or a one-line reason.

The one decoder of the library: ``saliency_jax.load_image`` reads a file with
``saliency_jax.data.files.read_file`` and decodes it here, and every source (a
folder, a glob, TFDS) hands the same function raw encoded bytes, so the pixels
are identical whatever the source: TFDS images are read with
``tfds.decode.SkipDecoding()`` and decoded here with Pillow, not by TensorFlow.
That also keeps one bad file from breaking a ``tf.data`` pipeline.

Guards, each giving a one-line reason instead of an exception or an OOM:

* an image whose header declares more than ``max_pixels`` pixels is refused
  before its pixels are decoded (default 40 MP: a 13000x13000 PNG of 20 kB is
  refused in milliseconds instead of costing gigabytes); Pillow's own
  decompression-bomb error (above ``2 * PIL.Image.MAX_IMAGE_PIXELS``) still
  applies on top and is reported as one line too. Pillow's
  ``DecompressionBombWarning`` is silenced process-wide when this module is
  imported: ``max_pixels`` is the policy, and a warnings filter is the only
  thread-safe way to keep that two-line warning off stderr from decode threads;
* empty, non-image, truncated and corrupt data;
* every Pillow mode becomes RGB by the rules of ``pil_to_rgb`` (grayscale
  repeated, alpha composited on white, 16-bit scaled ``v >> 8``), EXIF
  orientation applied.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from saliency_jax.data.base import DecodeError

DEFAULT_MAX_PIXELS = 40_000_000
"""Largest width x height decoded (40 MP: a 7300x5500 photo fits, 8000x8000 does not)."""

warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")  # corrupt EXIF


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _too_large(err: Image.DecompressionBombError) -> DecodeError:
    limit = Image.MAX_IMAGE_PIXELS
    return DecodeError(f"image is too large for Pillow ({_one_line(err).rstrip('.')}; raise PIL.Image.MAX_IMAGE_PIXELS, "
                       f"now {limit}, to allow it)")


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DecodeError("not an image file Pillow can decode") from None
    except Image.DecompressionBombError as e:
        raise _too_large(e) from None
    except MemoryError:
        raise DecodeError("out of memory reading the image header") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure on a bad header
        raise DecodeError(f"unreadable image header ({_one_line(e)})") from None


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """A one-line DecodeError when a ``width x height`` image exceeds ``max_pixels``, or has zero size."""
    if width * height > max_pixels:
        raise DecodeError(f"image is too large: {width}x{height} = {width * height / 1e6:.1f} MP "
                          f"exceeds the {max_pixels / 1e6:.1f} MP limit (max_pixels)")
    if width == 0 or height == 0:
        raise DecodeError(f"image has zero size ({width}x{height})")


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decodes encoded image bytes as RGB ``uint8 [H,W,3]`` (rules: ``pil_to_rgb``; EXIF rotation applied).

    Args:
      data: the file's bytes (JPEG, PNG, TIFF, ... anything Pillow reads).
      max_pixels: refuse images with more pixels than this, before decoding them.

    Raises:
      DecodeError: empty, unreadable, too large, truncated or corrupt; the message
        is the reason, on one line.
    """
    if not data:
        raise DecodeError("file is empty (0 bytes)")
    with _open(data) as image:
        check_pixels(*image.size, max_pixels)
        try:
            image.load()  # full decode now, so truncation fails here
        except Image.DecompressionBombError as e:
            raise _too_large(e) from None
        except MemoryError:
            raise DecodeError(f"out of memory decoding a {image.width}x{image.height} image") from None
        except Exception as e:  # noqa: BLE001 - OSError, SyntaxError, EOFError, ...
            raise DecodeError(f"image data is truncated or corrupt ({_one_line(e)})") from None
        bits = tiff_bits(image)  # read before exif_transpose drops the tags
        try:
            rotated = ImageOps.exif_transpose(image)
        except Exception:  # noqa: BLE001 - malformed EXIF: the pixels are still fine
            rotated = image
        try:
            return pil_to_rgb(rotated, tiff_bits=bits)
        except ValueError as e:
            raise DecodeError(_one_line(e)) from None


def decode_resized(data: bytes, size: tuple[int, int], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """``decode_image`` then resize (Pillow BILINEAR, whole image) to ``size`` = (h, w).

    The same resize as ``Model.preprocess``, so a map from a batch job equals the
    map of ``attribute(model, model.preprocess(load_image(path)))``.
    """
    return resize(decode_image(data, max_pixels=max_pixels), size)


# ---- pixel rules: any Pillow image -> RGB uint8 ----------------------------------------------------
def tiff_bits(image: Image.Image) -> int | None:
    """BitsPerSample declared by a TIFF file, else ``None``."""
    tags = getattr(image, "tag_v2", None)
    if tags is None:
        return None
    bits = tags.get(258)
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    return int(bits) if bits else None


def pil_to_rgb(image: Image.Image, *, tiff_bits: int | None = None) -> np.ndarray:
    """Any Pillow image -> ``uint8 [H,W,3]`` RGB.

    Grayscale and 1-bit are repeated over three channels; palette, CMYK, YCbCr and
    the like are converted by Pillow; 16/32-bit integer and float grayscale are
    scaled by ``high_depth_to_uint8``; images with alpha (RGBA, LA, PA, or a
    palette/colour-key transparency) are composited onto white, alpha dropped.

    Raises:
      ValueError: a mode Pillow cannot convert.
    """
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        gray = high_depth_to_uint8(np.asarray(image), mode, tiff_bits)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "RGB" and "transparency" not in image.info:
        return np.asarray(image, dtype=np.uint8).copy()

    has_alpha = "A" in image.getbands() or "a" in image.getbands()
    if has_alpha or "transparency" in image.info:
        try:
            rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
        except ValueError as e:
            raise ValueError(f"unsupported image mode {mode!r} ({e})") from e
        alpha = rgba[:, :, 3:]
        # Composite over white, rounded: rgb * a/255 + 255 * (1 - a/255).
        out = (rgba[:, :, :3] * alpha + 255 * (255 - alpha) + 127) // 255
        return out.astype(np.uint8)
    try:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except ValueError as e:
        raise ValueError(f"unsupported image mode {mode!r} ({e})") from e


def high_depth_to_uint8(values: np.ndarray, mode: str, tiff_bits: int | None) -> np.ndarray:
    """Scales one-channel 16/32-bit integer or float pixels ``[H,W]`` to ``uint8 [H,W]``.

    * ``I;16*``: 16-bit, ``v >> 8``.
    * ``I`` (32-bit signed container): 16-bit data (``v >> 8``) unless a TIFF
      declares more than 16 bits or a value exceeds 65535, then 32-bit
      (``v >> 24``); negative values become 0.
    * ``F``: values in [0, 1] are scaled by 255; values in [0, 255] are kept
      (Pillow's own convention); any other range is stretched min..max to 0..255.
      NaN becomes the minimum and +-inf are clipped.
    """
    if mode == "F":
        v = values.astype(np.float64)
        finite = v[np.isfinite(v)]
        lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
        v = np.nan_to_num(v, nan=lo)  # NaN -> the darkest value; +-inf clip below
        if lo >= 0.0 and hi <= 1.0:
            v = v * 255.0
        elif not (lo >= 0.0 and hi <= 255.0):
            v = (v - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(v)
        return np.clip(np.rint(v), 0, 255).astype(np.uint8)

    v = np.clip(values.astype(np.int64), 0, None)
    if mode.startswith("I;16"):
        bits = 16
    elif (tiff_bits is not None and tiff_bits > 16) or (v.size and v.max() > 0xFFFF):
        bits = 32
    else:
        bits = 16
    return (v >> (bits - 8)).astype(np.uint8)


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``uint8 [H,W,3]`` -> ``uint8 [h,w,3]`` with Pillow's BILINEAR filter (unchanged if already that size)."""
    if image.shape[:2] == tuple(size):
        return image
    height, width = size
    resized = Image.fromarray(np.ascontiguousarray(image)).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized)
