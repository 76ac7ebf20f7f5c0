"""Host-side image I/O: read any image Pillow can decode as RGB uint8, batch it, save it.

Everything here is NumPy + Pillow and runs outside ``jit``. The contract at the
edge of the library is simple: images are ``uint8 [H,W,3]`` RGB (one image) or
``uint8 [B,h,w,3]`` (a batch resized to the model's input size). Model-specific
normalisation happens later, on device.

Example:
  >>> paths = bundled_images()
  >>> batch = to_uint8_batch([load_image(p) for p in paths.values()], (224, 224))
  >>> batch.shape, batch.dtype
  ((4, 224, 224, 3), dtype('uint8'))
"""

from __future__ import annotations

import importlib.resources
import os
import pathlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from saliency_jax.data.base import DecodeError
from saliency_jax.data.decode import DEFAULT_MAX_PIXELS, decode_image, pil_to_rgb, resize
from saliency_jax.data.files import DEFAULT_MAX_BYTES, read_file

__all__ = [
    "ImageError",
    "bundled_images",
    "load_image",
    "save_image",
    "to_uint8_batch",
]

_SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


class ImageError(ValueError):
    """An image file that cannot be read; the message names the path and the reason.

    Raised for a missing file too (not ``FileNotFoundError``), so callers catch one type.
    """


