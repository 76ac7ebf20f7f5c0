"""Checking a checkpoint against the layout a converter expects, with one clear error.

A converter first hands a `TensorReader` every name and shape it will read
(`expect`, shapes from `jax.eval_shape` of the architecture, so nothing is
allocated), which refuses a mismatched checkpoint before any conversion work;
then it reads every tensor through the reader, naming the shape it expects.
Missing tensors, wrong shapes and tensors nobody read are collected, so one
`CheckpointError` lists the first few of each instead of failing on the first
`KeyError`.
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
      >>> get.expect({"features.0.weight": (64, 3, 3, 3)})  # raises now if that is not all
      >>> w = get("features.0.weight", (64, 3, 3, 3))
      >>> get.finish()  # raises CheckpointError listing every mismatch seen
    """

    def __init__(self, tensors: Mapping[str, np.ndarray], model: str):
        self.tensors = tensors
        self.model = model
        self.missing: list[str] = []
        self.wrong: list[str] = []
        self.used: set[str] = set()

    def dim(self, key: str, axis: int, default: int, ndim: int | None = None) -> int:
        """The size of `key`'s axis `axis` (to infer e.g. the class count), else `default`.

        Only a present tensor of rank `ndim` (if given) whose axis is non-empty counts; anything
        else gives `default`, and `expect` then reports the misshapen tensor.
        """
        shape = np.shape(self.tensors[key]) if key in self.tensors else ()
        if (ndim is not None and len(shape) != ndim) or len(shape) <= max(axis, -axis - 1):
            return default
        return int(shape[axis]) or default

    def expect(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Checks names and shapes only (nothing is read or allocated): raises unless `shapes` is
        exactly what the checkpoint holds (bookkeeping tensors aside)."""
        for key, shape in shapes.items():
            if key not in self.tensors:
                self.missing.append(key)
            elif np.shape(self.tensors[key]) != tuple(shape):
                self.wrong.append(f"shape of {key} is {np.shape(self.tensors[key])}, expected {tuple(shape)}")
        self.used.update(shapes)
        self.finish()

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
