"""`run_batch_job`: saliency maps for a whole source, streamed, sharded, resumable, data parallel.

The pipeline has three stages that overlap:

  decode threads (Pillow)  ->  compiled step on the device mesh  ->  writer thread (atomic NPZ shards)

while the devices compute batch i (asynchronous dispatch), the main thread
assembles batch i+1 from images the decode threads have already prepared, and
the previous shard is being written. Source positions are cut into shards of
``shard_size``; batches never straddle a shard, so a resumed run computes every
image in exactly the batch an uninterrupted run would have.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import math
import pathlib
import sys
import time
from typing import Callable

import jax
import numpy as np

from saliency_jax.data import DEFAULT_MAX_PIXELS, NO_LABEL, Example, Source, decode_stream, default_workers
from saliency_jax.methods import Method, as_method, describe
from saliency_jax.jobs.step import fetch, make_step
from saliency_jax.jobs.store import JobError, JobStore
from saliency_jax.sharding import data_mesh, host_slice

FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class JobSummary:
    """What a run did. ``images``/``errors`` count the whole job folder; ``new_*`` this run only."""

    out_dir: str
    total: int             # source positions this host is responsible for
    images: int            # images with maps in the folder
    errors: int            # images listed in errors.txt
    resumed_at: int        # positions already done when this run started
    new_images: int
    seconds: float
    devices: int

    @property
    def images_per_second(self) -> float:
        return self.new_images / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        resumed = f", resumed after {self.resumed_at}" if self.resumed_at else ""
        return (f"{self.images} images -> maps, {self.errors} errors (errors.txt) in {self.out_dir}/; "
                f"this run: {self.new_images} images in {self.seconds:.1f} s = {self.images_per_second:.1f} "
                f"images/s on {self.devices} device(s){resumed}")


def _targets_spec(targets, source: Source, num_classes: int):
    if targets in ("top1", "label"):
        if targets == "label" and source.label_names is None:
            raise ValueError(f"targets='label' needs a source with labels; {source.spec!r} has none "
                             "(a folder needs the ROOT/<class>/<image> layout)")
        return targets
    try:
        value = int(targets)
    except (TypeError, ValueError):
        raise ValueError(f"targets must be 'top1', 'label' or a class index, got {targets!r}") from None
    if not 0 <= value < num_classes:
        raise ValueError(f"target class must lie in [0, {num_classes}), got {value}")
    return value


def _classify(ex: Example, targets, num_classes: int):
    """(example, target) for a usable image, or (example with its error, None) — a bad label is an error too."""
    if ex.error is not None:
        return ex, None
    if targets == "label":
        if ex.label == NO_LABEL or not 0 <= ex.label < num_classes:
            return dataclasses.replace(ex, image=None, error=f"label {ex.label} is not a class of the model "
                                                             f"(0..{num_classes - 1})"), None
        return ex, ex.label
    return ex, (-1 if targets == "top1" else targets)


def _strings(values) -> np.ndarray:
    return np.array(list(values), dtype=str)


def run_batch_job(
    source: Source,
    model,
    out_dir,
    *,
    method: str | Method = "vanilla",
    targets="top1",
    batch_size: int = 32,
    shard_size: int = 1024,
    options: dict | None = None,
    seed: int = 0,
    float16: bool = False,
    save_png: bool = False,
    cmap: str = "inferno",
    mesh=None,
    process_index: int | None = None,
    process_count: int | None = None,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool | Callable[[int], None] = True,
) -> JobSummary:
    """Computes saliency maps for every image of `source` into `out_dir`, resumably.

    Args:
      source: a `saliency_jax.data` source (`open_source(...)`).
      model: a `Model` (its input size and preprocessing are used).
      out_dir: output folder (see `saliency_jax.jobs.store`); with several
        processes each writes ``out_dir/process-IIIII-of-NNNNN``.
      method: a method value, or an `available_methods()` name (with `options`).
      targets: "top1", "label" (the source's labels), or one class index for all.
      batch_size: images per step, rounded up to a multiple of the device count.
      shard_size: source positions per output shard (the resume granularity).
      options: with a method name, its options (num_samples, num_steps, layer, ...).
      seed: seeds `jax.random.key` for the noise-based methods.
      float16: store maps as float16 (half the disk).
      save_png: also write an overlay PNG per image.
      mesh: device mesh (default `data_mesh()`: all local devices).
      process_index, process_count: this host's share of the source (default
        `jax.process_index()` / `jax.process_count()`).
      workers: decoding threads.
      max_pixels: images larger than this are listed as errors, never decoded.
      progress: True for a tqdm bar on stderr, False for none, or a callable
        given the number of source positions consumed.

    Returns:
      A `JobSummary`.

    Raises:
      JobError: the output folder is unwritable, full, or holds a different job.
      ValueError: a bad method, option or target.
    """
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"batch_size and shard_size must be >= 1, got {batch_size}, {shard_size}")
    targets = _targets_spec(targets, source, model.num_classes)
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    start, stop = host_slice(source.num_examples, pi, pc)
    out = pathlib.Path(out_dir) if pc == 1 else pathlib.Path(out_dir) / f"process-{pi:05d}-of-{pc:05d}"
    method = as_method(method, **dict(options or {}))
    mesh = data_mesh() if mesh is None else mesh
    maps_dtype = np.float16 if float16 else np.float32
    step, batch = make_step(model, method, batch_size=batch_size, key=jax.random.key(seed), mesh=mesh,
                            dtype=maps_dtype)
    config = {
        "format": FORMAT_VERSION, "source": source.spec, "source_fingerprint": source.fingerprint,
        "source_size": source.num_examples, "slice": [start, stop], "process": [pi, pc],
        "model": model.name, "input_size": list(model.input_size), **describe(method), "seed": seed, "targets": targets,
        "shard_size": shard_size, "maps_dtype": "float16" if float16 else "float32",
        "label_names": list(source.label_names) if source.label_names else None,
    }
    store = JobStore(out, config)
    done = store.completed_shards()
    num_shards = math.ceil((stop - start) / shard_size)
    done = min(done, num_shards)
    images, errors = store.rebuild_tables(done)
    resumed_at = min(done * shard_size, stop - start)

    bar = None
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=stop - start, initial=resumed_at, unit="img", desc="batch", file=sys.stderr,
                   dynamic_ncols=True, smoothing=0.1)
        report = bar.update
    elif callable(progress):
        report = progress
    else:
        def report(n):
            return None

    workers = workers or default_workers()
    t0 = time.perf_counter()
    new_images = 0
    stream = decode_stream(source.records(start + resumed_at, stop), model.input_size, workers=workers,
                           window=max(8 * workers, 2 * batch), max_pixels=max_pixels)
    writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="shard-writer")
    pending_write = None
    try:
        for k in range(done, num_shards):
            lo = start + k * shard_size
            count = min(shard_size, stop - lo)
            good, bad = [], []
            batcher = _Batcher(step, batch, report, model.input_size, maps_dtype)
            for _ in range(count):  # batches go to the devices as soon as they fill
                ex = next(stream, None)
                if ex is None:
                    raise JobError(f"{source.spec!r} ended early: expected {stop - start} images, the source "
                                   "changed while the job ran")
                ex, target = _classify(ex, targets, model.num_classes)
                if target is None:
                    bad.append(ex)
                    report(1)
                else:
                    good.append((ex, target))
                    batcher.add(ex.image, target)
            outputs = batcher.finish()
            arrays = _shard_arrays(lo, lo + count, good, bad, outputs)
            overlays = _overlays(good, outputs.maps, cmap) if save_png else ()
            if pending_write is not None:
                pending_write.result()  # one shard in flight at most; surfaces write errors
            pending_write = writer.submit(store.commit, k, arrays, overlays)
            images += len(good)
            errors += len(bad)
            new_images += len(good)
        if pending_write is not None:
            pending_write.result()
    finally:
        stream.close()
        writer.shutdown(wait=True)
        if bar is not None:
            bar.close()
    return JobSummary(str(out), stop - start, images, errors, resumed_at, new_images,
                      time.perf_counter() - t0, mesh.devices.size)


class _Outputs:
    """A shard's step outputs, concatenated (empty arrays when the shard had no usable image)."""

    def __init__(self, parts, size: tuple[int, int], dtype):
        def cat(i, dtype):
            return np.concatenate([p[i] for p in parts]) if parts else np.zeros((0,), dtype)

        self.maps = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, *size), dtype)
        self.target, self.predicted = cat(1, np.int32), cat(2, np.int32)
        self.score, self.target_score = cat(3, np.float32), cat(4, np.float32)


