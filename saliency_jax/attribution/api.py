"""`attribute`: every method, batched with `jax.vmap` and compiled once per shape.

    maps = saliency_jax.attribute(model, x, "top1", method="smoothgrad", key=jax.random.key(0))

Input checks (rank, channels, finiteness, target range, method and option names)
happen on the host before anything is compiled, so a bad call fails with one
clear `ValueError`. Static options (sample counts, chunk sizes, layer names)
key the compilation cache; a second call with the same shapes and options does
not recompile.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.attribution import gradcam as _gradcam
from saliency_jax.attribution.gradients import TOP1, class_gradient, gradient_x_input
from saliency_jax.attribution.integrated_gradients import DEFAULT_NUM_STEPS, integrated_gradients
from saliency_jax.attribution.rules import backward_rule
from saliency_jax.attribution.smoothgrad import DEFAULT_NUM_SAMPLES, smoothgrad
from saliency_jax.attribution.units import UnitTarget, check_unit_target
from saliency_jax.batching import map_batches
from saliency_jax.models.model import Model


def _rule_gradient(rule: str):
    return lambda logit_fn, x, target: class_gradient(backward_rule(logit_fn, rule), x, target)


@dataclasses.dataclass(frozen=True)
class Method:
    """How to run one attribution method on one image.

    `run(model, score_fn, x, target, key, baseline, **options) -> [H,W,C]`, where
    `score_fn(x[H,W,C]) -> scores[K]` is the logit function for class targets, or
    a layer's per-channel scores for unit targets, and `target` indexes it.
    """

    run: Callable
    options: tuple[str, ...] = ()
    needs_model: bool = False
    needs_key: bool = False
    class_only: bool = False  # explains a class through the model's own logits (no unit targets)
    doc: str = ""


AUTO_CHUNK_IMAGES = 32  # default chunk_size keeps ~this many images (batch x samples) in flight
_SG_OPTIONS = ("num_samples", "noise_scale", "chunk_size")
_IG_OPTIONS = ("num_steps", "rule", "chunk_size")

METHODS: dict[str, Method] = {
    "vanilla": Method(lambda m, f, x, t, k, b: class_gradient(f, x, t), doc="dS_c/dx (Simonyan et al. 2014)"),
    "gradient_x_input": Method(lambda m, f, x, t, k, b: gradient_x_input(f, x, t), doc="x * dS_c/dx"),
    "deconvnet": Method(lambda m, f, x, t, k, b: _rule_gradient("deconvnet")(f, x, t), doc="Zeiler & Fergus rule"),
    "guided": Method(lambda m, f, x, t, k, b: _rule_gradient("guided")(f, x, t), doc="guided backprop"),
    "smoothgrad": Method(
        lambda m, f, x, t, k, b, **o: smoothgrad(f, x, t, key=k, variant="mean", **o),
        _SG_OPTIONS, needs_key=True, doc="mean gradient over noisy copies",
    ),
    "smoothgrad_squared": Method(
        lambda m, f, x, t, k, b, **o: smoothgrad(f, x, t, key=k, variant="squared", **o),
        _SG_OPTIONS, needs_key=True, doc="mean squared gradient over noisy copies",
    ),
    "vargrad": Method(
        lambda m, f, x, t, k, b, **o: smoothgrad(f, x, t, key=k, variant="var", **o),
        _SG_OPTIONS, needs_key=True, doc="variance of the gradient over noisy copies",
    ),
    "guided_smoothgrad": Method(
        lambda m, f, x, t, k, b, **o: smoothgrad(f, x, t, key=k, gradient_fn=_rule_gradient("guided"), **o),
        _SG_OPTIONS, needs_key=True, doc="SmoothGrad of guided backprop",
    ),
    "ig": Method(
        lambda m, f, x, t, k, b, **o: integrated_gradients(f, x, t, baseline=b, **o),
        _IG_OPTIONS, doc="integrated gradients",
    ),
    "gradcam": Method(
        lambda m, f, x, t, k, b, **o: _gradcam.gradcam(m, x, t, **o), ("layer",), needs_model=True, class_only=True,
        doc="Grad-CAM"
    ),
    "guided_gradcam": Method(
        lambda m, f, x, t, k, b, **o: _gradcam.guided_gradcam(m, x, t, **o),
        ("layer",), needs_model=True, class_only=True, doc="guided backprop x Grad-CAM",
    ),
}


def balanced_chunk(num_samples: int, max_chunk: int) -> int:
    """The smallest chunk that covers num_samples in as few chunks as max_chunk allows (least padding)."""
    num_chunks = -(-num_samples // max(1, max_chunk))
    return -(-num_samples // num_chunks)


def available_methods() -> list[str]:
    """Names accepted by `attribute(method=...)`."""
    return list(METHODS)


def attribute(
    model_or_fn, x, targets="top1", *, method: str = "vanilla", key=None, baseline=None, batch_size=None, **options
):
    """Attribution maps for a batch: x [B,H,W,C] -> [B,H,W,C] (gradient-shaped).

    Args:
      model_or_fn: a `Model`, or any per-image logit function `[H,W,C] -> [K]`.
      x: preprocessed images [B,H,W,C] (model space), finite.
      targets: "top1" (each image's predicted class), an int, ints [B], or a
        unit of a named layer, `saliency_jax.attribution.unit(layer, channel[, position])`
        (a `Model` only; not for Grad-CAM), whose activation is then explained.
      method: one of `available_methods()`.
      key: `jax.random` key; required by the noise-based methods. Every image in
        the batch uses the same key, so a map does not depend on its batch neighbours.
      baseline: Integrated Gradients baseline, [H,W,C] or [B,H,W,C] (default zeros).
      batch_size: if set, x goes through in padded batches of this size (one
        compilation) and the result is gathered in host memory (np.ndarray).
      **options: the method's static options (e.g. num_samples, num_steps,
        chunk_size, rule, noise_scale, layer). For SmoothGrad/IG, chunk_size
        defaults to ceil(32 / batch): about 32 images' activations in flight.

    Returns:
      [B,H,W,C] (jax.Array, or np.ndarray with batch_size); reduce with
      `saliency_jax.saliency_map`.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    spec = METHODS[method]
    model = model_or_fn if isinstance(model_or_fn, Model) else None
    fn = None if model is not None else model_or_fn
    if fn is not None and not callable(fn):
        raise TypeError(f"expected a Model or a logit function, got {type(fn).__name__}")
    if spec.needs_model and model is None:
        raise ValueError(f"method {method!r} needs a Model with named layers, not a bare logit function")
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        valid = ", ".join(spec.options) or "none"
        raise ValueError(f"method {method!r} got unknown option(s) {', '.join(unknown)}; valid options: {valid}")
    if spec.needs_key and key is None:
        raise ValueError(f"method {method!r} is random: pass key=jax.random.key(seed)")
    if baseline is not None and method != "ig":
        raise ValueError(f"baseline is only used by method 'ig', not {method!r}")
    if "layer" in spec.options:
        options = _gradcam.with_layer(model, options)

    x = check_images(x, model)
    if "chunk_size" in spec.options and options.get("chunk_size") is None:
        # Bound memory by default: about AUTO_CHUNK_IMAGES images' activations in flight at once.
        images_per_call = len(x) if batch_size is None else min(batch_size, len(x))
        samples = options.get("num_samples", options.get("num_steps", DEFAULT_NUM_STEPS if method == "ig"
                                                           else DEFAULT_NUM_SAMPLES))
        options["chunk_size"] = balanced_chunk(samples, -(-AUTO_CHUNK_IMAGES // images_per_call))
    if isinstance(targets, UnitTarget):
        if spec.class_only:
            raise ValueError(f"method {method!r} explains a class score; unit targets work with: "
                             f"{', '.join(m for m, s in METHODS.items() if not s.class_only)}")
        targets = check_unit_target(targets, model, x.shape[1:], len(x))
    else:
        num_classes = model.num_classes if model is not None else jax.eval_shape(fn, x[0]).shape[-1]
        targets = check_targets(targets, len(x), num_classes)
    if key is None:
        key = jax.random.key(0)  # unused by deterministic methods; keeps one signature
    if baseline is not None:
        baseline = jnp.broadcast_to(jnp.asarray(baseline, x.dtype), x.shape)
    run = functools.partial(_attribute_batch, fn=fn, method=method, options=tuple(sorted(options.items())))
    if batch_size is None:
        return run(model, x, targets, key, baseline)
    leaves, treedef = jax.tree.flatten(targets)  # a unit target's channel [B] (and position [B,2])
    arrays = (x, *leaves) if baseline is None else (x, *leaves, baseline)

    def run_chunk(x, *rest):
        t = jax.tree.unflatten(treedef, rest[: len(leaves)])
        return run(model, x, t, key, rest[len(leaves)] if baseline is not None else None)

    return map_batches(run_chunk, arrays, batch_size)


@functools.partial(jax.jit, static_argnames=("fn", "method", "options"))
def _attribute_batch(model, x, targets, key, baseline, *, fn, method, options):
    spec = METHODS[method]
    logit_fn = fn if fn is not None else (lambda image: model.apply(image[None])[0][0])

    def one(xi, ti, bi):
        if isinstance(ti, UnitTarget):  # the layer's channel scores take the logits' place
            return spec.run(model, ti.scores(model), xi, ti.channel, key, bi, **dict(options))
        return spec.run(model, logit_fn, xi, ti, key, bi, **dict(options))

    return jax.vmap(one)(x, targets, baseline)


def check_images(x, model):
    """x as a float jax.Array [B,H,W,C], or a one-line ValueError (rank, channels, dtype, NaN/Inf)."""
    shape = getattr(x, "shape", None)
    if shape is None:
        x = np.asarray(x)
        shape = x.shape
    if len(shape) != 4:
        raise ValueError(f"x must be a batch of images [B,H,W,C]; got shape {tuple(shape)}")
    if model is not None and shape[-1] != 3:
        raise ValueError(f"{model.name} expects 3 colour channels; got x with shape {tuple(shape)}")
    if shape[0] == 0:
        raise ValueError("x is an empty batch")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be float (preprocessed, model space); got dtype {x.dtype}: use model.preprocess")
    if not bool(jnp.all(jnp.isfinite(x))):
        bad = np.unique(np.nonzero(~np.isfinite(np.asarray(x)))[0]).tolist()
        raise ValueError(f"x contains NaN or Inf values (batch indices {bad})")
    return x


def check_targets(targets, batch: int, num_classes: int):
    """'top1' / int / ints [B] -> int32 [B] (TOP1 for 'top1'), or a one-line ValueError."""
    if isinstance(targets, str):
        if targets != "top1":
            raise ValueError(f"targets must be 'top1', an int or ints [B]; got {targets!r}")
        return jnp.full((batch,), TOP1, jnp.int32)
    t = np.asarray(targets)
    if not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"targets must be integer class indices; got dtype {t.dtype}")
    if t.ndim == 0:
        t = np.full((batch,), int(t))
    if t.shape != (batch,):
        raise ValueError(f"targets must have shape [{batch}] (one per image); got {t.shape}")
    if t.min() < 0 or t.max() >= num_classes:
        raise ValueError(f"targets must lie in [0, {num_classes}); got {t.min()}..{t.max()}")
    return jnp.asarray(t, jnp.int32)
