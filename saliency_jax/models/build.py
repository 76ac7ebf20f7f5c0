"""Turning a user's classifier into a `Model`: the adapter contract and the checks made once, at construction.

An adapter is a small linen module, `adapter.apply(variables, x[B,H,W,C]) ->
(logits[B,K], {layer: feature[B,h,w,K]})`, that runs the user's computation
and *taps* named layers: each tapped activation is recorded channels-last as a
feature and is a perturbation point (collection "perturbations", as in the zoo
models), which is how Grad-CAM and the maximisation objectives reach it.

`build_model` checks, abstractly and before anything compiles, that the model
returns logits [B,K] for the declared input size and channel count, that the
requested layers exist and run once, that each layer's layout is known
(`saliency_jax.models.layouts`) and that each tapped layer reaches the logits
(`saliency_jax.models.dependence`): a tap whose value is dropped would give an
all-zero Grad-CAM.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.models.dependence import needed_inputs
from saliency_jax.models.layouts import check_layout, check_spatial_axes, declared_layouts, from_hwc, hwc_shape, to_hwc
from saliency_jax.models.model import Model

Tap = Callable[[str, jax.Array], jax.Array]
CHECK_BATCH = 2  # batch size of the construction-time shape traces
UNUSED_OUTPUT = ": its output is not used by the logits, so nothing can be explained through it"


@dataclasses.dataclass(frozen=True)
class Taps:
    """What an adapter taps (static).

    Attributes:
      layers: the layer names to record, or None: discovery mode (every tap call is
        listed, in call order, and nothing is perturbed).
      layouts: (layer, "HWC" | "CHW") for the recorded layers.
      input_layout: the layout the user's model takes its input in (the `Model` always takes HWC).
    """

    layers: tuple[str, ...] | None = None
    layouts: tuple[tuple[str, str], ...] = ()
    input_layout: str = "HWC"

    def layout(self, layer: str) -> str:
        return dict(self.layouts).get(layer, "HWC")


@dataclasses.dataclass(frozen=True, eq=False)
class Frozen:
    """A static field holding an unhashable object (a Keras model, an Equinox static tree), by identity."""

    value: Any


def perturb_point(module: nn.Module, name: str, y):
    """`y` plus the perturbation variable `name`, if one is given (or the collection is mutable).

    Like `Module.perturb`, but reads/writes the variable without reserving the
    name in the scope, so a layer may share its name with a submodule (the
    linen adapter shares the user module's scope: layer "Conv_0" is also a
    child scope there).
    """
    if module.is_mutable_collection("perturbations") and not module.has_variable("perturbations", name):
        module.put_variable("perturbations", name, jnp.zeros_like(y))
    if module.has_variable("perturbations", name):
        y = y + module.get_variable("perturbations", name)
    return y


def record_tap(taps: Taps, name: str, y, perturb: Callable):
    """(the activation to hand back to the user's model, the feature [...,h,w,K]) of tapped layer `name`.

    The feature is `perturb` of the channels-last view of y; the model gets it back in its own layout.
    """
    layout = taps.layout(name)
    h = perturb(to_hwc(y, layout))
    return from_hwc(h, layout), h


class Adapter(nn.Module):
    """Base: `__call__(x[B,H,W,C]) -> (logits[B,K], {layer: feature})`; subclasses run `_run(x, tap)`.

    Subclasses declare a `taps: Taps` field (last). In discovery mode the
    features are instead a list of `{name: activation}`, one per tap call in
    call order (a list, because pytree dicts come back with sorted keys).
    """

    def _run(self, x, tap: Tap):  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x):
        feats: dict[str, Any] = {}
        calls: list[dict[str, Any]] = []

        def tap(name: str, y):
            if self.taps.layers is None:
                calls.append({name: y})
            elif name in self.taps.layers:
                y, feats[name] = record_tap(self.taps, name, y, lambda h: perturb_point(self, name, h))
            return y

        logits = self._run(from_hwc(x, self.taps.input_layout), tap)
        return logits, (calls if self.taps.layers is None else feats)


@dataclasses.dataclass(frozen=True)
class Spec:
    """What the user declares about their model (the keyword arguments every `from_*` shares)."""

    input_size: Any
    layers: Sequence[str] = ()
    channels: int = 3
    layouts: Any = None
    mean: Any = 0.0
    std: Any = 1.0
    labels: Sequence[str] | None = None


def build_model(adapter: Adapter, variables, spec: Spec, name: str, *, default_layout: str = "HWC",
                no_layers_hint: str = "it exposes no layers", unused_hint: str = "") -> Model:
    """A checked `Model` around `adapter` (in discovery mode, `taps=Taps(None, (), input_layout)`).

    Args:
      adapter: the adapter in discovery mode.
      variables: its variables (the `Model`'s pytree leaves).
      spec: the user's declarations.
      name: the model's name, for messages.
      default_layout: the layout of a layer `spec.layouts` does not name.
      no_layers_hint: the end of the message for an unknown layer when there are none.
      unused_hint: appended to the message for a layer that does not reach the logits.
    """
    size, channels = _check_spec(adapter, spec, name)
    variables = jax.tree.map(jnp.asarray, variables)
    num_classes, calls = _trace(adapter, variables, size, channels, name)
    layers = _check_layers(calls, spec.layers, name, no_layers_hint)
    layouts = declared_layouts(spec.layouts, layers, check_layout(default_layout, "layout"))
    _check_layouts(adapter, variables, calls, layouts, dict(spec.layouts or {}), size, channels, name)
    module = adapter.clone(taps=dataclasses.replace(adapter.taps, layers=layers, layouts=layouts))
    _check_influence(module, variables, size, channels, layers, name, unused_hint)
    labels = tuple(f"class_{i}" for i in range(num_classes)) if spec.labels is None else tuple(map(str, spec.labels))
    if len(labels) != num_classes:
        raise ValueError(f"{name} has {num_classes} classes but {len(labels)} labels were given")
    return Model(name=name, module=module, variables=variables, input_size=size,
                 mean=floats(spec.mean, "mean", channels), std=floats(spec.std, "std", channels), labels=labels,
                 layers=layers, channels=channels, layouts=layouts)


def _check_spec(adapter: Adapter, spec: Spec, name: str) -> tuple[tuple[int, int], int]:
    try:
        hash(adapter)
    except TypeError as e:
        raise ValueError(f"{name}: the model's static fields must be hashable ({e}); use tuples, not lists") from None
    size = (spec.input_size, spec.input_size) if isinstance(spec.input_size, int) else tuple(spec.input_size)
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in size):
        raise ValueError(f"input_size must be (height, width) positive ints; got {spec.input_size!r}")
    c = spec.channels
    if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 1 <= c <= 1024:
        raise ValueError(f"channels must be a positive int (1: grayscale, 3: RGB, more: multispectral); got {c!r}")
    return tuple(int(s) for s in size), int(c)


def _trace(adapter: Adapter, variables, size, channels: int, name: str):
    """(K, discovery calls) of one abstract forward pass at the declared size; ValueError if it fails."""
    x = jax.ShapeDtypeStruct((CHECK_BATCH, *size, channels), jnp.float32)
    try:
        logits, calls = jax.eval_shape(adapter.apply, variables, x)
    except Exception as e:
        hint = ""
        if "feature_group_count" in str(e):  # the first convolution's input channels differ
            hint = f"; the model takes another channel count than {channels}: pass channels= (1 for grayscale)"
        raise ValueError(f"{name} fails on an input of shape {x.shape}: {type(e).__name__}: {e}{hint}") from e
    if not isinstance(logits, jax.ShapeDtypeStruct) or logits.ndim != 2 or logits.shape[0] != CHECK_BATCH:
        got = getattr(logits, "shape", jax.tree.structure(logits))
        raise ValueError(f"{name} must return logits [B,K]; for x of shape {x.shape} it returned {got}")
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise ValueError(f"{name} must return float logits; got dtype {logits.dtype}")
    return logits.shape[1], calls


def _check_layers(calls: list[dict], requested: Sequence[str], name: str, hint: str) -> tuple[str, ...]:
    """The requested layer names in forward order; ValueError for unknown or repeated ones."""
    if isinstance(requested, str):
        requested = (requested,)
    taps: dict[str, int] = {}  # name -> number of calls, in order of the first call's output
    for (n,) in calls:
        taps[n] = taps.get(n, 0) + 1
    available = [n for n, count in taps.items() if count == 1]
    unknown = [n for n in requested if n not in taps]
    if unknown:
        hint = f"available: {', '.join(available)}" if available else hint
        raise ValueError(f"unknown layer(s) {', '.join(map(repr, unknown))} for {name}; {hint}")
    repeated = [n for n in requested if taps[n] > 1]
    if repeated:
        counts = ", ".join(f"{n!r} ({taps[n]} times)" for n in repeated)
        raise ValueError(f"layer(s) {counts} run more than once per forward pass in {name}; tap a layer that runs once")
    return tuple(n for n in available if n in set(requested))


def _per_image_shapes(calls: list[dict], layouts) -> dict[str, tuple]:
    first: dict[str, tuple] = {}
    for call in calls:
        for n, y in call.items():
            first.setdefault(n, tuple(getattr(y, "shape", ()))[1:])
    return {n: hwc_shape(first[n], layout) for n, layout in layouts}


def _check_layouts(adapter, variables, calls, layouts, declared: dict, size, channels: int, name: str) -> None:
    """ValueError for a rank-3 layer whose rows and columns are not its first two axes (see `layouts`)."""
    shapes = _per_image_shapes(calls, layouts)
    for layer, layout in layouts:
        if layout == "CHW" and len(shapes[layer]) != 3:
            raise ValueError(f"{name}: layer {layer!r} is declared 'CHW' but its activation has per-image "
                             f"shape {list(hwc_shape(shapes[layer], 'CHW'))}, not [C,H,W]")
    if not any(len(s) == 3 for s in shapes.values()):
        return
    big = (2 * size[0], 2 * size[1])
    try:
        _, probe = jax.eval_shape(adapter.apply, variables,
                                  jax.ShapeDtypeStruct((CHECK_BATCH, *big, channels), jnp.float32))
        probed = _per_image_shapes(probe, layouts)
    except Exception:  # a fixed-size model: judged by shape arithmetic
        probed = {}
    for layer, _ in layouts:
        check_spatial_axes(layer, shapes[layer], probed.get(layer), size, declared=layer in declared, name=name)


def _check_influence(module: Adapter, variables, size, channels: int, layers, name: str, hint: str) -> None:
    """ValueError naming the tapped layers whose perturbation point cannot reach the logits."""
    if not layers:
        return
    x = jax.ShapeDtypeStruct((1, *size, channels), jnp.float32)
    _, state = jax.eval_shape(lambda v, x: module.apply(v, x, mutable=["perturbations"]), variables, x)
    points = dict(state["perturbations"])

    def logits(v, p, x):
        return module.apply({**v, "perturbations": p}, x)[0]

    needed = needed_inputs(logits, variables, points, x)
    offset = len(jax.tree.leaves(variables))
    unused = [n for i, n in enumerate(sorted(points)) if not needed[offset + i]]
    if unused:
        names = ", ".join(map(repr, unused))
        verb = "does" if len(unused) == 1 else "do"
        raise ValueError(f"layer {names} of {name} {verb} not influence the output{hint}")


def floats(v, what: str, channels: int = 3) -> tuple[float, ...]:
    """A scalar or per-channel preprocessing constant as a tuple of floats."""
    out = tuple(float(a) for a in np.ravel(np.asarray(v, np.float64)))
    if len(out) not in (1, channels):
        raise ValueError(f"{what} must be a scalar or one value per channel ({channels}); got {v!r}")
    return out


__all__ = ["UNUSED_OUTPUT", "Adapter", "CHECK_BATCH", "Frozen", "Spec", "Tap", "Taps", "build_model", "floats", "perturb_point",
           "record_tap"]
