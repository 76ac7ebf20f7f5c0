"""Deletion and insertion curves (Petsiuk et al. 2018, "RISE"), batched and compiled once.

A faithful map ranks first the pixels the class score depends on. *Deletion*
replaces the pixels of the image, most salient first, by a substrate (zeros in
model space, or a blurred copy) in ``num_steps`` equal steps and records the
target's score after each: a good map makes it fall fast (low AUC).
*Insertion* starts from the substrate (a blurred copy) and puts the pixels back
in the same order: a good map makes the score rise fast (high AUC).

All ``num_steps + 1`` perturbed copies of an image are scored inside one
compiled function: a ``jax.vmap`` over steps, ``chunk_size`` at a time (the
chunked ``sample_sum`` that SmoothGrad and IG use), vmapped over the batch.
Pixel ``p`` counts as removed at step ``i`` when its rank in the map (by
decreasing saliency, ties in raster order) is below ``floor(i * H * W /
num_steps)``; all colour channels of a pixel go together.

Example:
  >>> maps = saliency_jax.saliency_map(saliency_jax.attribute(model, x, targets))
  >>> curves = deletion_curves(model, x, maps, targets)          # [B, num_steps + 1]
  >>> auc(curves)                                                # [B], lower is better
  >>> insertion_auc(model, x, maps, targets, num_steps=32)       # [B], higher is better
"""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.attribution.sampling import default_chunk
from saliency_jax.targets import check_targets
from saliency_jax.validate import check_images, positive_int
from saliency_jax.attribution.gradients import resolve_target
from saliency_jax.attribution.sampling import sample_sum
from saliency_jax.filters import gaussian_filter
from saliency_jax.models.model import Model

__all__ = [
    "MODES",
    "SCORES",
    "auc",
    "blur",
    "deletion_auc",
    "deletion_curves",
    "insertion_auc",
    "insertion_curves",
    "perturbation_curves",
]

MODES = ("deletion", "insertion")
SCORES = ("probability", "logit")
SUBSTRATES = ("zeros", "blur")
DEFAULT_SUBSTRATE = {"deletion": "zeros", "insertion": "blur"}  # as Petsiuk et al.


def blur(x: jax.Array, sigma: float = 5.0) -> jax.Array:
    """Gaussian blur of images ``[...,H,W,C]`` (each channel; std ``sigma`` pixels; mirrored edges).

    `saliency_jax.filters.gaussian_filter` (radius ``int(3 sigma + 0.5)``). A
    linear filter with weights summing to 1, so blurring model-space input
    equals preprocessing the blurred photo (the affine normalisation commutes).
    """
    return gaussian_filter(x, float(sigma), axes=(-3, -2))


def auc(curves) -> jax.Array:
    """Area under curves ``[..., T+1]`` sampled at fractions ``0, 1/T, ..., 1`` (trapezoid rule)."""
    curves = jnp.asarray(curves)
    steps = curves.shape[-1] - 1
    if steps < 1:
        raise ValueError(f"auc: a curve needs at least 2 points, got shape {curves.shape}")
    return (curves.sum(-1) - 0.5 * (curves[..., 0] + curves[..., -1])) / steps


def _one_curve(logit_fn, x, saliency, target, substrate, *, mode, num_steps, score, chunk_size):
    height, width = saliency.shape
    n = height * width
    order = jnp.argsort(-saliency.reshape(-1), stable=True)
    position = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32)).reshape(height, width)
    target = resolve_target(logit_fn, x, target)
    per_step, extra = divmod(n, num_steps)  # floor(i * n / T) without int32 overflow

    def point(i):
        count = i * per_step + (i * extra) // num_steps
        changed = (position < count)[:, :, None]
        image = jnp.where(changed, substrate, x) if mode == "deletion" else jnp.where(changed, x, substrate)
        logits = logit_fn(image)
        value = jax.nn.softmax(logits)[target] if score == "probability" else logits[target]
        return jax.nn.one_hot(i, num_steps + 1, dtype=value.dtype) * value

    return sample_sum(point, num_steps + 1, chunk_size=chunk_size)


@functools.partial(
    jax.jit, static_argnames=("fn", "mode", "num_steps", "score", "chunk_size", "substrate_kind", "blur_sigma")
)
def _curves_batch(model, x, saliency, targets, substrate, *, fn, mode, num_steps, score, chunk_size,
                  substrate_kind, blur_sigma):
    logit_fn = fn if fn is not None else (lambda image: model.apply(image[None])[0][0])
    if substrate_kind == "zeros":
        substrate = jnp.zeros_like(x)
    elif substrate_kind == "blur":
        substrate = blur(x, blur_sigma)
    run = functools.partial(_one_curve, logit_fn, mode=mode, num_steps=num_steps, score=score, chunk_size=chunk_size)
    return jax.vmap(run)(x, saliency, targets, substrate)


