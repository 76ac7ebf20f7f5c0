"""`top_activations`: stream a dataset through a model and keep each channel's k strongest activations.

    result = top_activations(model, "photos/", "block5", [0, 7, 12], k=9)      # a folder, glob or tfds:...
    result = top_activations(model, None, "block1", [3], k=9, per_image=3)     # the 4 bundled photos
    result.values[c], result.image_ids[c], result.positions[c]                 # channel result.channels[c]

Images are decoded in threads (`saliency_jax.data`), resized to the model's input
size and sent in padded batches of one static size; a broken image is listed in
`result.errors` and skipped. Only the [C,k] state stays on the device; the
winning images are re-read afterwards (`load_examples`) for the figure.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np

from saliency_jax import images as _images
from saliency_jax.batching import static_batch_size
from saliency_jax.data import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, NO_LABEL, Example, decode_stream, open_source
from saliency_jax.features.topk import check_candidates, init_topk, layer_shape, update_topk
from saliency_jax.models.model import Model
from saliency_jax.progress import reporter


@dataclasses.dataclass(frozen=True)
class TopActivations:
    """Each channel's k strongest activations over a source, best first.

    Attributes:
      layer: the layer name.
      channels: the C channels, in the order of the rows below.
      values: float32 [C,k], descending.
      image_ids: int [C,k], the image's position in the source (or index in the list).
      positions: int [C,k,2], (y, x) in the layer's grid.
      grid: (h, w) of the layer at the model's input size.
      per_image: positions each image could contribute per channel.
      num_images: images that went through the model (broken ones excluded).
      errors: (image id, name, one-line reason) of each skipped image.
      source: what the images came from, to re-read the winners (`load_examples`).
    """

    layer: str
    channels: tuple[int, ...]
    values: np.ndarray
    image_ids: np.ndarray
    positions: np.ndarray
    grid: tuple[int, int]
    per_image: int
    num_images: int
    errors: tuple[tuple[int, str, str], ...]
    source: Any = dataclasses.field(repr=False, compare=False)

    @property
    def k(self) -> int:
        return self.values.shape[1]

    def strongest(self, n: int) -> list[int]:
        """The n channels with the highest top activation, in channel order."""
        order = np.argsort(-self.values[:, 0], kind="stable")[:n]
        return sorted(self.channels[i] for i in order)

    def select(self, channels: Sequence[int]) -> "TopActivations":
        """The same result restricted to some of its channels (in the order given)."""
        rows = [self.channels.index(int(c)) if int(c) in self.channels else -1 for c in channels]
        if -1 in rows:
            missing = [int(c) for c, r in zip(channels, rows) if r < 0]
            raise ValueError(f"channels {missing} are not in this result ({', '.join(map(str, self.channels))})")
        return dataclasses.replace(self, channels=tuple(int(c) for c in channels), values=self.values[rows],
                                   image_ids=self.image_ids[rows], positions=self.positions[rows])


def resolve_source(source_or_images=None):
    """A `saliency_jax.data` Source, or a list of images: spec strings are opened, None is the bundled photos."""
    if source_or_images is None:
        folder = next(iter(_images.bundled_images().values())).parent
        return open_source(str(folder), labels="none")
    if isinstance(source_or_images, str):
        return open_source(source_or_images)
    if hasattr(source_or_images, "records"):
        return source_or_images
    if isinstance(source_or_images, np.ndarray) and source_or_images.ndim in (2, 3):
        return [source_or_images]  # one image
    images = list(source_or_images)
    if not images:
        raise ValueError("no images given (an empty list)")
    return images


def _num_images(source) -> int:
    return source.num_examples if hasattr(source, "records") else len(source)


def _array_example(i: int, image, size) -> Example:
    try:
        pixels = _images.to_uint8_batch(image, size)[0]
    except (ValueError, TypeError) as err:
        return Example(i, f"image {i}", "", NO_LABEL, None, " ".join(str(err).split()))
    return Example(i, f"image {i}", "", NO_LABEL, pixels)


def stream_examples(source, size: tuple[int, int], ids: Sequence[int] | None = None, *,
                    workers: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                    max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[Example]:
    """Examples (uint8 [h,w,3] at `size`, or an error) of a resolved source, all or those at `ids`, in order.

    Files over `max_bytes` or images over `max_pixels` become errors, never read or decoded.
    """
    if not hasattr(source, "records"):
        for i in range(len(source)) if ids is None else ids:
            yield _array_example(i, source[i], size)
        return
    if ids is None:
        records = source.records()
    else:  # contiguous runs, so a TFDS source is read run by run rather than image by image
        runs = []
        for i in sorted(set(ids)):
            if runs and runs[-1][1] == i:
                runs[-1][1] = i + 1
            else:
                runs.append([i, i + 1])
        records = (r for start, stop in runs for r in source.records(start, stop))
    yield from decode_stream(records, size, workers=workers, max_pixels=max_pixels, max_bytes=max_bytes)


def load_examples(source, ids: Sequence[int], size: tuple[int, int]) -> dict[int, Example]:
    """{id: Example} of the images at `ids` (e.g. a result's winners), re-read and resized to `size`.

    Raises:
      ValueError: an image that decoded during the scan no longer does (the source changed).
    """
    found = {}
    for ex in stream_examples(resolve_source(source), size, ids):
        if ex.error is not None:
            raise ValueError(f"image {ex.id!r} cannot be re-read: {ex.error}")
        found[ex.position] = ex
    missing = sorted(set(ids) - set(found))
    if missing:
        raise ValueError(f"image ids {missing[:5]} are not in the source (it changed since the scan?)")
    return found


def top_activations(
    model: Model,
    source_or_images,
    layer: str,
    channels: Sequence[int],
    *,
    k: int = 9,
    per_image: int = 1,
    min_distance: int = 0,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool | Callable[[int], None] = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> TopActivations:
    """The k strongest activations of each channel over a dataset, streamed (the Zeiler & Fergus search).

    Args:
      model: a `Model`.
      source_or_images: a source spec (folder, glob, ``tfds:NAME:SPLIT``,
        ``imagefolder:ROOT:SPLIT``), an opened `saliency_jax.data` source, a list
        (or array) of uint8 images, or None for the bundled photos.
      layer: a spatial layer of the model (see `model.layers`).
      channels: channel indices of that layer.
      k: activations kept per channel.
      per_image: positions one image may contribute per channel (1: k different
        images, the classic figure; raise it when the source has fewer than k images).
      min_distance: with per_image > 1, an image's picks lie more than this many
        cells apart in the layer's grid (Chebyshev distance; 0: any distinct positions).
      batch_size: images per step (the last batch is padded; one compilation).
      workers: decoding threads (default: one per core).
      progress: True for a tqdm bar on stderr, False for none, or a callable
        given the number of images consumed.
      max_pixels, max_bytes: larger images or files are listed as errors, never decoded or read.

    Returns:
      A `TopActivations`.

    Raises:
      ValueError: unknown layer, a channel out of range, k larger than the
        number of candidates, an empty source (`SourceError`).
    """
    h, w, _ = layer_shape(model, layer, channels)
    channels = tuple(int(c) for c in np.atleast_1d(np.asarray(channels)))
    source = resolve_source(source_or_images)
    total = _num_images(source)
    check_candidates(k, total, per_image, (h, w))
    if min_distance < 0:
        raise ValueError(f"min_distance must be >= 0, got {min_distance}")
    step = dict(layer=layer, per_image=per_image, min_distance=min_distance)
    limits = dict(workers=workers, max_pixels=max_pixels, max_bytes=max_bytes)
    with reporter(progress, total, desc="top activations") as report:
        state, used, errors = _scan(model, source, channels, k, static_batch_size(total, batch_size), step,
                                    report=report, limits=limits)
    if used * per_image < k or not np.all(np.isfinite(np.asarray(state.values))):
        skipped = f" ({len(errors)} of {total} images could not be read)" if errors else ""
        raise ValueError(f"k={k} but only {used} usable images{skipped} x per_image={per_image} = "
                         f"{used * per_image} candidates (fewer with min_distance={min_distance}); "
                         "lower k or raise per_image")
    values, image_ids, positions = (np.asarray(a) for a in state)
    return TopActivations(layer, channels, values, image_ids.astype(np.int64), positions.astype(np.int64),
                          (h, w), per_image, used, tuple(errors), source)


def _scan(model, source, channels: tuple[int, ...], k: int, size: int, step: dict, *, report, limits: dict):
    """Streams `source` through `update_topk` in padded batches of `size` images.

    One batch stays in flight: the host decodes the next while the device
    works, and memory stays bounded. Returns (final `TopK` state, images used,
    [(image id, name, reason)] of the broken ones).
    """
    state = init_topk(len(channels), k)
    channel_ids = np.asarray(channels, np.int32)
    errors, used, previous = [], 0, None
    examples = stream_examples(source, model.input_size, **limits)
    for batch in _usable_batches(examples, size, errors, report):
        pixels, ids, valid = _padded(batch, size)
        state = update_topk(state, model, model.preprocess(pixels), ids, valid, channel_ids, **step)
        if previous is not None:
            jax.block_until_ready(previous)
        previous = state
        used += len(batch)
        report(len(batch))
    return state, used, errors


def _usable_batches(examples: Iterator[Example], size: int, errors: list, report) -> Iterator[list[Example]]:
    """Lists of up to `size` decoded examples; each broken one goes to `errors` (and `report(1)`)."""
    batch = []
    for ex in examples:
        if ex.error is not None:
            errors.append((ex.position, ex.id, ex.error))
            report(1)
            continue
        batch.append(ex)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _padded(batch: list[Example], size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 pixels [size,h,w,3] (zeros after the batch), int32 image ids [size], bool valid [size]."""
    fill = size - len(batch)
    pixels = np.stack([ex.image for ex in batch] + [np.zeros_like(batch[0].image)] * fill)
    ids = np.asarray([ex.position for ex in batch] + [0] * fill, np.int32)
    return pixels, ids, np.arange(size) < len(batch)


def result_table(result: TopActivations, windows: np.ndarray, names: dict[int, str],
                 paths: dict[int, str]) -> list[dict]:
    """JSON-ready rows per channel: rank, value, image id/name/path, position, receptive-field window."""
    rows = []
    for c, channel in enumerate(result.channels):
        top = []
        for r in range(result.k):
            i = int(result.image_ids[c, r])
            top.append({"rank": r + 1, "value": float(result.values[c, r]), "image_id": i,
                        "image": names.get(i, ""), "path": paths.get(i, ""),
                        "position": [int(v) for v in result.positions[c, r]],
                        "window": [int(v) for v in windows[c, r]]})
        rows.append({"channel": channel, "top": top})
    return rows
