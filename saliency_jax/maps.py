"""From input gradients to a displayable saliency map: reduce colour channels, normalise.

Simonyan et al. (2014, Sec. 3.1) take the gradient ``w = d logit / d image`` and
show ``M[i,j] = max_c |w[i,j,c]|``. This module is that post-processing, plus the
common variants, as pure ``jax.numpy`` functions that run under ``jit``.

Every function works on the trailing axes, so one map ``[H,W]`` (from gradients
``[H,W,C]``) and a batch ``[B,H,W]`` (from ``[B,H,W,C]``) go through the same
code; each map of a batch is normalised on its own values only.

Options (``reduce``, ``clip_percentile``, ``signed``, ``normalize``) are static:
under ``jax.jit`` list them in ``static_argnames`` or bind them with
``functools.partial``.

Non-finite gradients are not an error here, because ``jit`` cannot raise on
values: NaN/Inf propagate into the output (usually as NaN). Call the host-side
``check_finite`` on the result when you want the error.

Example:
  >>> import jax, jax.numpy as jnp
  >>> grads = jnp.ones((2, 8, 8, 3))                    # [B,H,W,C]
  >>> fast = jax.jit(saliency_map, static_argnames=("reduce", "normalize", "clip_percentile"))
  >>> fast(grads).shape                                  # [B,H,W], values in [0, 1]
  (2, 8, 8)
"""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "REDUCTIONS",
    "SIGNED_REDUCTIONS",
    "check_finite",
    "normalize",
    "reduce_channels",
    "saliency_map",
]

# name -> [...,H,W,C] -> [...,H,W]
_REDUCE_FNS = {
    "max_abs": lambda g: jnp.max(jnp.abs(g), axis=-1),  # the paper
    "sum_abs": lambda g: jnp.sum(jnp.abs(g), axis=-1),
    "l2": lambda g: jnp.linalg.norm(g, axis=-1),
    "sum": lambda g: jnp.sum(g, axis=-1),
    "max": lambda g: jnp.max(g, axis=-1),
    "abs_sum": lambda g: jnp.abs(jnp.sum(g, axis=-1)),
}
REDUCTIONS = tuple(_REDUCE_FNS)
"""Valid ``reduce`` names."""

SIGNED_REDUCTIONS = frozenset({"sum", "max"})
"""Reductions whose maps keep the gradient's sign (``saliency_map`` scales them to [-1, 1])."""


@functools.partial(jax.jit, static_argnums=1)
def _reduce(grads: jax.Array, reduce: str) -> jax.Array:
    return _REDUCE_FNS[reduce](grads)


