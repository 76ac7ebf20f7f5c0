"""Parallel, ordered decoding: records in, examples out, in the same order, a bounded window ahead.

Pillow releases the GIL while it decodes, so a thread pool decodes several
images at once while the main thread feeds the accelerator. At most ``window``
records are in flight, which bounds memory however large the source.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
from typing import Iterable, Iterator

from saliency_jax.data.base import Example, Record
from saliency_jax.data.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_resized


def default_workers() -> int:
    """Decoding threads: one per CPU core, at least 2, at most 16."""
    return max(2, min(16, os.cpu_count() or 2))


def _load(record: Record, size: tuple[int, int], max_pixels: int) -> Example:
    try:
        data = record.read()
    except FileNotFoundError:
        return _failed(record, "no such file")
    except PermissionError:
        return _failed(record, "permission denied")
    except IsADirectoryError:
        return _failed(record, "is a directory")
    except OSError as e:
        return _failed(record, f"cannot read file ({e.strerror or e})")
    try:
        image = decode_resized(data, size, max_pixels=max_pixels)
    except DecodeError as e:
        return _failed(record, str(e))
    return Example(record.position, record.id, record.path, record.label, image)


def _failed(record: Record, reason: str) -> Example:
    return Example(record.position, record.id, record.path, record.label, None, " ".join(reason.split()))


def decode_stream(
    records: Iterable[Record],
    size: tuple[int, int],
    *,
    workers: int | None = None,
    window: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
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
    """
    workers = workers or default_workers()
    window = window or 8 * workers
    records = iter(records)
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        pending: collections.deque = collections.deque()
        try:
            for record in records:
                pending.append(pool.submit(_load, record, size, max_pixels))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
