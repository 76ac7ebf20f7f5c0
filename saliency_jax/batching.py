"""Fixed-shape batching: run any number of items through a compiled function with one compilation.

Items are cut into batches of one static size; the last batch is padded (by
repeating its final item, so padding is always valid input) and the padding's
outputs are dropped. Small jobs use the next power of two instead of the full
batch size, so two images do not pay for thirty-two.
"""

from __future__ import annotations

from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np


def static_batch_size(n: int, batch_size: int) -> int:
    """The one batch size to compile for n items: min(batch_size, next power of two >= n)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return min(batch_size, 1 << max(n - 1, 0).bit_length())


def padded_batches(arrays: tuple, batch_size: int, *, exact: bool = False) -> Iterator[tuple[int, int, tuple]]:
    """Yields (start, stop, padded arrays) covering the leading axis of every array in `arrays`.

    exact: every batch has exactly `batch_size` items (one compilation whatever
    the number of items), instead of `static_batch_size`.
    """
    n = len(arrays[0])
    size = batch_size if exact else static_batch_size(n, batch_size)
    for start in range(0, n, size):
        stop = min(start + size, n)
        chunk = []
        for a in arrays:
            part = a[start:stop]
            if stop - start < size:  # pad where the array lives (device arrays stay on the device)
                xp = jnp if isinstance(part, jax.Array) else np
                part = xp.concatenate([part, xp.repeat(part[-1:], size - (stop - start), axis=0)])
            chunk.append(part)
        yield start, stop, tuple(chunk)


def map_batches(fn: Callable, arrays: tuple, batch_size: int, *, progress=None, exact: bool = False) -> np.ndarray:
    """np.concatenate of fn(*batch)[:valid] over padded batches; `progress(k)` after each batch."""
    outputs = []
    for start, stop, chunk in padded_batches(arrays, batch_size, exact=exact):
        outputs.append(np.asarray(fn(*chunk))[: stop - start])
        if progress is not None:
            progress(stop - start)
    return np.concatenate(outputs)
