"""What every data source yields: records in a fixed order, then decoded examples.

A source is a deterministic, finite sequence of images: position ``i`` is always
the same image, so a job can resume at any position and several hosts can each
take their own slice (``records(start, stop)``) without coordinating.

    source.records(start, stop) -> Record(position, id, path, label, read)   (cheap; no pixels)
    decode_stream(records, size)  -> Example(position, id, path, label, image | error)   (threads)
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Protocol

import numpy as np

NO_LABEL = -1
"""``label`` of an example whose source has no labels."""


class SourceError(ValueError):
    """A source that cannot be opened (missing folder, unknown dataset, missing extra): one line."""


@dataclasses.dataclass(frozen=True)
class Record:
    """One item of a source, before decoding.

    Attributes:
      position: index in the source's fixed order (0-based).
      id: a stable, unique name (a relative path, a ``tfds_id``).
      path: where it came from (file path, or ``""`` when there is none).
      label: class index, or ``NO_LABEL``.
      read: returns the encoded bytes; called in a worker thread (so file I/O is parallel).
    """

    position: int
    id: str
    path: str
    label: int
    read: Callable[[], bytes]


@dataclasses.dataclass(frozen=True)
class Example:
    """A decoded record: ``image`` uint8 [h,w,3] at the requested size, or ``error`` (one line)."""

    position: int
    id: str
    path: str
    label: int
    image: np.ndarray | None
    error: str | None = None


class Source(Protocol):
    """A finite image source in a fixed order.

    Attributes:
      spec: the string that reopens it (``open_source(spec)``).
      num_examples: how many records it has.
      label_names: class names when records carry labels, else ``None``.
      fingerprint: a short string that changes when the source's content list
        changes (a resumed job refuses a changed source).
    """

    spec: str
    num_examples: int
    label_names: tuple[str, ...] | None
    fingerprint: str

    def records(self, start: int = 0, stop: int | None = None) -> Iterator[Record]:
        """Records ``start <= position < stop`` in order."""
        ...
