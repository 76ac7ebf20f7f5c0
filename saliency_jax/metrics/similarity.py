"""How alike are two saliency maps: Spearman rank correlation and SSIM, in `jax.numpy`.

Both work on the trailing two axes ``[...,H,W]`` (one map, or a batch), run
under ``jit`` and ``vmap``, and are what Adebayo et al. (2018, "Sanity Checks
for Saliency Maps") compare between a trained and a randomised model's maps.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from saliency_jax.filters import gaussian_filter, gaussian_radius

__all__ = ["SSIM_TRUNCATE", "rank", "spearman", "ssim"]

SSIM_TRUNCATE = 3.5  # scikit-image's window half-width, in standard deviations


def rank(values: jax.Array) -> jax.Array:
    """Ranks ``0..n-1`` of a flat array, ties given their average rank (as ``scipy.stats.rankdata - 1``)."""
    ordered = jnp.sort(values)
    below = jnp.searchsorted(ordered, values, side="left")
    through = jnp.searchsorted(ordered, values, side="right")
    return (below + through - 1).astype(jnp.float32) / 2


def _pearson(a: jax.Array, b: jax.Array) -> jax.Array:
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    return jnp.sum(a * b, axis=-1) / jnp.sqrt(jnp.sum(a * a, axis=-1) * jnp.sum(b * b, axis=-1))


@jax.jit
def spearman(a: jax.Array, b: jax.Array) -> jax.Array:
    """Spearman rank correlation of two maps over their last two axes: ``[...,H,W] -> [...]``.

    The Pearson correlation of the (tie-averaged) pixel ranks, as
    ``scipy.stats.spearmanr(a.ravel(), b.ravel())``. A constant map has no
    ranking: its correlation is NaN.
    """
    a, b = jnp.broadcast_arrays(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    flat_a = a.reshape(a.shape[:-2] + (-1,))
    flat_b = b.reshape(b.shape[:-2] + (-1,))
    ranks = jnp.vectorize(rank, signature="(n)->(n)")
    return _pearson(ranks(flat_a), ranks(flat_b))


@functools.partial(jax.jit, static_argnames=("data_range", "sigma", "k1", "k2"))
def ssim(a, b, *, data_range: float = 1.0, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> jax.Array:
    """Mean structural similarity (Wang et al. 2004) of two maps: ``[...,H,W] -> [...]``.

    Gaussian-weighted local statistics (`saliency_jax.filters.gaussian_filter`
    of std ``sigma`` truncated at ``SSIM_TRUNCATE = 3.5`` std: 11x11 for the
    default 1.5) with population covariances, the SSIM map averaged over the
    positions where the window fits inside the map ("valid" edges);
    equal to ``skimage.metrics.structural_similarity(a, b, data_range=1,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``. Identical
    maps give 1.

    Args:
      a, b: maps ``[...,H,W]`` (broadcastable), values in ``[0, data_range]``
        (e.g. ``saliency_map`` output); ``H, W`` at least the window size.
      data_range: the span of the values (sets the stabilising constants).
      sigma: standard deviation of the Gaussian window, in pixels.
      k1, k2: the constants ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2``.
    """
    a, b = jnp.broadcast_arrays(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    window = 2 * gaussian_radius(sigma, SSIM_TRUNCATE) + 1
    if min(a.shape[-2:]) < window:
        raise ValueError(f"ssim: maps of shape {a.shape[-2:]} are smaller than the {window}-pixel window")

    def local_mean(m):
        return gaussian_filter(m, sigma, axes=(-2, -1), truncate=SSIM_TRUNCATE, edges="valid")

    mu_a, mu_b = local_mean(a), local_mean(b)
    var_a = local_mean(a * a) - mu_a**2
    var_b = local_mean(b * b) - mu_b**2
    cov = local_mean(a * b) - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return index.mean(axis=(-2, -1))
