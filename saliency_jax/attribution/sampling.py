"""Sums over an inner sample axis (SmoothGrad noise, Integrated-Gradients path points).

`sample_sum` evaluates `chunk_size` samples at a time (a `jax.vmap` inside a
`lax.scan`), so an outer batch B never needs B x num_samples activations in
memory at once. The result does not depend on the chunk size beyond float
summation order: sample i is always computed from its index alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def sample_sum(fn, num_samples: int, *, chunk_size: int | None = None):
    """sum_{i < num_samples} fn(i), evaluated chunk_size samples at a time.

    Args:
      fn: int32 scalar index -> pytree of arrays (same structure for every i).
      num_samples: static number of samples (>= 1).
      chunk_size: samples evaluated together (static); None = all at once.
        A last partial chunk is padded and the padding masked out.

    Returns:
      The summed pytree.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    chunk = num_samples if chunk_size is None else min(chunk_size, num_samples)
    num_chunks = -(-num_samples // chunk)
    ids = jnp.arange(num_chunks * chunk, dtype=jnp.int32).reshape(num_chunks, chunk)

    def body(total, chunk_ids):
        values = jax.vmap(fn)(chunk_ids)
        keep = chunk_ids < num_samples

        def masked_sum(v):
            return jnp.sum(jnp.where(keep.reshape((-1,) + (1,) * (v.ndim - 1)), v, 0), axis=0)

        return jax.tree.map(lambda t, v: t + masked_sum(v), total, values), None

    shapes = jax.eval_shape(fn, jnp.int32(0))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    if num_chunks == 1:
        return body(zeros, ids[0])[0]
    return lax.scan(body, zeros, ids)[0]
