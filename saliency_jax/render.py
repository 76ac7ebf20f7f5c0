"""Host-side rendering of saliency maps: colour maps, overlays on the photo, montages.

NumPy + Pillow only, outside ``jit``. Inputs are a map ``[H,W]`` already scaled
by ``saliency_jax.maps`` (values in [0, 1], or [-1, 1] for signed maps) and
photos as ``uint8 [H,W,3]`` (gray ``[H,W]`` / ``[H,W,1]`` is shown as gray RGB);
every function returns ``uint8 [H,W,3]`` RGB,
ready for ``save_png``.

Colour maps are 256-entry lookup tables stored in ``assets/colormaps.npz``:
``inferno``, ``viridis``, ``magma`` (perceptually uniform; Nathaniel J. Smith,
Stefan van der Walt and Eric Firing, CC0), ``gray`` (black to white, as in the
paper's figures) and the diverging ``coolwarm`` for signed maps (Kenneth
Moreland, "Diverging Color Maps for Scientific Visualization", 2009). The file
was written once from matplotlib 3.11, which is not a dependency of this
package; to regenerate it::

    # pip install matplotlib  (in a throwaway environment)
    import matplotlib, numpy as np
    names = ("inferno", "viridis", "magma", "gray", "coolwarm")
    luts = {n: np.rint(matplotlib.colormaps[n].resampled(256)(np.arange(256))[:, :3] * 255)
               .astype(np.uint8) for n in names}
    np.savez("saliency_jax/assets/colormaps.npz", **luts)

Example:
  >>> from saliency_jax.maps import saliency_map
  >>> heat = colorize(saliency_map(grads)[0])             # uint8 [h,w,3]
  >>> shown = overlay(photo, saliency_map(grads)[0])       # uint8, photo's size
  >>> save_png("out/grid.png", montage([photo, heat, shown], labels=["image", "map", "overlay"]))
"""

from __future__ import annotations

import functools
import importlib.resources
import io
import math
import os
import pathlib
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from saliency_jax.images import save_image

__all__ = [
    "DIVERGING_CMAPS",
    "colormap",
    "colormap_names",
    "colorize",
    "montage",
    "overlay",
    "save_png",
]

DIVERGING_CMAPS = frozenset({"coolwarm"})
"""Colour maps for signed maps in [-1, 1]: -1 is the first colour, 0 the middle, 1 the last."""


@functools.cache
def _luts() -> dict[str, np.ndarray]:
    data = (importlib.resources.files("saliency_jax") / "assets" / "colormaps.npz").read_bytes()
    with np.load(io.BytesIO(data)) as npz:
        luts = {name: npz[name] for name in sorted(npz.files)}
    for lut in luts.values():
        lut.setflags(write=False)
    return luts


def colormap_names() -> tuple[str, ...]:
    """The colour map names ``colorize`` accepts, sorted."""
    return tuple(_luts())


def colormap(name: str) -> np.ndarray:
    """The lookup table of a colour map: read-only ``uint8 [256,3]`` RGB.

    Raises:
      ValueError: unknown name (the message lists the valid ones).
    """
    luts = _luts()
    if not isinstance(name, str) or name not in luts:
        raise ValueError(f"unknown cmap {name!r}; valid names are {', '.join(luts)}")
    return luts[name]


def _map2d(map2d, where: str) -> np.ndarray:
    """Any real ``[H,W]`` array (NumPy or JAX) -> ``float32 [H,W]``."""
    values = np.asarray(map2d)
    if values.dtype == object or not (
        np.issubdtype(values.dtype, np.floating)
        or np.issubdtype(values.dtype, np.integer)
        or values.dtype == bool
    ):
        raise ValueError(f"{where}: expected a real-valued map, got dtype {values.dtype}")
    if values.ndim != 2 or 0 in values.shape:
        hint = "; pass one map of a batch, e.g. maps[0]" if values.ndim == 3 else ""
        raise ValueError(f"{where}: expected a non-empty map [H,W], got shape {values.shape}{hint}")
    return values.astype(np.float32)


