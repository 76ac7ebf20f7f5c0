"""`run_batch_job`: saliency maps for a whole source, streamed, sharded, resumable, data parallel.

The pipeline has three stages that overlap:

  decode threads (Pillow)  ->  compiled step on the device mesh  ->  writer thread (atomic NPZ shards)

while the devices compute batch i (asynchronous dispatch), the main thread
assembles batch i+1 from images the decode threads have already prepared, and
the previous shard is being written. Source positions are cut into shards of
``shard_size``; batches never straddle a shard, so a resumed run computes every
image in exactly the batch an uninterrupted run would have.

A resumed run keeps a shard only if it is sound (see `JobStore.scan`) and every
image in it is the version that was computed: each image's stamp (size and
mtime, or with ``fingerprint="content"`` a sha256 of its bytes) is compared
with the file now, and a shard holding a changed image is computed again (and
logged, one line), never kept with the old map. A damaged shard stops the run
with one line naming it, unless ``recompute_damaged``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import logging
import pathlib
import time
from typing import Callable

import jax
import numpy as np

from saliency_jax.data import (DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, FINGERPRINTS, NO_LABEL, Example, Source,
                               current_stamps, decode_stream, default_workers)
from saliency_jax.jobs.step import fetch, make_step
from saliency_jax.methods import Method, as_method, describe
from saliency_jax.jobs.store import JobError, JobStore, shard_name
from saliency_jax.progress import reporter
from saliency_jax.sharding import data_mesh, host_slice

FORMAT_VERSION = 2  # 2: per-image stamps in the shards, the fingerprint mode in job.json
log = logging.getLogger(__name__)


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
    notes: tuple[str, ...] = ()  # shards computed again (damaged, changed images), a stale lock taken over

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


@dataclasses.dataclass(frozen=True)
class _Work:
    """What turns a shard's decoded examples into its arrays."""

    step: Callable
    batch: int
    size: tuple[int, int]
    maps_dtype: type
    targets: object
    num_classes: int
    cmap: str | None  # overlays' colormap; None: no overlays


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
    max_bytes: int = DEFAULT_MAX_BYTES,
    fingerprint: str = "stat",
    recompute_damaged: bool = False,
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
      max_bytes: files larger than this, and anything but a regular file (a
        FIFO, a device, a socket), are listed as errors, never read.
      fingerprint: how a resumed run tells that an image changed since its map
        was computed: ``"stat"`` (size and mtime, nothing read) or ``"content"``
        (a sha256 of every finished image is read again on resume). Shards holding
        a changed image are computed again.
      recompute_damaged: compute again a shard that is unreadable or does not
        hold what the job writes, instead of stopping with a JobError naming it.
      progress: True for a tqdm bar on stderr, False for none, or a callable
        given the number of source positions consumed.

    Returns:
      A `JobSummary`; its ``notes`` say which shards were computed again and why
      (also logged as warnings, one line each).

    Raises:
      JobError: the output folder is unwritable, full, in use by another run,
        holds a different job or a damaged shard.
      ValueError: a bad method, option, target or fingerprint.
    """
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"batch_size and shard_size must be >= 1, got {batch_size}, {shard_size}")
    if fingerprint not in FINGERPRINTS:
        raise ValueError(f"fingerprint must be one of {', '.join(FINGERPRINTS)}, got {fingerprint!r}")
    targets = _targets_spec(targets, source, model.num_classes)
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    start, stop = host_slice(source.num_examples, pi, pc)
    out = pathlib.Path(out_dir) if pc == 1 else pathlib.Path(out_dir) / f"process-{pi:05d}-of-{pc:05d}"
    method = as_method(method, **dict(options or {}))
    mesh = data_mesh() if mesh is None else mesh
    maps_dtype = np.float16 if float16 else np.float32
    config = _config(source, model, method, (start, stop), (pi, pc), seed=seed, targets=targets,
                     shard_size=shard_size, maps_dtype=maps_dtype, fingerprint=fingerprint)
    workers = workers or default_workers()
    t0 = time.perf_counter()
    with JobStore(out, config) as store:
        tables, notes = _resume(store, source, fingerprint=fingerprint, max_bytes=max_bytes,
                                recompute_damaged=recompute_damaged, workers=workers)
        kept = dict(tables)
        step, batch = make_step(model, method, batch_size=batch_size, key=jax.random.key(seed), mesh=mesh,
                                dtype=maps_dtype)
        work = _Work(step, batch, model.input_size, maps_dtype, targets, model.num_classes,
                     cmap if save_png else None)
        todo = [k for k in range(store.num_shards) if k not in tables]
        stream = decode_stream(_records(source, store, todo), model.input_size, workers=workers,
                               window=max(8 * workers, 2 * batch), max_pixels=max_pixels, max_bytes=max_bytes,
                               fingerprint=fingerprint)
        with reporter(progress, stop - start, desc="batch", initial=_positions(kept)) as report:
            _compute(store, stream, todo, work, report, tables)
        if todo and kept and todo[0] < max(kept):  # rows were appended out of order: rewrite them in order
            store.rebuild_tables(tables)
    images, errors = _count(tables, "position"), _count(tables, "error_position")
    return JobSummary(str(out), stop - start, images, errors, _positions(kept), images - _count(kept, "position"),
                      time.perf_counter() - t0, mesh.devices.size, tuple(notes))


def _config(source: Source, model, method: Method, host_range, process, *, seed, targets,
            shard_size, maps_dtype, fingerprint) -> dict:
    """job.json: everything a resumed run must share with the run that started the folder."""
    return {
        "format": FORMAT_VERSION, "source": source.spec, "source_fingerprint": source.fingerprint,
        "source_size": source.num_examples, "slice": list(host_range), "process": list(process),
        "model": model.name, "input_size": list(model.input_size), **describe(method), "seed": seed,
        "targets": targets,
        "shard_size": shard_size, "maps_dtype": np.dtype(maps_dtype).name, "fingerprint": fingerprint,
        "label_names": list(source.label_names) if source.label_names else None,
    }


def _count(tables: dict, key: str) -> int:
    return sum(len(t[key]) for t in tables.values())


def _positions(tables: dict) -> int:
    return _count(tables, "position") + _count(tables, "error_position")


def _resume(store: JobStore, source: Source, *, fingerprint: str, max_bytes: int, recompute_damaged: bool,
            workers: int) -> tuple[dict[int, dict], list[str]]:
    """The shards to keep ({k: arrays without maps}), after dropping damaged and changed ones; and notes."""
    sound, damaged = store.scan()
    if damaged and not recompute_damaged:
        k = min(damaged)
        more = f" (and {len(damaged) - 1} more damaged shards)" if len(damaged) > 1 else ""
        raise JobError(f"{str(store.shards / shard_name(k))!r} is damaged: {damaged[k]}{more}; rerun with "
                       "--recompute-damaged (recompute_damaged=True) to compute it again")
    notes = []
    if store.stale_lock:
        notes.append(f"took over the lock of a run that ended without releasing it ({store.stale_lock})")
    notes += [f"recomputing damaged {shard_name(k)}: {reason}" for k, reason in sorted(damaged.items())]
    for k, names in sorted(_changed(store, source, sound, fingerprint, max_bytes, workers).items()):
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        notes.append(f"recomputing {shard_name(k)}: {len(names)} image(s) changed since their maps were "
                     f"computed ({fingerprint}): {shown}")
        del sound[k]
    for k in set(range(store.num_shards)) - set(sound):
        store.discard(k)
    for note in notes:
        log.warning("%s: %s", store.out, note)
    store.rebuild_tables(sound)
    return sound, notes


def _changed(store: JobStore, source: Source, sound: dict, fingerprint: str, max_bytes: int,
             workers: int) -> dict[int, list[str]]:
    """{k: ids} of the sound shards' images whose stamp differs from the file now."""
    if not sound or (fingerprint == "stat" and not getattr(source, "file_stamps", False)):
        return {}
    stored = {}
    for k, t in sound.items():
        for prefix in ("", "error_"):
            for position, stamp, name in zip(t[prefix + "position"], t[prefix + "stamp"], t[prefix + "id"]):
                stored[int(position)] = (k, str(stamp), str(name))
    changed: dict[int, list[str]] = {}
    now = current_stamps(_records(source, store, sorted(sound)), fingerprint, max_bytes=max_bytes, workers=workers)
    for position, stamp in now:
        k, then, name = stored[position]
        if stamp != then:
            changed.setdefault(k, []).append(name)
    return changed


