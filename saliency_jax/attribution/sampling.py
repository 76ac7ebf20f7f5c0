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
from jax.extend.core import jaxpr_as_fun

from saliency_jax import progress


def sample_sum(fn, num_samples: int, *, chunk_size: int | None = None, count=None):
    """sum_{i < num_samples} fn(i), evaluated chunk_size samples at a time.

    Args:
      fn: int32 scalar index -> pytree of arrays (same structure for every i).
      num_samples: static number of samples (>= 1).
      chunk_size: samples evaluated together (static); None = all at once.
        A last partial chunk is padded and the padding masked out.
      count: optional traced int32 <= num_samples: only i < count are summed, and the
        chunks after the last such i are not evaluated (a `lax.while_loop`; under `vmap`
        it runs until every image's count is reached).

    Returns:
      The summed pytree.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    chunk = num_samples if chunk_size is None else min(chunk_size, num_samples)
    num_chunks = -(-num_samples // chunk)
    offsets = jnp.arange(chunk, dtype=jnp.int32)
    # fn is traced once, here; the scan body evaluates that jaxpr (tracing fn again, as eval_shape
    # and then scan would, doubled the Python tracing time of every sampled method).
    with progress.sample_ticks(num_chunks) as tick:  # a tick per chunk only when the trace reports progress
        traced, shapes = jax.make_jaxpr(jax.vmap(fn), return_shape=True)(offsets)
    chunk_fn = jaxpr_as_fun(traced)
    structure = jax.tree.structure(shapes)

    limit = num_samples if count is None else jnp.minimum(count, num_samples)

    def body(total, k):
        chunk_ids = k * chunk + offsets  # built per chunk: no [num_samples] array
        values = jax.tree.unflatten(structure, chunk_fn(chunk_ids))
        keep = chunk_ids < limit

        def masked_sum(v):
            return jnp.sum(jnp.where(keep.reshape((-1,) + (1,) * (v.ndim - 1)), v, 0), axis=0)

        total = jax.tree.map(lambda t, v: t + masked_sum(v), total, values)
        if tick is not None:  # after the chunk's work; batched (once per image) if any part of the sum is
            tick([jnp.ravel(t)[0] for t in jax.tree.leaves(total) if t.size])
        return total, None

    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape[1:], s.dtype), shapes)
    if count is not None:
        def step(state):
            k, total = state
            return k + 1, body(total, k)[0]

        return lax.while_loop(lambda state: state[0] * chunk < limit, step, (jnp.int32(0), zeros))[1]
    if num_chunks == 1:
        return body(zeros, jnp.int32(0))[0]
    return lax.scan(body, zeros, jnp.arange(num_chunks, dtype=jnp.int32))[0]


def default_chunk(num_samples: int, images_per_call: int, *, in_flight: int = 32) -> int:
    """The chunk_size that keeps about `in_flight` images (batch x samples) in flight, with the least padding.

    The one rule for every method with an inner sample axis and for the
    perturbation metrics: ceil(in_flight / images_per_call) samples at most per
    chunk, balanced so the chunks are as equal as possible.
    """
    max_chunk = max(1, -(-in_flight // max(1, images_per_call)))
    num_chunks = -(-num_samples // max_chunk)
    return -(-num_samples // num_chunks)
