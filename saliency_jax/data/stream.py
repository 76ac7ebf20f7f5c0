"""Parallel, ordered decoding: records in, examples out, in the same order, a bounded window ahead.

Pillow releases the GIL while it decodes, so a thread pool decodes several
images at once while the main thread feeds the accelerator. At most ``window``
records are in flight, which bounds memory however large the source.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import os
from typing import Iterable, Iterator

from saliency_jax.data.base import DecodeError, Example, Record
from saliency_jax.data.decode import DEFAULT_MAX_PIXELS, decode_resized
from saliency_jax.data.files import DEFAULT_MAX_BYTES

FINGERPRINTS = ("stat", "content")
"""How a stamp identifies the version of a file (``decode_stream``'s ``fingerprint``)."""


def default_workers() -> int:
    """Decoding threads: one per CPU core, at least 2, at most 16."""
    return max(2, min(16, os.cpu_count() or 2))


def _read(record: Record, max_bytes: int) -> bytes:
    """``record.read(max_bytes)``, with any OSError a source lets through turned into a DecodeError."""
    try:
        return record.read(max_bytes)
    except FileNotFoundError:
        raise DecodeError("no such file") from None
    except PermissionError:
        raise DecodeError("permission denied") from None
    except IsADirectoryError:
        raise DecodeError("is a directory") from None
    except OSError as e:
        raise DecodeError(f"cannot read file ({e.strerror or e})") from None


def content_stamp(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _unreadable_stamp(err: DecodeError) -> str:
    return f"unreadable:{err}"


def stamp_of(record: Record, fingerprint: str, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """The record's stamp now: ``"stat"`` its file's type, size and mtime (nothing read; ``""`` without
    a file), ``"content"`` the sha256 of its bytes."""
    if fingerprint == "stat":
        return record.stat() if record.stat is not None else ""
    try:
        return content_stamp(_read(record, max_bytes))
    except DecodeError as e:
        return _unreadable_stamp(e)


def _load(record: Record, size: tuple[int, int], limits: tuple[int, int], fingerprint: str) -> Example:
    max_pixels, max_bytes = limits
    stamp = stamp_of(record, "stat") if fingerprint == "stat" else ""  # before reading: a later change shows
    try:
        data = _read(record, max_bytes)
    except DecodeError as e:
        return _failed(record, str(e), stamp or _unreadable_stamp(e))
    stamp = stamp or content_stamp(data)
    try:
        image = decode_resized(data, size, max_pixels=max_pixels)
    except DecodeError as e:
        return _failed(record, str(e), stamp)
    return Example(record.position, record.id, record.path, record.label, image, None, stamp)


def _failed(record: Record, reason: str, stamp: str) -> Example:
    return Example(record.position, record.id, record.path, record.label, None, " ".join(reason.split()), stamp)


def decode_stream(
    records: Iterable[Record],
    size: tuple[int, int],
    *,
    workers: int | None = None,
    window: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    fingerprint: str = "stat",
) -> Iterator[Example]:
    """Decodes and resizes records to ``size`` = (h, w) in threads; yields Examples in record order.

    A record that cannot be read or decoded becomes an Example with ``image=None``
    and a one-line ``error``; the stream goes on.

    Args:
      records: any iterable of ``Record`` (consumed lazily, ``window`` ahead).
      size: (height, width) of every output image.
      workers: decoding threads (default ``default_workers()``).
      window: records in flight at most (default 8 per worker).
      max_pixels: see ``decode_image``.
      max_bytes: larger files are errors, never read (see ``saliency_jax.data.files``).
      fingerprint: what each Example's ``stamp`` records: ``"stat"`` the file's
        type, size and mtime, taken before it is read (cheap; a change within the
        file system's timestamp resolution that keeps the size is missed), or
        ``"content"`` the sha256 of the bytes decoded (exact).
    """
    if fingerprint not in FINGERPRINTS:
        raise ValueError(f"fingerprint must be one of {', '.join(FINGERPRINTS)}, got {fingerprint!r}")
    workers = workers or default_workers()
    window = window or 8 * workers
    records = iter(records)
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        pending: collections.deque = collections.deque()
        try:
            for record in records:
                pending.append(pool.submit(_load, record, size, (max_pixels, max_bytes), fingerprint))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def current_stamps(records: Iterable[Record], fingerprint: str, *, max_bytes: int = DEFAULT_MAX_BYTES,
                   workers: int | None = None) -> Iterator[tuple[int, str]]:
    """(position, ``stamp_of`` now) of each record, in order; ``"content"`` reads in ``workers`` threads."""
    if fingerprint == "stat":
        yield from ((r.position, stamp_of(r, "stat")) for r in records)
        return
    with concurrent.futures.ThreadPoolExecutor(workers or default_workers(), thread_name_prefix="stamp") as pool:
        records = list(records)
        yield from zip((r.position for r in records), pool.map(lambda r: stamp_of(r, fingerprint, max_bytes), records))