def _as_float(x: jax.Array, where: str) -> jax.Array:
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise ValueError(f"{where}: expected real values, got dtype {x.dtype}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)  # ints and bools
    return x


def reduce_channels(grads: jax.Array, *, reduce: str = "max_abs") -> jax.Array:
    """Collapses the channel axis of gradients into one value per pixel.

    Args:
      grads: ``[...,H,W,C]`` real array (e.g. ``[H,W,3]`` or ``[B,H,W,3]``; any C: a
        grayscale model's ``[B,H,W,1]`` gives ``|g|`` for every absolute reduction).
      reduce: one of ``REDUCTIONS``:
        * ``"max_abs"``: ``max_c |g|``, Simonyan et al. (2014);
        * ``"sum_abs"``: ``sum_c |g|`` (PAIR saliency's grayscale);
        * ``"l2"``: ``sqrt(sum_c g^2)``;
        * ``"sum"``: ``sum_c g``, signed;
        * ``"max"``: ``max_c g``, signed;
        * ``"abs_sum"``: ``|sum_c g|``.

    Returns:
      ``[...,H,W]`` map in the dtype of ``grads`` (float32 for integer input).

    Raises:
      ValueError: unknown ``reduce`` (the message lists the valid names), fewer
        than 3 dimensions, or complex input.
    """
    if not isinstance(reduce, str) or reduce not in _REDUCE_FNS:
        raise ValueError(
            f"reduce_channels: unknown reduce={reduce!r}; valid names are "
            f"{', '.join(REDUCTIONS)}"
        )
    grads = _as_float(grads, "reduce_channels")
    if grads.ndim < 3:
        raise ValueError(
            f"reduce_channels: expected gradients [...,H,W,C], got shape {grads.shape}"
        )
    return _reduce(grads, reduce)


def _check_percentile(q: float | None) -> float | None:
    if q is None:
        return None
    if isinstance(q, bool) or not isinstance(q, numbers.Real) or not 0.0 < float(q) <= 100.0:
        raise ValueError(
            f"clip_percentile must be None or a number in (0, 100], got {q!r}"
        )
    return float(q)


@functools.partial(jax.jit, static_argnums=(1, 2))  # one compiled program, not op-by-op
def _scale(maps: jax.Array, q: float | None, signed: bool) -> jax.Array:
    """Per-map scaling over the last two axes (see ``normalize``)."""
    values = jnp.abs(maps) if signed else maps
    peak = jnp.max(values, axis=(-2, -1), keepdims=True)
    if q is None:
        scale = peak
    else:
        top = jnp.percentile(values, q, axis=(-2, -1), keepdims=True)
        # A sparse map can have its q-th percentile at 0 with a few positive
        # pixels above it: fall back to the max rather than zero them all.
        scale = jnp.where(top > 0, top, peak)
    out = maps / jnp.where(scale > 0, scale, 1)
    out = jnp.clip(out, -1.0 if signed else 0.0, 1.0)
    # `scale <= 0` is False for NaN, so a NaN map stays NaN (it is not zeroed).
    return jnp.where(scale <= 0, jnp.zeros_like(out), out)


def normalize(
    maps: jax.Array, *, clip_percentile: float | None = None, signed: bool = False
) -> jax.Array:
    """Scales each map by its own peak (or upper percentile), independently per map.

    The statistics are taken over the last two axes ``[H,W]`` of each map, so
    every element of a batch ``[B,H,W]`` is scaled on its own values.

    * ``signed=False``: ``clip(m / s, 0, 1)`` with ``s`` the map's max, or its
      ``clip_percentile``-th percentile (values above it saturate at 1, as in
      PAIR saliency's ``VisualizeImageGrayscale(percentile=99)``, which however
      also subtracts the min; here 0 stays 0). Negative values become 0: use
      this for ``|gradient|`` maps.
    * ``signed=True``: ``clip(m / s, -1, 1)`` with ``s`` the max of ``|m|``, or
      its percentile; 0 stays 0, the sign is kept.

    If the percentile is 0 (a sparse map: few non-zero pixels) the max is used
    instead. A map whose scale is 0 (all zero, or all negative when unsigned)
    becomes all zeros, never NaN. Non-finite inputs propagate (see
    ``check_finite``).

    Args:
      maps: ``[...,H,W]`` real map(s).
      clip_percentile: ``None`` (scale by the max) or a percentile in (0, 100],
        linearly interpolated like ``np.percentile``. Static under ``jit``.
      signed: keep the sign (output in [-1, 1]). Static under ``jit``.

    Returns:
      ``[...,H,W]`` float array in [0, 1] (or [-1, 1] when ``signed``).

    Raises:
      ValueError: fewer than 2 dimensions, an empty map, or a bad ``clip_percentile``.
    """
    q = _check_percentile(clip_percentile)
    maps = _as_float(maps, "normalize")
    if maps.ndim < 2 or 0 in maps.shape[-2:]:
        raise ValueError(f"normalize: expected non-empty maps [...,H,W], got shape {maps.shape}")
    return _scale(maps, q, bool(signed))


def saliency_map(
    grads: jax.Array,
    *,
    reduce: str = "max_abs",
    normalize: bool = True,
    clip_percentile: float | None = 99.0,
    relative: bool = False,
) -> jax.Array:
    """Gradients to the saliency map users look at: reduce channels, then normalise.

    Args:
      grads: ``[H,W,C]`` (one image) or ``[B,H,W,C]`` (a batch) input gradients.
      reduce: channel reduction, one of ``REDUCTIONS`` (default: the paper's
        ``max_c |w|``).
      normalize: scale each map on its own (``normalize`` in this module);
        ``False`` returns the raw reduced map.
      clip_percentile: upper percentile that maps to 1 (``None``: the max).
      relative: subtract each reduced map's minimum before scaling (PAIR's
        ``VisualizeImageGrayscale`` convention), for maps with a floor such as
        RISE's expected score (``Method.display_relative``); unsigned reductions only.

    Returns:
      ``[H,W]`` or ``[B,H,W]``: in [0, 1], or in [-1, 1] for the signed
      reductions ``"sum"`` and ``"max"`` (``SIGNED_REDUCTIONS``); raw values
      when ``normalize=False``.

    Raises:
      ValueError: ``grads`` not of rank 3 or 4 (the message names the shape),
        unknown ``reduce`` or bad ``clip_percentile``.
    """
    shape = jnp.shape(grads)
    if len(shape) not in (3, 4):
        raise ValueError(
            f"saliency_map: expected gradients [H,W,C] or [B,H,W,C], got shape {tuple(shape)}"
        )
    q = _check_percentile(clip_percentile)
    if relative and reduce in SIGNED_REDUCTIONS:
        raise ValueError(f"saliency_map: relative=True needs an unsigned reduction, not {reduce!r}")
    maps = reduce_channels(grads, reduce=reduce)
    if relative:
        maps = maps - jnp.min(maps, axis=(-2, -1), keepdims=True)
    if not normalize:
        return maps
    if 0 in maps.shape[-2:]:
        raise ValueError(f"saliency_map: got an empty image, gradients of shape {tuple(shape)}")
    return _scale(maps, q, reduce in SIGNED_REDUCTIONS)


def check_finite(maps):
    """Host-side check that a map (or any array) has no NaN or Inf; returns it unchanged.

    Not for use under ``jit`` (it reads values). Typical use:
    ``check_finite(saliency_map(grads))``.

    Raises:
      ValueError: "saliency map contains NaN or Inf values ...", with counts.
    """
    values = np.asarray(maps)
    if np.issubdtype(values.dtype, np.inexact):
        finite = np.isfinite(values)
        if not finite.all():
            n_nan = int(np.isnan(values).sum())
            n_inf = int(values.size - finite.sum()) - n_nan
            raise ValueError(
                f"saliency map contains NaN or Inf values ({n_nan} NaN, {n_inf} Inf "
                f"of {values.size} entries, shape {values.shape}); the gradients "
                "were not finite: check the model's logits and the input image"
            )
    return maps