def _records(source: Source, store: JobStore, shards: list[int]):
    """The source's records of `shards`, read in runs of consecutive shards; a source that ends early stops the job."""
    for _, run in itertools.groupby(enumerate(shards), key=lambda item: item[1] - item[0]):
        run = [k for _, k in run]
        lo, hi = store.shard_range(run[0])[0], store.shard_range(run[-1])[1]
        count = 0
        for record in source.records(lo, hi):
            count += 1
            yield record
        if count != hi - lo:
            raise JobError(f"{source.spec!r} ended early: expected positions up to {hi}, got {lo + count}; "
                           "the source changed while the job ran")


def _compute(store: JobStore, stream, todo: list[int], work: _Work, report, tables: dict) -> None:
    """Computes the shards `todo` from `stream`, writing each while the next is computed; adds them to `tables`."""
    writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="shard-writer")
    pending = None
    try:
        for k in todo:
            arrays, overlays = _shard(stream, *store.shard_range(k), work, report)
            if pending is not None:
                pending.result()  # one shard in flight at most; surfaces write errors
            pending = writer.submit(store.commit, k, arrays, overlays)
            tables[k] = {key: value for key, value in arrays.items() if key != "maps"}
        if pending is not None:
            pending.result()
    finally:
        stream.close()
        writer.shutdown(wait=True)


def _shard(stream, lo: int, hi: int, work: _Work, report) -> tuple[dict, list]:
    """Shard [lo, hi)'s arrays and overlays; batches go to the devices as soon as they fill."""
    good, bad = [], []
    batcher = _Batcher(work.step, work.batch, report, work.size, work.maps_dtype)
    for _ in range(lo, hi):
        ex, target = _classify(next(stream), work.targets, work.num_classes)
        if target is None:
            bad.append(ex)
            report(1)
        else:
            good.append((ex, target))
            batcher.add(ex.image, target)
    outputs = batcher.finish()
    overlays = _overlays(good, outputs.maps, work.cmap) if work.cmap else []
    return _shard_arrays(lo, hi, good, bad, outputs), overlays


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
        "stamp": _strings(ex.stamp for ex, _ in good),
        "label": np.array([ex.label for ex, _ in good], np.int32),
        "target": outputs.target, "predicted": outputs.predicted,
        "score": outputs.score, "target_score": outputs.target_score, "maps": outputs.maps,
        "error_position": np.array([ex.position for ex in bad], np.int64),
        "error_id": _strings(ex.id for ex in bad), "error_path": _strings(ex.path for ex in bad),
        "error_reason": _strings(ex.error for ex in bad), "error_stamp": _strings(ex.stamp for ex in bad),
    }


def _overlays(good, maps, cmap: str) -> list:
    from saliency_jax.render import overlay

    return [(ex.id, overlay(ex.image, maps[i].astype(np.float32), cmap=cmap)) for i, (ex, _) in enumerate(good)]