def _rgb(image, where: str) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(
            f"{where}: expected uint8 pixels in 0..255, got dtype {array.dtype}; "
            "convert first, e.g. np.clip(np.rint(x), 0, 255).astype(np.uint8)"
        )
    if array.ndim != 3 or array.shape[-1] != 3 or 0 in array.shape:
        raise ValueError(f"{where}: expected an RGB image [H,W,3], got shape {array.shape}")
    return array


def _photo(image, where: str) -> np.ndarray:
    """``_rgb``, after a grayscale photo ``[H,W]`` / ``[H,W,1]`` (a 1-channel model's input) became gray RGB."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2 and array.dtype == np.uint8 and 0 not in array.shape:
        array = np.repeat(array[..., None], 3, axis=-1)
    return _rgb(array, where)


def _unit(values: np.ndarray, cmap: str) -> np.ndarray:
    """Map values -> positions in [0, 1] along the colour map (NaN kept)."""
    if cmap in DIVERGING_CMAPS:
        values = (values + 1.0) * 0.5
    return np.clip(values, 0.0, 1.0)


def colorize(map2d, *, cmap: str = "inferno", size: tuple[int, int] | None = None) -> np.ndarray:
    """Colours a map with a 256-entry lookup table.

    Args:
      map2d: ``[H,W]`` real map, in [0, 1]; in [-1, 1] for a diverging ``cmap``
        (``DIVERGING_CMAPS``). Values outside are clipped; NaN becomes black.
      cmap: a name from ``colormap_names()``.
      size: optional (height, width) to resize the map to first (bilinear).

    Returns:
      ``uint8 [H,W,3]`` RGB: 0 (or -1) is the table's first colour, 1 its last.

    Raises:
      ValueError: not a real ``[H,W]`` map, or an unknown ``cmap``.
    """
    lut = colormap(cmap)
    values = _map2d(map2d, "colorize")
    if size is not None:
        values = _resize_map(values, tuple(size))
    position = _unit(values, cmap)
    nan = np.isnan(position)
    index = np.rint(np.where(nan, 0.0, position) * 255.0).astype(np.intp)
    rgb = lut[index]
    rgb[nan] = 0
    return rgb


def _resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``float32 [h,w]`` -> ``float32 [H,W]`` with Pillow's bilinear filter in mode 'F'."""
    if values.shape == size:
        return values
    height, width = size
    resized = Image.fromarray(values).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


# How much `overlay` darkens the photo where a map is low, by default: smooth maps such as
# Grad-CAM stay visible on bright photos.
OVERLAY_DIM = 0.5


