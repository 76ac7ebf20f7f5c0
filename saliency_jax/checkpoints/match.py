"""Checking a checkpoint against the layout a converter expects, with one clear error.

A converter reads every tensor through a `TensorReader`, naming the shape it
expects. Missing tensors, wrong shapes and (at `finish`) tensors nobody read
are collected, so one `CheckpointError` lists the first few of each instead of
failing on the first `KeyError`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from saliency_jax.checkpoints.errors import CheckpointError

# Bookkeeping tensors that carry no weights (torch BatchNorm's step counter).
IGNORED_SUFFIXES = ("num_batches_tracked",)
_SHOWN = 3  # mismatches listed per kind


def _listing(items: Sequence[str]) -> str:
    more = f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


class TensorReader:
    """Reads named tensors as float64 arrays of expected shapes, recording mismatches.

    Example:
      >>> get = TensorReader(state_dict, "vgg16")
      >>> w = get("features.0.weight", (64, 3, 3, 3))
      >>> get.finish()  # raises CheckpointError listing every mismatch seen
    """

    def __init__(self, tensors: Mapping[str, np.ndarray], model: str):
        self.tensors = tensors
        self.model = model
        self.missing: list[str] = []
        self.wrong: list[str] = []
        self.used: set[str] = set()

    def dim(self, key: str, axis: int, default: int) -> int:
        """The size of `key`'s axis `axis` if present (to infer e.g. the class count), else `default`."""
        shape = np.shape(self.tensors[key]) if key in self.tensors else ()
        return int(shape[axis]) if len(shape) > max(axis, -axis - 1) else default

    def __call__(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        """The tensor `key` as float64 [shape]; zeros (and a recorded mismatch) if absent or misshapen."""
        self.used.add(key)
        if key not in self.tensors:
            self.missing.append(key)
            return np.zeros(shape)
        array = np.asarray(self.tensors[key])
        if array.shape != tuple(shape):
            self.wrong.append(f"shape of {key} is {array.shape}, expected {tuple(shape)}")
            return np.zeros(shape)
        return array.astype(np.float64)

    def finish(self) -> None:
        """Raises CheckpointError if anything was missing, misshapen, or never read."""
        unexpected = sorted(
            k for k in self.tensors if k not in self.used and not k.endswith(IGNORED_SUFFIXES)
        )
        parts = []
        if self.missing:
            parts.append(f"missing {_listing(self.missing)}")
        if unexpected:
            parts.append(f"unexpected {_listing(unexpected)}")
        if self.wrong:
            parts.append(_listing(self.wrong))
        if parts:
            raise CheckpointError(f"checkpoint does not match {self.model}: {'; '.join(parts)}")
