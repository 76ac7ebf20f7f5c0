"""Objectives for activation maximisation: what the optimised image should excite.

An objective is a small pytree, called as

    objective(image[H,W,C], features, logits[K]) -> scalar

on ONE image: `image` is the image being optimised, in the model's input space
(before any random transform), `features` the model's named activations for the
(transformed) image with the batch axis removed (`[h,w,K]` for spatial layers,
`[K]` for "pool"), and `logits` its unnormalised class scores (never softmax).

Objectives compose with `+`, `-` and scalar `*`:

    objective = class_score(130) - 1e-3 * l2()                # the paper, Sec. 2
    objective = channel("block9", 17) + 0.5 * channel("head", 3) - 0.1 * total_variation()

Targets live in the data leaves (class index, channel index, position, weight),
so an objective built from a sequence (`class_score([130, 285, 967])`) carries a
leading target axis and `saliency_jax.maximize.visualize` optimises one image
per target in a single vmapped program. Penalties (`l2`, `l1`,
`total_variation`, `blur`) are non-negative: subtract them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.filters import gaussian_filter
from saliency_jax.targets import REDUCTIONS, check_layer, check_reduce, check_unit, indices, show

__all__ = [
    "Objective",
    "ClassScore",
    "Channel",
    "Weighted",
    "Custom",
    "L2",
    "L1",
    "TotalVariation",
    "Blur",
    "class_score",
    "channel",
    "objective",
    "l2",
    "l1",
    "total_variation",
    "blur",
    "stack",
    "num_targets",
    "target_axes",
    "check_objective",
]


def _pytree(data: Sequence[str] = (), meta: Sequence[str] = ()):
    """Frozen dataclass registered as a pytree: `data` fields are leaves, `meta` static."""

    def wrap(cls):
        cls = dataclasses.dataclass(frozen=True, eq=False)(cls)
        return jax.tree_util.register_dataclass(cls, data_fields=list(data), meta_fields=list(meta))

    return wrap


class Objective:
    """Base class: `objective(image, features, logits) -> scalar`; composes with +, -, *."""

    def __call__(self, image, features, logits):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- composition (weights are leaves: changing them does not recompile) -------------
    def __add__(self, other):
        if not isinstance(other, Objective):
            return NotImplemented
        return Weighted(_terms(self) + _terms(other), _weights(self) + _weights(other))

    def __radd__(self, other):  # sum([...]) starts from 0
        if isinstance(other, (int, float)) and other == 0:
            return self
        return NotImplemented

    def __sub__(self, other):
        if not isinstance(other, Objective):
            return NotImplemented
        return self + (-1.0) * other

    def __mul__(self, weight):
        if isinstance(weight, Objective):
            return NotImplemented
        weight = _as_weight(weight)
        return Weighted(_terms(self), tuple(weight * w for w in _weights(self)))

    __rmul__ = __mul__

    def __neg__(self):
        return (-1.0) * self

    # -- host-side description ------------------------------------------------------
    def layers(self) -> frozenset[str]:
        """Names of the features this objective reads."""
        return frozenset()

    def _check(self, num_classes: int | None, shapes: dict) -> None:
        """Raises ValueError for targets the model does not have (host values)."""

    def _axes(self):
        """Same pytree with each leaf replaced by 0 (has a target axis) or None."""
        return self


def _as_weight(weight):
    if isinstance(weight, bool) or not isinstance(weight, (int, float, np.number, np.ndarray, jax.Array)):
        raise TypeError(f"an objective can only be scaled by a number, got {type(weight).__name__}")
    return jnp.asarray(weight, jnp.float32)


def _terms(obj):
    return obj.terms if isinstance(obj, Weighted) else (obj,)


def _weights(obj):
    return obj.weights if isinstance(obj, Weighted) else (jnp.float32(1.0),)


def _target_axis(leaf, per_target_ndim: int):
    return 0 if np.ndim(leaf) > per_target_ndim else None


# ---- scores -------------------------------------------------------------------------------
@_pytree(data=["index"])
class ClassScore(Objective):
    """S_c: the unnormalised score (logit) of class `index` (int32 scalar, or [T])."""

    index: Any

    def __call__(self, image, features, logits):
        return logits[self.index]

    def _check(self, num_classes, shapes):
        index = np.asarray(self.index)
        if num_classes is not None and (index.min() < 0 or index.max() >= num_classes):
            bad = index[(index < 0) | (index >= num_classes)].tolist()
            raise ValueError(f"class index {show(bad)} out of range [0, {num_classes})")

    def _axes(self):
        return ClassScore(_target_axis(self.index, 0))


@_pytree(data=["index", "position"], meta=["layer", "center", "reduce"])
class Channel(Objective):
    """One unit of a named layer: channel `index` reduced over positions, or at one position.

    `position` is (row, col) in the layer's own grid (int32 [2], or [T,2]);
    `center=True` takes the middle of the grid (Lucid's "neuron"); neither: the
    whole channel reduced by `reduce`, a key of `saliency_jax.targets.REDUCTIONS`
    ("mean", the default, is Lucid's "channel"; "sum" is what attribution's
    `unit()` explains by default). Non-spatial layers ([K], e.g. "pool") take
    neither.
    """

    layer: str
    index: Any
    position: Any = None
    center: bool = False
    reduce: str = "mean"

    def __call__(self, image, features, logits):
        act = features[self.layer]
        if act.ndim == 1:
            return act[self.index]
        if self.center:
            return act[act.shape[0] // 2, act.shape[1] // 2, self.index]
        if self.position is not None:
            return act[self.position[..., 0], self.position[..., 1], self.index]
        return REDUCTIONS[self.reduce](act[..., self.index])

    def layers(self):
        return frozenset({self.layer})

    def _check(self, num_classes, shapes):
        check_unit(self.layer, self.index, self.position, shapes, center=self.center)

    def _axes(self):
        position = None if self.position is None else _target_axis(self.position, 1)
        return Channel(self.layer, _target_axis(self.index, 0), position, self.center, self.reduce)


@_pytree(data=["terms", "weights"])
class Weighted(Objective):
    """sum_i weights[i] * terms[i](image, features, logits)."""

    terms: tuple
    weights: tuple

    def __call__(self, image, features, logits):
        return sum(w * t(image, features, logits) for t, w in zip(self.terms, self.weights))

    def layers(self):
        return frozenset().union(*(t.layers() for t in self.terms))

    def _check(self, num_classes, shapes):
        for term in self.terms:
            term._check(num_classes, shapes)

    def _axes(self):
        return Weighted(tuple(t._axes() for t in self.terms), tuple(_target_axis(w, 0) for w in self.weights))


@_pytree(data=["params"], meta=["fn", "needs"])
class Custom(Objective):
    """Any function of (image, features, logits[, params]) -> scalar.

    `params` (optional) is a pytree whose leaves all carry a leading target axis;
    each target's slice is passed as the fourth argument. `needs` names the
    layers `fn` reads (checked against the model before compiling).
    """

    fn: Callable
    params: Any = None
    needs: tuple = ()

    def __call__(self, image, features, logits):
        if self.params is None:
            return self.fn(image, features, logits)
        return self.fn(image, features, logits, self.params)

    def layers(self):
        return frozenset(self.needs)

    def _check(self, num_classes, shapes):
        for name in self.needs:
            check_layer(name, shapes)

    def _axes(self):
        return Custom(self.fn, jax.tree.map(lambda _: 0, self.params), self.needs)


# ---- penalties on the image (subtract them) ---------------------------------------------
@_pytree()
class L2(Objective):
    """||image||_2^2, the paper's regulariser (Sec. 2)."""

    def __call__(self, image, features, logits):
        return jnp.sum(jnp.square(image))


@_pytree()
class L1(Objective):
    """||image||_1."""

    def __call__(self, image, features, logits):
        return jnp.sum(jnp.abs(image))


@_pytree()
class TotalVariation(Objective):
    """Anisotropic total variation: sum of |differences| between neighbouring pixels."""

    def __call__(self, image, features, logits):
        return jnp.sum(jnp.abs(jnp.diff(image, axis=0))) + jnp.sum(jnp.abs(jnp.diff(image, axis=1)))


@_pytree(meta=["sigma"])
class Blur(Objective):
    """0.5 ||image - stop_gradient(gaussian_filter(image, sigma))||^2 (Lucid's blur_input_each_step).

    The blur is `saliency_jax.filters.gaussian_filter` (mirrored edges). Its
    gradient is image - blur(image): ascending `-blur()` moves the image
    towards its blurred copy, a smoothness prior.
    """

    sigma: float = 1.0

    def __call__(self, image, features, logits):
        target = jax.lax.stop_gradient(gaussian_filter(image, self.sigma, axes=(0, 1)))
        return 0.5 * jnp.sum(jnp.square(image - target))


# ---- constructors -------------------------------------------------------------------------
def class_score(classes) -> ClassScore:
    """The unnormalised score S_c of a class (int) or of each of several classes (ints [T]).

    Example:
      >>> objective = class_score([130, 285, 967]) - 1e-3 * l2()   # three class models
    """
    return ClassScore(indices(classes, "class_score: classes"))


def channel(layer: str, channels, *, position=None, reduce: str = "mean") -> Channel:
    """Channel `channels` (int or ints [T]) of the named layer, as one number per target.

    Args:
      layer: a name from `model.layers`.
      channels: channel index or indices [T].
      position: None (the whole channel, see `reduce`), (row, col) or [T,2] in the
        layer's grid, or "center".
      reduce: "mean" (default), "sum" or "max" over the positions, without a
        position (`saliency_jax.targets.REDUCTIONS`; `unit()` defaults to "sum").
    """
    if not isinstance(layer, str):
        raise ValueError(f"channel: layer must be a layer name (str), got {layer!r}")
    reduce = check_reduce(reduce, "channel")
    index = indices(channels, "channel: channels")
    if isinstance(position, str):
        if position != "center":
            raise ValueError(f"position must be (row, col), [T,2] or 'center', got {position!r}")
        return Channel(layer, index, None, True, reduce)
    if position is not None:
        position = np.asarray(position)
        if not np.issubdtype(position.dtype, np.integer) or position.shape[-1:] != (2,) or position.ndim > 2:
            raise ValueError(f"position must be (row, col), [T,2] or 'center', got {position.tolist()!r}")
        position = jnp.asarray(position, jnp.int32)
    return Channel(layer, index, position, False, reduce)


def objective(fn: Callable, params=None, *, layers: Sequence[str] = ()) -> Custom:
    """Wraps any `fn(image, features, logits[, params]) -> scalar` as an objective.

    Args:
      fn: the function; keep the same object between calls (it keys the compilation cache).
      params: optional pytree with a leading target axis on every leaf; target t's
        slice is passed as the fourth argument.
      layers: names of the features `fn` reads, checked before compiling.
    """
    if not callable(fn):
        raise TypeError(f"objective: expected a callable, got {type(fn).__name__}")
    if params is not None:
        params = jax.tree.map(jnp.asarray, params)
    return Custom(fn, params, tuple(layers))


l2 = L2
l1 = L1
total_variation = TotalVariation


def blur(sigma: float = 1.0) -> Blur:
    """The Lucid blur penalty with a Gaussian of std `sigma` pixels (see `Blur`)."""
    if not sigma > 0:
        raise ValueError(f"blur: sigma must be positive, got {sigma}")
    return Blur(float(sigma))


def stack(objectives: Sequence[Objective]) -> Objective:
    """One batched objective from several of the same structure (same layers/terms), target axis 0."""
    objectives = list(objectives)
    if not objectives:
        raise ValueError("stack: expected at least one objective")
    structures = {jax.tree.structure(o) for o in objectives}
    if len(structures) > 1:
        raise ValueError("stack: objectives differ in structure (layers, terms); stack alike objectives only")
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *objectives)