def overlay(image, map2d, *, cmap: str = "inferno", alpha: float = 0.5, dim: float = OVERLAY_DIM) -> np.ndarray:
    """Blends a colourised map over a photo, more opaque where the map is salient.

    The map is resized to the photo with Pillow's bilinear filter on float
    values (mode 'F'), then per pixel, with ``m = |map|`` (the map clipped to
    [0, 1], or to [-1, 1] for a diverging ``cmap``; NaN counts as 0),
    ``out = (1 - a) * photo + a * colorize(map)`` with ``a = alpha * m`` and
    ``photo = image * (1 - dim * (1 - m))``. So with ``dim=0`` a pixel with
    map value 0 shows the photo unchanged, and one with value 1 is ``alpha``
    colour map and ``1 - alpha`` photo; ``dim > 0`` darkens the photo where
    the map is low, which keeps smooth maps (Grad-CAM) readable on bright photos.

    Args:
      image: ``uint8 [H,W,3]`` RGB photo, or gray ``[H,W]`` / ``[H,W,1]``.
      map2d: ``[h,w]`` map in [0, 1] ([-1, 1] for a diverging ``cmap``), any size.
      cmap: a name from ``colormap_names()``.
      alpha: opacity of the colour map at full saliency, in [0, 1].
      dim: how much to darken the photo where the map is 0, in [0, 1] (0: unchanged).

    Returns:
      ``uint8 [H,W,3]``, the photo's size.

    Raises:
      ValueError: bad image or map shape/dtype, unknown ``cmap``, ``alpha``
        outside [0, 1].
    """
    image = _photo(image, "overlay")
    colormap(cmap)  # checks the name before any work
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay: alpha must be a number in [0, 1], got {alpha!r}")
    if isinstance(dim, bool) or not isinstance(dim, (int, float, np.number)) or not 0.0 <= dim <= 1.0:
        raise ValueError(f"overlay: dim must be a number in [0, 1], got {dim!r}")
    values = _resize_map(_map2d(map2d, "overlay"), image.shape[:2])
    colors = colorize(values, cmap=cmap).astype(np.float32)
    low = -1.0 if cmap in DIVERGING_CMAPS else 0.0
    strength = np.abs(np.nan_to_num(np.clip(values, low, 1.0), nan=0.0))[:, :, None]
    photo = image.astype(np.float32) * (1.0 - dim * (1.0 - strength))
    out = photo * (1.0 - alpha * strength) + colors * (alpha * strength)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _background(background) -> np.ndarray:
    value = np.asarray(background)
    if value.ndim == 0:
        value = np.repeat(value, 3)
    if (
        value.shape != (3,)
        or not np.issubdtype(value.dtype, np.integer)
        or (value < 0).any()
        or (value > 255).any()
    ):
        raise ValueError(
            f"montage: background must be an int or (r, g, b) in 0..255, got {background!r}"
        )
    return value.astype(np.uint8)