def load_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Reads an image file as RGB.

    Every mode Pillow decodes becomes RGB by the rules of
    ``saliency_jax.data.decode.pil_to_rgb``: grayscale and 1-bit are repeated over
    three channels; palette, CMYK, YCbCr and the like are converted by Pillow;
    16-bit grayscale keeps its top 8 bits (``v >> 8``, not clipping); images with
    alpha are composited onto a white background and the alpha is dropped. The
    EXIF orientation is applied. Multi-frame files give their first frame. The
    file is read and decoded exactly as a batch job reads it (``read_file``,
    ``decode_image``), with the same guards.

    Args:
      path: file path, ``str``, ``bytes`` or ``os.PathLike``.
      max_pixels: refuse an image of more pixels than this before decoding it
        (a 20 kB PNG may declare 13000x13000).
      max_bytes: refuse a file larger than this before reading it.

    Returns:
      ``uint8 [H,W,3]`` RGB array, ``H, W`` after EXIF rotation.

    Raises:
      ImageError: the file is missing, empty, a directory, a FIFO or device, too
        large, not an image Pillow can decode, truncated or corrupt. The message
        is one line naming the path.
    """
    path = os.fsdecode(path)
    try:
        return decode_image(read_file(path, max_bytes=max_bytes), max_pixels=max_pixels)
    except DecodeError as e:
        raise ImageError(f"cannot read image {path!r}: {e}") from None


def _array_to_rgb(array: np.ndarray, where: str) -> np.ndarray:
    """``uint8 [..., C]`` with C in 1/3/4 (or ``[H,W]``) -> ``uint8 [..., 3]``."""
    if array.dtype != np.uint8:
        raise ValueError(
            f"{where}: expected uint8 pixels in 0..255, got dtype {array.dtype}; "
            "convert first, e.g. np.clip(np.rint(x), 0, 255).astype(np.uint8)"
        )
    channels = array.shape[-1]
    if channels == 3:
        return array
    if channels == 1:
        return np.repeat(array, 3, axis=-1)
    if channels == 4:
        return array[..., :3]  # alpha dropped, not composited
    hint = "; a [B,H,W] grayscale batch needs a channel axis: x[..., None]" if array.ndim == 3 else ""
    raise ValueError(
        f"{where}: expected 1, 3 or 4 channels in the last axis, got {channels} "
        f"(shape {array.shape}){hint}"
    )


def to_uint8_batch(
    images: np.ndarray | Image.Image | Sequence[np.ndarray | Image.Image],
    size: tuple[int, int],
) -> np.ndarray:
    """Stacks images into one RGB batch of a fixed size.

    Each image is resized as a whole (no crop, aspect ratio not kept) to
    ``size`` with Pillow's BILINEAR filter, which antialiases when shrinking; an
    image already of that size is passed through unchanged.

    Args:
      images: one of
        * ``uint8 [B,H,W,C]`` or ``uint8 [H,W,C]`` (a single image, B = 1), or
          ``uint8 [H,W]`` grayscale; C is 1, 3 or 4 (4: the alpha is dropped);
        * a ``PIL.Image.Image`` (converted as by ``load_image``: alpha composited
          onto white, 16-bit scaled);
        * a list or tuple of the above single images, sizes may differ.
        Float and other non-uint8 arrays are rejected: convert them yourself so
        the value range is never guessed.
      size: ``(height, width)`` of the output.

    Returns:
      ``uint8 [B,height,width,3]`` RGB, a new array.

    Raises:
      ValueError: empty input, wrong number of dimensions, channel count not
        1/3/4, non-uint8 dtype, or a bad ``size``.
      TypeError: a list element that is neither an array nor a PIL image.
    """
    size = _check_size(size)
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("to_uint8_batch: got an empty list of images")
        out = [
            resize(_one_image(x, f"to_uint8_batch: images[{i}]"), size)
            for i, x in enumerate(images)
        ]
        return np.stack(out)
    if isinstance(images, Image.Image):
        return resize(pil_to_rgb(images), size)[None].copy()

    array = np.asarray(images)
    if array.ndim in (2, 3):
        return resize(_one_image(array, "to_uint8_batch"), size)[None].copy()
    if array.ndim != 4:
        raise ValueError(
            "to_uint8_batch: expected [B,H,W,C], [H,W,C] or [H,W] images, "
            f"got an array of shape {array.shape}"
        )
    if array.shape[0] == 0:
        raise ValueError(f"to_uint8_batch: got an empty batch (shape {array.shape})")
    array = _array_to_rgb(array, "to_uint8_batch")
    if array.shape[1:3] == size:
        return np.array(array, order="C")
    return np.stack([resize(x, size) for x in array])


def _one_image(x: np.ndarray | Image.Image, where: str) -> np.ndarray:
    """A single PIL image or array ``[H,W]`` / ``[H,W,C]`` -> ``uint8 [H,W,3]``."""
    if isinstance(x, Image.Image):
        return pil_to_rgb(x)
    if isinstance(x, (str, os.PathLike)):
        raise TypeError(f"{where}: got a path {x!r}; read it with load_image first")
    try:
        array = np.asarray(x)
    except Exception as e:  # noqa: BLE001
        raise TypeError(f"{where}: expected a uint8 array or PIL image, got {type(x)}") from e
    if array.dtype == object:
        raise TypeError(f"{where}: expected a uint8 array or PIL image, got {type(x)}")
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim != 3:
        raise ValueError(
            f"{where}: expected one image [H,W,C] or [H,W], got shape {array.shape}"
        )
    if 0 in array.shape[:2]:
        raise ValueError(f"{where}: image has zero size (shape {array.shape})")
    return _array_to_rgb(array, where)


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    try:
        height, width = (int(s) for s in size)
    except (TypeError, ValueError) as e:
        raise ValueError(f"size must be (height, width), got {size!r}") from e
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be positive (height, width), got {size!r}")
    return height, width


def save_image(path: str | os.PathLike, image: np.ndarray) -> pathlib.Path:
    """Writes ``uint8 [H,W,3]`` RGB (or ``[H,W]`` gray, or ``[H,W,4]`` RGBA to PNG).

    The format follows the suffix: ``.png`` (lossless) or ``.jpg``/``.jpeg``
    (quality 95). Missing parent directories are created.

    Args:
      path: destination file.
      image: ``uint8 [H,W,3]``, ``[H,W]``, ``[H,W,1]`` or, for PNG, ``[H,W,4]``.

    Returns:
      The path written, as ``pathlib.Path``.

    Raises:
      ValueError: unknown suffix, non-uint8 dtype, or a bad shape.
    """
    path = pathlib.Path(os.fspath(path))
    fmt = _SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"save_image: cannot tell the format of {str(path)!r}; "
            "use a .png, .jpg or .jpeg suffix"
        )
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(
            f"save_image: expected uint8 pixels, got dtype {array.dtype}; "
            "convert first, e.g. np.clip(np.rint(x), 0, 255).astype(np.uint8)"
        )
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[:, :, 0]
    allowed = (3, 4) if fmt == "PNG" else (3,)
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in allowed)):
        raise ValueError(
            f"save_image: cannot write shape {np.shape(image)} as {fmt}; expected "
            f"[H,W], [H,W,1] or [H,W,{'3|4' if fmt == 'PNG' else '3'}]"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"quality": 95} if fmt == "JPEG" else {}
    Image.fromarray(np.ascontiguousarray(array)).save(path, fmt, **options)
    return path


def bundled_images() -> dict[str, pathlib.Path]:
    """The example images shipped with the package.

    Returns:
      ``{name: path}`` for ``saliency_jax/assets/images/*.jpg`` (astronaut,
      chelsea, coffee, rocket), sorted by name.
    """
    root = importlib.resources.files("saliency_jax") / "assets" / "images"
    files = sorted(
        (f for f in root.iterdir() if f.name.lower().endswith(".jpg")),
        key=lambda f: f.name,
    )
    return {f.name.rsplit(".", 1)[0]: pathlib.Path(str(f)) for f in files}
