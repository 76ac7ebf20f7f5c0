"""What every data source yields: records in a fixed order, then decoded examples.

A source is a deterministic, finite sequence of images: position ``i`` is always
the same image, so a job can resume at any position and several hosts can each
take their own slice (``records(start, stop)``) without coordinating.

    source.records(start, stop) -> Record(position, id, path, label, read, stat)   (cheap; no pixels)
    decode_stream(records, size)  -> Example(position, id, path, label, image | error, stamp)   (threads)

Names are ``str``; a file name that is not valid UTF-8 keeps its bytes as
surrogate escapes (Python's convention: ``os.fsencode(record.path)`` is the
name on disk).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Protocol

import numpy as np

NO_LABEL = -1
"""``label`` of an example whose source has no labels."""


class SourceError(ValueError):
    """A source that cannot be opened (missing folder, unknown dataset, missing extra): one line."""


class DecodeError(ValueError):
    """One image that cannot be used (unreadable, not a regular file, too large, corrupt).

    ``str(err)`` is a one-line reason, without the path.
    """


@dataclasses.dataclass(frozen=True)
class Record:
    """One item of a source, before decoding.

    Attributes:
      position: index in the source's fixed order (0-based).
      id: a stable, unique name (a relative path, a ``tfds_id``).
      path: where it came from (file path, or ``""`` when there is none).
      label: class index, or ``NO_LABEL``.
      read: ``read(max_bytes=DEFAULT_MAX_BYTES)`` returns the encoded bytes, or raises `DecodeError`
        (a file over ``max_bytes`` or not a regular file is refused before it is
        read); called in a worker thread, so file I/O is parallel.
      stat: returns the file's stamp now (type, size, mtime; no read), or is
        ``None`` when there is no file (TFDS); a resumed job compares stamps.
    """

    position: int
    id: str
    path: str
    label: int
    read: Callable[[int], bytes]
    stat: Callable[[], str] | None = None


@dataclasses.dataclass(frozen=True)
class Example:
    """A decoded record: ``image`` uint8 [h,w,3] at the requested size, or ``error`` (one line).

    ``stamp`` identifies the version of the file that was read (see ``decode_stream``'s ``fingerprint``).
    """

    position: int
    id: str
    path: str
    label: int
    image: np.ndarray | None
    error: str | None = None
    stamp: str = ""


class Source(Protocol):
    """A finite image source in a fixed order.

    Attributes:
      spec: the string that reopens it (``open_source(spec)``).
      num_examples: how many records it has.
      label_names: class names when records carry labels, else ``None``.
      fingerprint: a short string that changes when the source's content list
        changes (a resumed job refuses a changed source).
      file_stamps: whether records carry ``stat`` (files whose size and mtime a
        resumed job checks); False for TFDS, whose version is in the fingerprint.
    """

    spec: str
    num_examples: int
    label_names: tuple[str, ...] | None
    fingerprint: str
    file_stamps: bool

    def records(self, start: int = 0, stop: int | None = None) -> Iterator[Record]:
        """Records ``start <= position < stop`` in order."""
        ...
