"""`attribute`: any method value on a batch, vmapped and compiled once per (value, shapes).

    maps = saliency_jax.attribute(model, x, "top1", method="smoothgrad", key=jax.random.key(0))
    maps = saliency_jax.attribute(model, x, "top1", method=SmoothGrad(num_samples=8), key=key)

Input checks (rank, channels, finiteness, targets, the method's options against
the model) happen on the host before anything is compiled, so a bad call fails
with one clear `ValueError`. The method value is a pytree argument of the one
compiled function `attribute_batch`: equal values share a compilation, and
traced options (a baseline, a noise scale) never recompile.
"""

from __future__ import annotations

import contextlib
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax import progress as progress_lib
from saliency_jax.attribution.units import UnitTarget, check_unit_target
from saliency_jax.batching import map_batches
from saliency_jax.methods.base import Method, as_method, available_methods, is_model, option_names
from saliency_jax.models import is_zoo_model
from saliency_jax.models.inspect import layer_shapes
from saliency_jax.program_cache import cached_call
from saliency_jax.targets import check_targets
from saliency_jax.validate import check_images, optional_positive_int


def attribute(model_or_fn, x, targets="top1", *, method="vanilla", key=None, baseline=None, batch_size=None,
              progress=None, **options):
    """Attribution maps for a batch: x [B,H,W,C] -> [B,H,W,C] (gradient-shaped).

    Args:
      model_or_fn: a `Model`, or any per-image logit function `[H,W,C] -> [K]`.
      x: preprocessed images [B,H,W,C] (model space), finite.
      targets: "top1" (each image's predicted class), an int, ints [B], or a
        unit of a named layer, `saliency_jax.attribution.unit(layer, channel[, position])`
        (a `Model` only; not for Grad-CAM), whose activation is then explained.
      method: a method value (`saliency_jax.methods.SmoothGrad(...)`, or your own
        `Method`), or a registered name (`available_methods()`) with `**options`.
      key: `jax.random` key; required by the random methods. Every image in
        the batch uses the same key, so a map does not depend on its batch neighbours.
      baseline: the method's baseline (Integrated Gradients), [H,W,C] or per image [B,H,W,C].
      batch_size: if set, x goes through in batches of exactly this size (the
        last one padded: one compilation) and the result is gathered in host memory.
      progress: True (a tqdm bar over images, moving once per chunk of the inner
        sample axis), a callable `report(n)` (called with fractions of an image as
        chunks finish, summing to B), or None / False (nothing: the compiled program
        has no callback). A separate compilation; the result is the same.
      **options: with a method name, its options (e.g. num_samples, num_steps,
        chunk_size, quadrature, noise_scale, layer). chunk_size defaults to about
        32 images (batch x samples) in flight.

    Returns:
      [B,H,W,C] (jax.Array, or np.ndarray with batch_size); reduce with
      `saliency_jax.saliency_map`.
    """
    method = as_method(method, **options)
    model = model_or_fn if is_model(model_or_fn) else None
    fn = None if model is not None else model_or_fn
    if fn is not None and not callable(fn):
        raise TypeError(f"expected a Model or a logit function, got {type(fn).__name__}")
    if method.needs_key and key is None:
        raise ValueError(f"method {method.label!r} is random: pass key=jax.random.key(seed)")
    batch_size = optional_positive_int("batch_size", batch_size)
    x = model.check_input(x) if model is not None else check_images(x)
    method = method.for_images(x)
    images_per_call = len(x) if batch_size is None else batch_size
    method, per_image = _with_baseline(method, baseline, x.shape)
    method = method.prepare(model_or_fn, x.shape[1:], images_per_call=images_per_call)
    check_memory(model, method, x.shape[1:], images_per_call)
    targets = _check_targets(method, targets, model, fn, x)
    key = jax.random.key(0) if key is None else key  # unused by deterministic methods; keeps one signature
    if progress:  # chunk ticks are host callbacks, which jax.export cannot store: never the program cache
        return _attribute_with_progress(method, model, fn, x, targets, key, per_image, batch_size, progress)
    if fn is None:  # a zoo model's program is stored when the program cache is on (a new process skips tracing)
        run = functools.partial(cached_call, attribute_batch, method, name="attribute_batch",
                                storable=is_zoo_model(model))
    else:
        run = functools.partial(attribute_batch, method, fn=fn)
    return _run_batched(run, model, x, targets, key, per_image, batch_size)


def _attribute_with_progress(method, model, fn, x, targets, key, per_image, batch_size, progress):
    """`attribute`'s run under `progress` (see there): each call blocks on its result before the next."""
    def run(*args):
        return jax.block_until_ready(attribute_batch(method, *args, fn=fn, progress=True))

    with progress_lib.reporter(progress, len(x), desc=method.label) as report:
        around = functools.partial(progress_lib.forwarding, report)
        return _run_batched(run, model, x, targets, key, per_image, batch_size, around=around)


def _run_batched(run, model, x, targets, key, per_image, batch_size, around=None):
    """`run(model, x, targets, key, per_image)` at once, or in padded chunks of exactly `batch_size` (host result).

    around: `around(images, padded=n)`, a context entered around each call, with the call's
    real images and the images it computes (the last chunk is padded).
    """
    around = around or (lambda images, padded: contextlib.nullcontext())
    if batch_size is None:
        with around(len(x), padded=len(x)):
            return run(model, x, targets, key, per_image)
    leaves, treedef = jax.tree.flatten((targets, per_image))  # a unit target's channel [B], per-image fields
    starts = iter(range(0, len(x), batch_size))

    def run_chunk(xb, *rest):
        t, p = jax.tree.unflatten(treedef, rest)
        with around(min(batch_size, len(x) - next(starts)), padded=len(xb)):
            return run(model, xb, t, key, p)

    return map_batches(run_chunk, (x, *leaves), batch_size, exact=True)


