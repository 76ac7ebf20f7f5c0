"""Gaussian smoothing, once for the whole library: one 1-D kernel and the separable filter on it.

The kernel of std ``sigma`` has taps ``exp(-k^2 / (2 sigma^2))`` for
``k = -r..r``, divided by their sum (so a constant image stays constant), with
one radius rule:

    r = int(truncate * sigma + 0.5)        # truncate standard deviations, rounded half up

the rule of ``scipy.ndimage.gaussian_filter`` and scikit-image. Blurs use
``truncate=3`` (``sigma=5`` gives 31 taps); SSIM passes ``truncate=3.5``, which
is scikit-image's window (11 taps at ``sigma=1.5``).

Edges: ``"mirror"`` pads each axis with its own pixels in reverse, the edge
pixel repeated (``c b a | a b c``; NumPy's ``"symmetric"``, SciPy's
``"reflect"``), so the output has the input's shape; ``"valid"`` keeps only the
positions where the whole kernel fits (each filtered axis ``2r`` shorter).

The filter is shifted multiply-adds (``2r+1`` per axis, no matrix), runs under
``jit``/``vmap`` and is itself jitted, so host-side callers (``localize``) get
one compilation per shape.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["EDGES", "gaussian_filter", "gaussian_kernel", "gaussian_radius"]

EDGES = ("mirror", "valid")


def gaussian_radius(sigma: float, truncate: float = 3.0) -> int:
    """``int(truncate * sigma + 0.5)``: the taps each side of the centre."""
    return int(truncate * sigma + 0.5)


def gaussian_kernel(sigma: float, *, truncate: float = 3.0) -> np.ndarray:
    """The normalised 1-D Gaussian: float64 ``[2r+1]`` summing to 1 (``r = gaussian_radius``).

    Raises:
      ValueError: ``sigma`` or ``truncate`` not positive.
    """
    if not sigma > 0 or not truncate > 0:
        raise ValueError(f"gaussian_kernel: sigma and truncate must be positive, got {sigma!r}, {truncate!r}")
    radius = gaussian_radius(sigma, truncate)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return taps / taps.sum()


@functools.partial(jax.jit, static_argnames=("sigma", "axes", "truncate", "edges"))
def gaussian_filter(x, sigma: float, *, axes: tuple[int, ...] = (-3, -2), truncate: float = 3.0,
                    edges: str = "mirror") -> jax.Array:
    """Separable Gaussian blur of ``x`` along ``axes`` (std ``sigma`` pixels; all static).

    Args:
      x: float array, e.g. images ``[...,H,W,C]`` (``axes=(-3, -2)``, the
        default) or maps ``[...,H,W]`` (``axes=(-2, -1)``).
      sigma: standard deviation in pixels (> 0).
      axes: the axes to filter, one pass each.
      truncate: the kernel's half-width in standard deviations (see the module docstring).
      edges: ``"mirror"`` (same shape) or ``"valid"`` (each axis ``2r`` shorter).

    Returns:
      The filtered array, ``x``'s shape (``"mirror"``) or shortened along ``axes`` (``"valid"``).

    Example:
      >>> gaussian_filter(jnp.ones((9, 7, 3)), 1.5)        # all ones: the kernel sums to 1
    """
    if edges not in EDGES:
        raise ValueError(f"gaussian_filter: edges must be one of {', '.join(EDGES)}, got {edges!r}")
    taps = gaussian_kernel(sigma, truncate=truncate)
    radius = len(taps) // 2
    x = jnp.asarray(x)
    for axis in axes:
        axis = axis % x.ndim
        if edges == "mirror":
            pad = [(0, 0)] * x.ndim
            pad[axis] = (radius, radius)
            x = jnp.pad(x, pad, mode="symmetric")
        size = x.shape[axis] - 2 * radius
        if size < 1:
            raise ValueError(f"gaussian_filter: axis {axis} of length {x.shape[axis]} is shorter than "
                             f"the {len(taps)}-tap kernel")
        x = sum(float(t) * lax.slice_in_dim(x, k, k + size, axis=axis) for k, t in enumerate(taps))
    return x
