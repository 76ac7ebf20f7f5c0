"""Ready-made settings, and the two calls most users want: `class_model` and `neuron_model`.

Presets (each a function of the model and overrides, returning `visualize` options):

- "paper": Simonyan et al. (2014), Sec. 2: argmax_I S(I) - l2 * ||I||^2 by gradient
  ascent from the zero image in the model's input space (the training mean: uint8
  127 for EfficientNet-Lite), unnormalised scores, pixels, no transforms.
- "sphere": Erhan et al. (2009): argmax S(I) subject to ||I||_2 = radius, from a
  random start projected onto the sphere after every step (`optax.projections`).
- "lucid": Olah et al. (2017): Fourier and decorrelated-colour parameterisation in
  the valid pixel range, Lucid's standard random transforms, Adam. The transforms
  pad the image by 24 pixels; a model that only runs at its own input size
  (flatten + dense) sees the central crop of that size (`transforms.CenterCrop`).
  Colour decorrelation is for RGB models; other channel counts skip it.

The valid pixel range is uint8 0..255 mapped through the model's `mean`/`std`
(`pixel_box`), and `pixels` are `model.deprocess(images)`: a model whose data are
not uint8 (e.g. x in [0, 1]) must say so with its `std` (255 there), or its class
models come out in a range that displays as almost black.

`visualize` keys its compilation on the optimiser's value (its code and
hyperparameters), so a repeat call with the same settings reuses the compiled
program although `optimizer(name, learning_rate)` builds a new optax object.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import numpy as np
import optax

from saliency_jax.maximize import objectives as _objectives
from saliency_jax.maximize import transforms as _transforms
from saliency_jax.maximize.optimize import visualize
from saliency_jax.maximize.parameterizations import LucidImage, Pixels, pixel_box

__all__ = ["PRESETS", "Visualization", "preset_options", "class_model", "neuron_model", "optimizer", "fit_to_model"]

# Defaults, measured on EfficientNet-Lite0 (see experiments/fig1_class_models.py).
PAPER = dict(num_steps=100, learning_rate=0.05, l2=1e-3)
SPHERE = dict(num_steps=150, learning_rate=0.05, radius_rms=0.5)
LUCID = dict(num_steps=256, learning_rate=0.05)

PRESETS = ("paper", "sphere", "lucid")


class Visualization(NamedTuple):
    """images [T,H,W,C] (model space), pixels uint8 [T,H,W,C] (`model.deprocess`),
    values [T,num_steps] (objective per step), norms [T,num_steps] (||image|| per step)."""

    images: np.ndarray
    pixels: np.ndarray
    values: np.ndarray
    norms: np.ndarray


def optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    """An optax optimiser: "adam" or "sgd" (momentum 0.9)."""
    if not learning_rate > 0:
        raise ValueError(f"learning rate must be positive, got {learning_rate}")
    if name == "adam":
        return optax.adam(learning_rate)
    if name == "sgd":
        return optax.sgd(learning_rate, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}; choose adam or sgd")


def preset_options(name: str, model, score, *, num_steps=None, learning_rate=None, l2=None, radius=None) -> dict:
    """`visualize` keyword arguments for preset `name` around the objective `score`.

    Args:
      name: one of `PRESETS`.
      model: the `Model` (input size and pixel range).
      score: the objective to raise (e.g. `class_score([...])`); "paper" subtracts `l2 * ||I||^2`.
      num_steps, learning_rate, l2, radius: overrides of the preset's defaults (None keeps them).
        `l2` applies to "paper"; `radius` to "sphere" (default 0.5 * sqrt(H*W*C), an RMS of 0.5).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    if name != "paper" and l2 is not None:
        raise ValueError(f"l2 applies to the 'paper' preset, not {name!r}")
    if name != "sphere" and radius is not None:
        raise ValueError(f"radius applies to the 'sphere' preset, not {name!r}")
    if l2 is not None and not (math.isfinite(l2) and l2 >= 0):
        raise ValueError(f"l2 must be a finite number >= 0, got {l2}")
    defaults = {"paper": PAPER, "sphere": SPHERE, "lucid": LUCID}[name]
    steps = defaults["num_steps"] if num_steps is None else num_steps
    lr = float(defaults["learning_rate"] if learning_rate is None else learning_rate)
    shape = (*model.input_size, model.channels)
    if name == "paper":
        lam = defaults["l2"] if l2 is None else l2
        return dict(objective=score - float(lam) * _objectives.l2(), num_steps=steps,
                    optimizer=optimizer("adam", lr), parameterization=Pixels())
    if name == "sphere":
        rho = defaults["radius_rms"] * float(np.sqrt(np.prod(shape))) if radius is None else radius
        return dict(objective=score, num_steps=steps, optimizer=optimizer("adam", lr),
                    parameterization=Pixels(init_scale=0.01), radius=rho, constraint="sphere")
    low, high = pixel_box(model)
    grey = float(np.mean([(lo + hi) / 2 for lo, hi in zip(low, high)]))
    return dict(objective=score, num_steps=steps, optimizer=optimizer("adam", lr),
                parameterization=LucidImage(low, high, decorrelate=model.channels == 3),
                transforms=fit_to_model(model, _transforms.standard(grey), shape))