def perturbation_curves(
    model_or_fn,
    x,
    saliency,
    targets="top1",
    *,
    mode: str = "deletion",
    num_steps: int = 32,
    substrate=None,
    score: str = "probability",
    blur_sigma: float = 5.0,
    chunk_size: int | None = None,
) -> jax.Array:
    """Scores of the target class as pixels are deleted or inserted by decreasing saliency.

    Args:
      model_or_fn: a ``Model``, or any per-image logit function ``[H,W,C] -> [K]``.
      x: preprocessed images ``[B,H,W,C]`` (model space), finite.
      saliency: maps ``[B,H,W]`` at the same ``H,W`` (e.g. ``saliency_map``
        output; only their order matters), finite.
      targets: ``"top1"`` (each clean image's predicted class), an int, or ints ``[B]``.
      mode: ``"deletion"`` or ``"insertion"``.
      num_steps: static number of equal steps T; the curve has T+1 points, at
        fractions ``0, 1/T, ..., 1`` of the pixels.
      substrate: what replaces deleted / precedes inserted pixels: ``"zeros"``
        (zeros in model space: the mean colour for most preprocessing),
        ``"blur"`` (a Gaussian blur of the image), or an array ``[H,W,C]`` /
        ``[B,H,W,C]`` in model space. Default: zeros for deletion, blur for
        insertion (Petsiuk et al.).
      score: ``"probability"`` (softmax of the logits, as Petsiuk et al.) or ``"logit"``.
      blur_sigma: std of the blur substrate, in pixels (static).
      chunk_size: perturbed copies per image evaluated at once (static; the
        result does not depend on it). Default: about 32 images in flight.

    Returns:
      ``[B, num_steps + 1]`` float32 curves; ``auc(curves)`` gives ``[B]``.

    Raises:
      ValueError: bad shapes, non-finite input, a target outside ``[0, K)``, or
        an unknown ``mode``/``score``/``substrate`` (one line, before compiling).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; choose one of {', '.join(SCORES)}")
    num_steps = positive_int("num_steps", num_steps)
    if chunk_size is not None:
        chunk_size = positive_int("chunk_size", chunk_size)
    if isinstance(blur_sigma, bool) or not isinstance(blur_sigma, numbers.Real) or not blur_sigma > 0:
        raise ValueError(f"blur_sigma must be a positive number, got {blur_sigma!r}")
    model = model_or_fn if isinstance(model_or_fn, Model) else None
    fn = None if model is not None else model_or_fn
    if fn is not None and not callable(fn):
        raise TypeError(f"expected a Model or a logit function, got {type(fn).__name__}")
    x = model.check_input(x) if model is not None else check_images(x)
    saliency = _check_maps(saliency, x.shape)
    num_classes = model.num_classes if model is not None else jax.eval_shape(fn, x[0]).shape[-1]
    targets = check_targets(targets, len(x), num_classes)

    substrate = DEFAULT_SUBSTRATE[mode] if substrate is None else substrate
    if isinstance(substrate, str):
        if substrate not in SUBSTRATES:
            raise ValueError(f"unknown substrate {substrate!r}; choose one of {', '.join(SUBSTRATES)} or pass an array")
        kind, array = substrate, None
    else:
        array = jnp.asarray(substrate, x.dtype)
        if array.shape not in (x.shape, x.shape[1:]):
            raise ValueError(f"substrate must be [H,W,C] or [B,H,W,C] like x {x.shape}; got shape {array.shape}")
        if not bool(jnp.all(jnp.isfinite(array))):
            raise ValueError("substrate contains NaN or Inf values")
        kind, array = "array", jnp.broadcast_to(array, x.shape)
    if chunk_size is None:
        chunk_size = default_chunk(num_steps + 1, len(x))
    return _curves_batch(
        model, x, saliency, targets, array, fn=fn, mode=mode, num_steps=num_steps, score=score,
        chunk_size=chunk_size, substrate_kind=kind, blur_sigma=float(blur_sigma),
    )


def _check_maps(saliency, x_shape):
    maps = np.asarray(saliency)
    if maps.dtype == object or not (np.issubdtype(maps.dtype, np.floating) or np.issubdtype(maps.dtype, np.integer)):
        raise ValueError(f"saliency must be real-valued maps [B,H,W]; got dtype {maps.dtype}")
    if maps.shape != tuple(x_shape[:3]):
        hint = " (reduce gradients with saliency_jax.saliency_map first)" if maps.ndim == 4 else ""
        raise ValueError(f"saliency must be [B,H,W] = {tuple(x_shape[:3])} to match x; got shape {maps.shape}{hint}")
    if not np.isfinite(maps).all():
        bad = np.unique(np.nonzero(~np.isfinite(maps))[0]).tolist()
        raise ValueError(f"saliency contains NaN or Inf values (batch indices {bad})")
    return jnp.asarray(maps, jnp.float32)


def deletion_curves(model_or_fn, x, saliency, targets="top1", **options) -> jax.Array:
    """``perturbation_curves(..., mode="deletion")``: ``[B, num_steps + 1]``, falling; lower AUC is better."""
    return perturbation_curves(model_or_fn, x, saliency, targets, mode="deletion", **options)


def insertion_curves(model_or_fn, x, saliency, targets="top1", **options) -> jax.Array:
    """``perturbation_curves(..., mode="insertion")``: ``[B, num_steps + 1]``, rising; higher AUC is better."""
    return perturbation_curves(model_or_fn, x, saliency, targets, mode="insertion", **options)


def deletion_auc(model_or_fn, x, saliency, targets="top1", **options) -> jax.Array:
    """Deletion AUC per image ``[B]`` (lower: the map found what the score depends on)."""
    return auc(deletion_curves(model_or_fn, x, saliency, targets, **options))


def insertion_auc(model_or_fn, x, saliency, targets="top1", **options) -> jax.Array:
    """Insertion AUC per image ``[B]`` (higher: the map found what the score depends on)."""
    return auc(insertion_curves(model_or_fn, x, saliency, targets, **options))
