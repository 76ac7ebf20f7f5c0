"""Reading budgets: what one checkpoint file may cost, checked before anything is allocated.

A crafted file of a few hundred bytes must not make a reader allocate
gigabytes or run for hours. Every size a file *declares* (a zip record's
uncompressed size, an HDF5 dataset's shape, a tensor's shape and strides) is
checked here, in Python integers, against what the file actually holds:

* inflation: a compressed record or dataset may declare at most `max_ratio`
  times its stored bytes (records up to `ratio_floor` are exempt), and all of a
  file's records together at most `max_inflated_bytes`;
* tensors: the arrays made from a file's storages may total at most
  `view_factor` times the storage bytes present, plus `view_slack`. A tensor
  may be a view (shared storage, stride 0) but is always copied out, so a
  stride-0 "expand" loads only when its copy fits this budget;
* zip records (`read_zip_record`) are checked against these before inflating;
* pickles: at most `max_ops` opcodes, `max_memo` memo entries, containers
  nested `max_depth` deep, and `max_pickle_bytes` bytes.

The defaults are generous for real checkpoints (a 550 MB VGG16 uses a few
percent of them) and tight for bombs.
"""

from __future__ import annotations

import dataclasses
import zipfile

from saliency_jax.checkpoints.errors import CheckpointError, describe

MiB, GiB = 2**20, 2**30


@dataclasses.dataclass(frozen=True)
class Budget:
    """Limits on reading one checkpoint file (see the module docstring)."""

    max_inflated_bytes: int = 32 * GiB
    max_ratio: int = 100
    ratio_floor: int = 1 * MiB
    view_factor: int = 2
    view_slack: int = 16 * MiB
    max_ops: int = 2_000_000
    max_memo: int = 1_000_000
    max_depth: int = 64
    max_pickle_bytes: int = 256 * MiB

    def tensor_limit(self, stored_bytes: int) -> int:
        """The most bytes of arrays that `stored_bytes` of storages may become."""
        return self.view_factor * stored_bytes + self.view_slack


DEFAULT_BUDGET = Budget()


def size_text(n: int) -> str:
    """A byte count for a message: "512 B", "3.2 MiB", "4.0 GiB"."""
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


class Meter:
    """Counts bytes against a limit; `charge` refuses before the allocation it stands for."""

    def __init__(self, limit: int, what: str):
        self.limit, self.what, self.used = limit, what, 0

    def charge(self, nbytes: int, item: str) -> None:
        """Adds `nbytes` for `item`, or raises CheckpointError if that would pass the limit."""
        if nbytes + self.used > self.limit:
            raise CheckpointError(
                f"{item} needs {size_text(nbytes)}, over the budget of {size_text(self.limit)} "
                f"({self.what}; {size_text(self.used)} used)"
            )
        self.used += nbytes


def check_inflation(budget: Budget, declared: int, stored: int, item: str) -> None:
    """Refuses a record that declares more than `max_ratio` times the `stored` bytes it has."""
    if declared > budget.ratio_floor and declared > budget.max_ratio * stored:
        raise CheckpointError(
            f"{item} declares {size_text(declared)} from {size_text(stored)} stored "
            f"(more than {budget.max_ratio}x: a decompression bomb?)"
        )


def read_zip_record(archive: zipfile.ZipFile, name: str, budget: Budget, meter: Meter,
                    limit: int | None = None) -> bytes:
    """A zip record's bytes, after checking its declared size (ratio, `meter`, `limit`) before inflating."""
    info = archive.getinfo(name)
    what = f"zip record {describe(name)}"
    if limit is not None and info.file_size > limit:
        raise CheckpointError(f"{what} declares {size_text(info.file_size)}, over {size_text(limit)}")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise CheckpointError(f"{what} uses compression method {info.compress_type} (only stored and deflate)")
    check_inflation(budget, info.file_size, info.compress_size, what)
    meter.charge(info.file_size, what)
    with archive.open(info) as record:  # read(n) inflates at most n bytes, and n is the checked size
        return record.read(info.file_size)