def fit_to_model(model, transforms: tuple, shape) -> tuple:
    """`transforms`, ending with a central crop to `model.input_size` if the model runs at that size only."""
    seen = jax.eval_shape(lambda x: _transforms.apply(transforms, jax.random.key(0), x),
                          jax.ShapeDtypeStruct(tuple(shape), np.float32))
    try:
        model.check_size(seen.shape[:2])
    except ValueError:
        return (*transforms, _transforms.CenterCrop(*model.input_size))
    return transforms


def _finish(model, result) -> Visualization:
    return Visualization(result.image, model.deprocess(result.image), result.values, result.norms)


def class_model(model, classes, *, preset: str = "paper", key=None, chunk_size=None, steps_per_call=None,
                progress=None, **overrides) -> Visualization:
    """Class model visualisation (Simonyan et al. 2014, Sec. 2), one image per class.

    Args:
      model: a `Model`.
      classes: class index or indices [T].
      preset: "paper" (default), "sphere" or "lucid" (see the module docstring).
      key: `jax.random` key; optional for "paper" (deterministic), required otherwise.
      chunk_size, steps_per_call, progress: as in `visualize`.
      **overrides: num_steps, learning_rate, l2, radius (see `preset_options`).

    Returns:
      `Visualization` with images [T,H,W,C] (model space) and pixels uint8 [T,H,W,C].

    Example:
      >>> vis = class_model(model, [130, 285, 967])
      >>> model.predict(list(vis.pixels), top=1)
    """
    return _run(model, _objectives.class_score(classes), preset, key, chunk_size, steps_per_call, progress,
                overrides)


def neuron_model(model, layer: str, channels, *, position=None, reduce: str = "mean", preset: str = "sphere",
                 key=None, chunk_size=None, steps_per_call=None, progress=None, **overrides) -> Visualization:
    """Activation maximisation of units of a named layer, one image per channel.

    Args:
      model: a `Model`.
      layer: a name from `model.layers`.
      channels: channel index or indices [T].
      position: None (the whole channel, see `reduce`), (row, col) in the layer's grid, or "center".
      reduce: "mean" (default), "sum" or "max" of the channel over positions (`objectives.channel`).
      preset: "sphere" (default: ||I|| = radius, Erhan et al.), "paper" or "lucid".
      key, chunk_size, steps_per_call, progress, **overrides: as in `class_model`.
    """
    score = _objectives.channel(layer, channels, position=position, reduce=reduce)
    return _run(model, score, preset, key, chunk_size, steps_per_call, progress, overrides)


def _run(model, score, preset, key, chunk_size, steps_per_call, progress, overrides) -> Visualization:
    unknown = sorted(set(overrides) - {"num_steps", "learning_rate", "l2", "radius"})
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; valid: num_steps, learning_rate, l2, radius")
    options = preset_options(preset, model, score, **overrides)
    if key is None:
        if preset != "paper":
            raise ValueError(f"preset {preset!r} is random: pass key=jax.random.key(seed)")
        key = jax.random.key(0)  # unused by the deterministic paper preset
    result = visualize(model, key=key, chunk_size=chunk_size, steps_per_call=steps_per_call, progress=progress,
                       **options)
    return _finish(model, result)