def _fit(text: str, draw: ImageDraw.ImageDraw, font, width: int) -> str:
    """Shortens ``text`` with '..' until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "..", font=font) > width:
        text = text[:-1]
    return text + ".." if text else ""


def montage(
    images: Sequence[np.ndarray],
    *,
    cols: int | None = None,
    pad: int = 4,
    background: int | tuple[int, int, int] = 255,
    labels: Sequence[str] | None = None,
) -> np.ndarray:
    """Lays images out on a grid, row by row, optionally with a caption under each.

    Every cell is as large as the largest image; smaller images sit centred in
    their cell. ``pad`` pixels separate cells and surround the grid. With
    ``labels``, a strip one text line high (Pillow's default font) plus ``pad``
    is added under each row of cells and the caption is centred in it (shortened
    with ".." if wider than the cell).

    Output size, with ``n`` images, ``rows = ceil(n / cols)``, cells ``h x w``
    and ``t`` the text strip height (0 without labels)::

        height = rows * (h + t) + (rows + 1) * pad
        width  = cols * w + (cols + 1) * pad

    Args:
      images: ``uint8 [H,W,3]`` RGB images (``[H,W]`` grayscale also accepted),
        sizes may differ.
      cols: images per row; default ``ceil(sqrt(n))``, at most ``n``.
      pad: gap in pixels, ``>= 0``.
      background: fill value, an int or ``(r, g, b)`` in 0..255. Captions are
        black on a light background, white on a dark one.
      labels: one caption per image, or ``None``.

    Returns:
      ``uint8 [height, width, 3]``.

    Raises:
      ValueError: no images, a bad image, ``labels`` of the wrong length, or a
        bad ``cols``/``pad``/``background``.
    """
    tiles = _tiles(images)
    cols = _check_layout(len(tiles), cols, pad, labels)
    fill = _background(background)
    font = ImageFont.load_default() if labels is not None else None
    grid = _Grid.around(tiles, cols, pad, font)
    canvas = np.empty((grid.height, grid.width, 3), np.uint8)
    canvas[:] = fill
    for i, tile in enumerate(tiles):
        y, x = grid.cell(i)
        y += (grid.cell_h - tile.shape[0]) // 2
        x += (grid.cell_w - tile.shape[1]) // 2
        canvas[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    if labels is None:
        return canvas
    return _caption(canvas, labels, grid, font, ink=(0, 0, 0) if fill.astype(int).mean() >= 128 else (255,) * 3)


def _tiles(images) -> list[np.ndarray]:
    """``montage``'s images as ``uint8 [H,W,3]`` tiles (grayscale repeated), each checked."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    if not isinstance(images, Sequence) or isinstance(images, (str, bytes)) or not images:
        raise ValueError("montage: expected a non-empty list of uint8 [H,W,3] images")
    tiles = []
    for i, image in enumerate(images):
        tiles.append(_photo(image, f"montage: images[{i}]"))
    return tiles


def _check_layout(n: int, cols, pad, labels) -> int:
    """The number of columns (default ``ceil(sqrt(n))``, at most ``n``); ValueError for a bad layout."""
    if cols is None:
        cols = math.ceil(math.sqrt(n))
    if isinstance(cols, bool) or not isinstance(cols, (int, np.integer)) or cols < 1:
        raise ValueError(f"montage: cols must be a positive int or None, got {cols!r}")
    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
        raise ValueError(f"montage: pad must be an int >= 0, got {pad!r}")
    if labels is not None and (isinstance(labels, str) or len(labels) != n):
        got = "a string" if isinstance(labels, str) else f"{len(labels)} labels"
        raise ValueError(f"montage: expected one label per image ({n}), got {got}")
    return min(int(cols), n)


class _Grid(NamedTuple):
    """``montage``'s layout: ``rows x cols`` cells of ``cell_h x cell_w``, a caption strip under
    each row (``strip`` pixels, 0 without labels), ``pad`` between and around the cells."""

    rows: int
    cols: int
    cell_h: int
    cell_w: int
    strip: int
    pad: int

    @classmethod
    def around(cls, tiles, cols: int, pad: int, font) -> "_Grid":
        """Cells as large as the largest tile; a strip of one text line of ``font`` (if any) plus ``pad``."""
        strip = 0
        if font is not None:
            strip = int(font.getbbox("Ag")[3]) + pad  # from the baseline origin, so descenders fit
        return cls(math.ceil(len(tiles) / cols), cols, max(t.shape[0] for t in tiles),
                   max(t.shape[1] for t in tiles), strip, pad)

    @property
    def height(self) -> int:
        return self.rows * (self.cell_h + self.strip) + (self.rows + 1) * self.pad

    @property
    def width(self) -> int:
        return self.cols * self.cell_w + (self.cols + 1) * self.pad

    def cell(self, i: int) -> tuple[int, int]:
        """(y, x) of the top-left corner of cell ``i`` (row by row)."""
        row, col = divmod(i, self.cols)
        return self.pad + row * (self.cell_h + self.strip + self.pad), self.pad + col * (self.cell_w + self.pad)


def _caption(canvas: np.ndarray, labels, grid: _Grid, font, *, ink) -> np.ndarray:
    """``canvas`` with each label centred in the strip under its cell (shortened to fit)."""
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    for i, label in enumerate(labels):
        text = _fit(str(label), draw, font, grid.cell_w)
        y0, x0 = grid.cell(i)
        x = x0 + (grid.cell_w - draw.textlength(text, font=font)) / 2
        draw.text((x, y0 + grid.cell_h + grid.pad // 2), text, fill=ink, font=font)
    return np.asarray(picture).copy()


def save_png(path: str | os.PathLike, array, *, palette: bool = False) -> pathlib.Path:
    """Writes ``uint8 [H,W,3]`` (or ``[H,W]``) as a PNG; parent folders are created.

    A thin wrapper over ``saliency_jax.images.save_image`` that insists on ``.png``
    (lossless, so maps are not blurred by JPEG). ``palette=True`` stores a
    256-colour median-cut palette instead (3-4x smaller for figures of noisy maps).

    Raises:
      ValueError: a suffix other than ``.png``, or what ``save_image`` rejects.
    """
    path = pathlib.Path(os.fspath(path))
    if path.suffix.lower() != ".png":
        raise ValueError(f"save_png: expected a path ending in .png, got {str(path)!r}")
    if not palette:
        return save_image(path, np.asarray(array))
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(_rgb(array, "save_png"))
    image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    return path
