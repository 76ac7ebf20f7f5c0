"""Decoding one encoded image, defensively: bytes -> ``uint8 [h,w,3]`` at the model's size, or a reason.

Every source (a folder, a glob, TFDS) hands the same function raw encoded bytes,
so the pixels are identical whatever the source: TFDS images are read with
``tfds.decode.SkipDecoding()`` and decoded here with Pillow, not by TensorFlow.
That also keeps one bad file from breaking a ``tf.data`` pipeline.

Guards, each giving a one-line reason instead of an exception or an OOM:

* an image whose header declares more than ``max_pixels`` pixels is refused
  before its pixels are decoded (default 40 MP, e.g. 8000x8000 = 64 MP is
  refused); Pillow's own decompression-bomb check (``Image.MAX_IMAGE_PIXELS``)
  still applies on top;
* empty, non-image, truncated and corrupt data;
* every Pillow mode becomes RGB exactly as ``saliency_jax.load_image`` does
  (grayscale repeated, alpha composited on white, 16-bit scaled ``v >> 8``).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from saliency_jax import images as _images

DEFAULT_MAX_PIXELS = 40_000_000
"""Largest width x height decoded (40 MP: a 7300x5500 photo fits, 8000x8000 does not)."""


class DecodeError(ValueError):
    """One image that cannot be used; ``str(err)`` is a one-line reason (no path)."""


def _one_line(text) -> str:
    return " ".join(str(text).split())


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decodes encoded image bytes as RGB ``uint8 [H,W,3]`` (the ``load_image`` rules).

    Args:
      data: the file's bytes (JPEG, PNG, TIFF, ... anything Pillow reads).
      max_pixels: refuse images with more pixels than this, before decoding them.

    Raises:
      DecodeError: empty, unreadable, too large, truncated or corrupt; the message
        is the reason, on one line.
    """
    if not data:
        raise DecodeError("file is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DecodeError("not an image file Pillow can decode") from None
    except Image.DecompressionBombError as e:
        raise DecodeError(f"image is too large ({_one_line(e)})") from None
    except MemoryError:
        raise DecodeError("out of memory reading the image header") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure on a bad header
        raise DecodeError(f"unreadable image header ({_one_line(e)})") from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise DecodeError(
                f"image is too large: {width}x{height} = {width * height / 1e6:.1f} MP "
                f"exceeds the {max_pixels / 1e6:.1f} MP limit (max_pixels)"
            )
        if width == 0 or height == 0:
            raise DecodeError(f"image has zero size ({width}x{height})")
        try:
            image.load()  # full decode now, so truncation fails here
        except Image.DecompressionBombError as e:
            raise DecodeError(f"image is too large ({_one_line(e)})") from None
        except MemoryError:
            raise DecodeError(f"out of memory decoding a {width}x{height} image") from None
        except Exception as e:  # noqa: BLE001 - OSError, SyntaxError, EOFError, ...
            raise DecodeError(f"image data is truncated or corrupt ({_one_line(e)})") from None
        tiff_bits = _images._tiff_bits(image)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rotated = ImageOps.exif_transpose(image)
        except Exception:  # noqa: BLE001 - malformed EXIF: the pixels are still fine
            rotated = image
        try:
            return _images._pil_to_rgb(rotated, tiff_bits=tiff_bits)
        except ValueError as e:
            raise DecodeError(_one_line(e)) from None


def decode_resized(data: bytes, size: tuple[int, int], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """``decode_image`` then resize (Pillow BILINEAR, whole image) to ``size`` = (h, w).

    The same resize as ``Model.preprocess``, so a map from a batch job equals the
    map of ``attribute(model, model.preprocess(load_image(path)))``.
    """
    return _images.to_uint8_batch(decode_image(data, max_pixels=max_pixels), size)[0]