class _Batcher:
    """Feeds fixed-size batches to the step, one batch in flight ahead; the last one padded."""

    def __init__(self, step, batch: int, report, size: tuple[int, int], dtype):
        self.step, self.batch, self.report, self.size, self.dtype = step, batch, report, size, dtype
        self.pixels, self.targets, self.parts, self.inflight = [], [], [], collections.deque()

    def add(self, image: np.ndarray, target: int) -> None:
        self.pixels.append(image)
        self.targets.append(target)
        if len(self.pixels) == self.batch:
            self._dispatch()

    def _dispatch(self) -> None:
        n, fill = len(self.pixels), self.batch - len(self.pixels)
        # Pad by repeating the last image: valid input; the padding's outputs are dropped.
        pixels = np.stack(self.pixels + self.pixels[-1:] * fill)
        targets = np.array(self.targets + self.targets[-1:] * fill, np.int32)
        self.pixels, self.targets = [], []
        self.inflight.append((n, self.step(pixels, targets)))
        if len(self.inflight) > 1:
            self._collect()

    def _collect(self) -> None:
        n, result = self.inflight.popleft()
        self.parts.append(tuple(a[:n] for a in fetch(result)))
        self.report(n)

    def finish(self) -> "_Outputs":
        if self.pixels:
            self._dispatch()
        while self.inflight:
            self._collect()
        return _Outputs(self.parts, self.size, self.dtype)


def _shard_arrays(lo: int, hi: int, good, bad, outputs: _Outputs) -> dict:
    return {
        "start": np.int64(lo), "stop": np.int64(hi),
        "position": np.array([ex.position for ex, _ in good], np.int64),
        "id": _strings(ex.id for ex, _ in good), "path": _strings(ex.path for ex, _ in good),
        "label": np.array([ex.label for ex, _ in good], np.int32),
        "target": outputs.target, "predicted": outputs.predicted,
        "score": outputs.score, "target_score": outputs.target_score, "maps": outputs.maps,
        "error_position": np.array([ex.position for ex in bad], np.int64),
        "error_id": _strings(ex.id for ex in bad), "error_path": _strings(ex.path for ex in bad),
        "error_reason": _strings(ex.error for ex in bad),
    }


def _overlays(good, maps, cmap: str) -> list:
    from saliency_jax.render import overlay

    return [(ex.id, overlay(ex.image, maps[i].astype(np.float32), cmap=cmap)) for i, (ex, _) in enumerate(good)]