# ---- batching helpers -----------------------------------------------------------------------
def target_axes(obj: Objective):
    """A pytree prefix for `jax.vmap(in_axes=...)`: 0 for leaves with a target axis, else None."""
    return obj._axes()


def num_targets(obj: Objective) -> int | None:
    """Length of the target axis (None if the objective has none).

    Raises:
      ValueError: batched leaves disagree in length.
    """
    sizes = set()
    jax.tree.map(
        lambda axis, leaf: sizes.add(int(np.shape(leaf)[0])) if axis == 0 else None,
        target_axes(obj), obj, is_leaf=lambda x: x is None,
    )
    if len(sizes) > 1:
        raise ValueError(f"objective terms have different numbers of targets: {sorted(sizes)}")
    return sizes.pop() if sizes else None


def broadcast_targets(obj: Objective, n: int) -> Objective:
    """Every leaf given a leading target axis of length n (unbatched leaves repeated)."""
    axes = target_axes(obj)
    return jax.tree.map(
        lambda axis, leaf: leaf if leaf is None or axis == 0 else jnp.broadcast_to(leaf, (n,) + np.shape(leaf)),
        axes, obj, is_leaf=lambda x: x is None,
    )


def check_objective(obj, *, num_classes: int | None, shapes: dict) -> None:
    """Host-side validation: classes, layers, channels and positions exist.

    Args:
      obj: an `Objective`.
      num_classes: K, or None if unknown.
      shapes: {layer: per-image feature shape} (empty for a bare logit function).

    Raises:
      TypeError: not an Objective. ValueError: a target the model does not have.
    """
    if not isinstance(obj, Objective):
        raise TypeError(
            f"expected an Objective (e.g. class_score(c), channel(layer, k)), got {type(obj).__name__}"
        )
    num_targets(obj)
    obj._check(num_classes, shapes)