@functools.partial(jax.jit, static_argnames=("fn", "progress"))
def attribute_batch(method: Method, model, x, targets, key, per_image=None, *, fn=None, progress: bool = False):
    """The compiled batch: `method.explain` vmapped over x [B,H,W,C] and targets [B] (a prepared method).

    Args:
      method: a prepared method value (`method.prepare(...)`); a pytree argument,
        so equal values share this compilation.
      model: the `Model` (None with `fn`).
      x: images [B,H,W,C]; targets: int32 [B] or a checked `UnitTarget`.
      key: the one key every image uses.
      per_image: {field: [B,...]} values of the method's `per_image` fields, or None.
      fn: a bare logit function instead of a model (static).
      progress: trace the outermost sample sums with a chunk tick (`saliency_jax.progress`; static).
    """
    def one(xi, ti, pi):
        m = method.with_values(**pi) if pi else method
        if isinstance(ti, UnitTarget):  # the layer's channel scores take the logits' place
            return m.explain(ti.scores(model), xi, ti.channel, key=key)
        return m.explain(model if fn is None else fn, xi, ti, key=key)

    with progress_lib.reporting_chunks(progress):
        return jax.vmap(one)(x, targets, per_image or {})


MEMORY_FRACTION = 0.8  # of the free memory a call may plan to use


def check_memory(model, method: Method, image_shape, images_per_call: int, *, free: int | None = None) -> None:
    """ValueError, before compiling, when one call's images in flight clearly cannot fit in free memory.

    The estimate is a lower bound: 3 x (the image and every named feature of the
    model, float32) per image in flight (forward values, the residuals kept for
    the backward pass, cotangents), times images_per_call x the inner samples of
    a chunk. Free memory is the device's (`memory_stats`) or, on CPU,
    `MemAvailable` of /proc/meminfo; no check where neither is known.
    """
    free = free_memory() if free is None else free
    if free is None:
        return
    per_image = 4 * math.prod(image_shape)
    if model is not None:
        per_image += 4 * sum(math.prod(s) for s in layer_shapes(model, tuple(image_shape)).values())
    samples = (getattr(method, "chunk_size", None) or 1) if method.inner is not None else 1
    in_flight = images_per_call * samples * method.images_per_sample()
    need = 3 * per_image * in_flight
    if need <= MEMORY_FRACTION * free:
        return
    fit = max(1, int(MEMORY_FRACTION * free // (3 * per_image * method.images_per_sample())))
    gib = 2.0**30
    advice = (f"chunk_size={max(1, fit // images_per_call)}" if method.inner is not None and fit >= images_per_call
              else f"batch_size={fit}" + (", chunk_size=1" if method.inner is not None else ""))
    raise ValueError(f"method {method.label!r} would need about {need / gib:.1f} GiB for {in_flight} images in "
                     f"flight ({images_per_call} per call x {samples * method.images_per_sample()} samples), "
                     f"{free / gib:.1f} GiB are free: pass {advice}")


def free_memory() -> int | None:
    """Free bytes on the default device: its allocator's limit minus use, or MemAvailable on CPU; None if unknown."""
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _with_baseline(method: Method, baseline, batch_shape):
    """(method with a shared baseline set, {field: per-image values}) from `attribute`'s baseline argument."""
    per_image = {}
    for name in method.per_image:  # fields given per image [B,...] are split off for the vmap
        value, one = getattr(method, name), method.per_image_shape(name, batch_shape[1:])
        if value is not None and np.ndim(value) == len(one) + 1:
            per_image[name] = _per_image(name, value, (batch_shape[0], *one))
            method = method.with_values(**{name: None})
    if baseline is None:
        return method, per_image
    if "baseline" not in method.per_image:
        users = [n for n in available_methods() if "baseline" in option_names(n)]
        raise ValueError(f"baseline is only used by methods with a baseline ({', '.join(users)}), "
                         f"not {method.label!r}")
    if np.ndim(baseline) == len(batch_shape):
        return method, {**per_image, "baseline": _per_image("baseline", baseline, batch_shape)}
    return method.with_values(baseline=jnp.asarray(baseline, jnp.float32)), per_image


def _per_image(name: str, value, batch_shape):
    array = jnp.asarray(value)  # integer and boolean fields (segment maps, masks) keep their dtype
    if not (jnp.issubdtype(array.dtype, jnp.integer) or array.dtype == jnp.bool_):
        array = array.astype(jnp.float32)
    if array.shape != tuple(batch_shape):
        what = "[H,W,C] or [B,H,W,C] like x" if len(batch_shape) == 4 else "given per image of shape"
        raise ValueError(f"{name} must be {what} {tuple(batch_shape)}; got shape {array.shape}")
    return array


def _check_targets(method: Method, targets, model, fn, x):
    if isinstance(targets, UnitTarget):
        if method.class_only:
            raise ValueError(f"method {method.label!r} explains a class score; unit targets work with the "
                             "gradient methods (vanilla, guided, smoothgrad, ig, ...)")
        return check_unit_target(targets, model, x.shape[1:], len(x))
    num_classes = model.num_classes if model is not None else _num_classes(fn, x[0])
    return check_targets(targets, len(x), num_classes)


def _num_classes(fn, image) -> int:
    out = jax.eval_shape(fn, image)
    if not hasattr(out, "shape") or len(out.shape) != 1:
        shape = getattr(out, "shape", type(out).__name__)
        raise ValueError(f"a logit function must return one score vector [K] per image [H,W,C]; got {shape}")
    return out.shape[0]


__all__ = ["MEMORY_FRACTION", "attribute", "attribute_batch", "check_memory", "free_memory"]
