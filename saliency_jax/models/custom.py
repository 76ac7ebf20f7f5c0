"""Bring your own model: a Flax linen module, a Flax NNX module or a plain JAX function as a `Model`.

One call turns a user's classifier into a `Model`, so every attribution method
(including the deconvnet/guided rules and Grad-CAM on a named layer) and every
maximisation objective runs on it unchanged:

    >>> model = from_linen(MyNet(), variables, layers=("conv2",), input_size=(32, 32))
    >>> model = from_nnx(my_nnx_net, layers=("blocks.1",), input_size=(32, 32))
    >>> model = from_function(my_fn, params, layers=("conv2",), input_size=(32, 32))
    >>> maps = saliency_jax.attribute(model, x, "top1", method="gradcam", layer="conv2")

(Equinox and Keras 3: `models.equinox_adapter.from_equinox`, `models.keras_adapter.from_keras`.)

The user's model maps a float batch x [B,H,W,C] to logits [B,K]
(unnormalised scores), C = `channels` (3 by default; 1 for grayscale, more
for multispectral). Its `Model.module` is a small linen adapter
(`models.build`) that runs the user's computation in inference mode and taps
the requested layers; every check is made once, when the `Model` is built.

Layer names (`layers=`):
  * linen: the submodule's path, "/"-joined (flax's own convention), e.g.
    "Conv_1" or "backbone/conv3"; the output of its `__call__` is tapped.
  * NNX: the submodule's attribute path, "."-joined, e.g. "conv2" or
    "blocks.0" (item 0 of `self.blocks`); the output of its `__call__` is
    tapped (for `nnx.Conv`: before the activation that follows it).
  * function: whatever names the function passes to `tap(name, h)`; the model
    must go on with tap's return value (a dropped one is refused).
A tapped layer must produce one array, run once per forward pass (a shared
submodule called twice cannot be tapped) and reach the logits. Unknown names
raise a ValueError that lists the available ones. `Model.layers` lists the
taps in forward order (the order in which their outputs are computed).

Layouts (`layouts=`): a layer the user's model computes channels-first is
declared `{"conv2": "CHW"}` (per image; "HWC", channels-last, is the default)
and recorded as [B,h,w,K]; an undeclared layer that looks channels-first, or
is ambiguous, is refused (`models.layouts`). `layout="CHW"` on `from_function`
makes the function take x as [B,C,H,W] (the `Model` still takes [B,H,W,C]).

Variables: the `Model`'s pytree leaves. For linen they are exactly the user's
variables (the adapter shares the user module's scope, so
`model.variables["params"]["Conv_0"]` is the user's `Conv_0`); for NNX they
are the module's state split by kind (`{"params": ..., "batch_stats": ...,
"nnx_state": ...}`, plain nested dicts, a snapshot taken at construction); for
a function, `{"params": params}` (a params pytree that is not a dict with
string keys is stored as `{"params": {"fn": params}}`).

Preprocessing: `mean`/`std` are in uint8 units, `x = (uint8 - mean) / std`
(`Model.preprocess`, and `deprocess` for visualisations): a model trained on
x in [0, 1] needs std=255; ImageNet-normalised inputs mean=(123.675, 116.28,
103.53), std=(58.395, 57.12, 57.375). Limitations: the user's model must not
use the "perturbations" collection itself; linen submodules are tapped on
`__call__` only.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
from flax import nnx

from saliency_jax.models.build import UNUSED_OUTPUT, Adapter, Spec, Tap, Taps, build_model
from saliency_jax.models.layouts import check_layout
from saliency_jax.models.model import Model


class LinenAdapter(Adapter):
    """Runs a user's linen module in its own scope and taps its submodules' `__call__` outputs."""

    module: nn.Module
    call_kwargs: tuple[tuple[str, Any], ...] = ()
    taps: Taps = Taps()

    def setup(self):
        nn.share_scope(self, self.module)  # the user's variables stay exactly as they are

    def _run(self, x, tap):
        def intercept(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            path = context.module.path  # () for the user's root module (shared scope)
            if context.method_name == "__call__" and path and isinstance(out, jax.Array):
                out = tap("/".join(path), out)
            return out

        with nn.intercept_methods(intercept):
            return self.module(x, **dict(self.call_kwargs))


class TappedCall:
    """Stands in for a submodule (NNX, Equinox) on a per-call copy: calls it, then taps the output."""

    def __init__(self, inner, name: str, tap: Tap):
        self._inner, self._name, self._tap = inner, name, tap

    def __call__(self, *args, **kwargs):
        out = self._inner(*args, **kwargs)
        return self._tap(self._name, out) if isinstance(out, jax.Array) else out

    def __getattr__(self, attr):
        return getattr(self._inner, attr)

    def __getitem__(self, key):
        return self._inner[key]

    def __iter__(self):
        return iter(self._inner)

    def __len__(self):
        return len(self._inner)


class NNXAdapter(Adapter):
    """Merges an NNX module from its graphdef and the variables (inside the trace), in eval mode."""

    graphdef: Any
    collections: tuple[str, ...] = ("params",)
    call_kwargs: tuple[tuple[str, Any], ...] = ()
    taps: Taps = Taps()

    def _run(self, x, tap):
        module = nnx.merge(self.graphdef, *(self.variables[c] for c in self.collections))
        module.eval()  # a fresh copy: the user's object keeps its mode
        for path, sub in list(nnx.iter_modules(module)):  # children before parents
            name = _nnx_name(path)
            if path and callable(sub) and (self.taps.layers is None or name in self.taps.layers):
                parent = _nnx_get(module, path[:-1])
                wrapper = TappedCall(sub, name, tap)
                if isinstance(path[-1], str) and not isinstance(parent, Mapping):
                    setattr(parent, path[-1], wrapper)
                else:
                    parent[path[-1]] = wrapper
        return module(x, **dict(self.call_kwargs))


class FunctionAdapter(Adapter):
    """Runs `fn([params,] x[, tap=tap])` (see `from_function`)."""

    fn: Callable
    has_params: bool = True
    boxed: bool = False
    takes_tap: bool = False
    taps: Taps = Taps()

    def _run(self, x, tap):
        args = (x,)
        if self.has_params:
            params = self.variables["params"]
            args = (params["fn"] if self.boxed else params, x)
        return self.fn(*args, tap=tap) if self.takes_tap else self.fn(*args)


def _nnx_name(path) -> str:
    return ".".join(map(str, path))


def _nnx_get(module, path):
    for key in path:
        module = module._inner if isinstance(module, TappedCall) else module
        module = module[key] if isinstance(key, int) or isinstance(module, Mapping) else getattr(module, key)
    return module


# ---- public constructors ---------------------------------------------------------------------


def from_linen(
    module: nn.Module,
    variables: Mapping[str, Any],
    *,
    layers: Sequence[str] = (),
    input_size: int | tuple[int, int],
    channels: int = 3,
    layouts: Mapping[str, str] | None = None,
    mean: float | Sequence[float] = 0.0,
    std: float | Sequence[float] = 1.0,
    labels: Sequence[str] | None = None,
    call_kwargs: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> Model:
    """A `Model` of a user's Flax linen classifier.

    Args:
      module: an unbound linen module, `module.apply(variables, x[B,H,W,C],
        **call_kwargs) -> logits[B,K]`. Its fields must be hashable.
      variables: what `module.init` returns (all collections: params, batch_stats, ...).
      layers: submodule paths to tap, "/"-joined (e.g. "Conv_1", "backbone/conv3").
      input_size: (height, width) (or one int) that `preprocess` resizes to; a model
        that only runs at this size (flatten + dense) refuses other sizes in one line.
      channels: C of the input (1: grayscale, 3: RGB, more: multispectral).
      layouts: {layer: "CHW"} for layers computed channels-first (default "HWC").
      mean, std: preprocessing `x = (uint8 - mean) / std`, scalar or per channel, in
        uint8 units (a model trained on x in [0, 1]: std=255).
      labels: K class names (default "class_0", ...).
      call_kwargs: extra keyword arguments for `__call__`, hashable values,
        e.g. `{"train": False}` to select inference mode.
      name: the model's name (default: the module's class name).

    Returns:
      A `Model` whose variables are `variables` (same structure).

    Example:
      >>> net = MyNet()
      >>> variables = net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
      >>> model = from_linen(net, variables, layers=("Conv_1",), input_size=32)
      >>> saliency_jax.attribute(model, x, 3, method="gradcam", layer="Conv_1")
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"from_linen expects a flax.linen Module, got {type(module).__name__}")
    if module.scope is not None:
        raise ValueError("from_linen expects an unbound module (not one returned by `bind`)")
    if not isinstance(variables, Mapping) or (variables and "params" not in variables):
        keys = list(variables) if isinstance(variables, Mapping) else type(variables).__name__
        raise ValueError(f"variables must be what module.init returns, {{'params': ..., ...}}; got {keys}")
    adapter = LinenAdapter(module.clone(parent=None, name=None), call_kwargs=_static_kwargs(call_kwargs))
    spec = Spec(input_size, layers, channels, layouts, mean, std, labels)
    return build_model(adapter, dict(variables), spec, name or type(module).__name__, unused_hint=UNUSED_OUTPUT)


def from_nnx(
    module: nnx.Module,
    *,
    layers: Sequence[str] = (),
    input_size: int | tuple[int, int],
    channels: int = 3,
    layouts: Mapping[str, str] | None = None,
    mean: float | Sequence[float] = 0.0,
    std: float | Sequence[float] = 1.0,
    labels: Sequence[str] | None = None,
    call_kwargs: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> Model:
    """A `Model` of a user's Flax NNX classifier (a snapshot of its current state).

    The module is `nnx.split` into a static graphdef and its state; the state
    becomes the `Model`'s variables, `{"params": ..., "batch_stats": ...,
    "nnx_state": ...}` (empty kinds left out). Each forward pass merges a fresh
    copy, switches it to eval mode (`.eval()`: batch norm uses running
    statistics, dropout is off) and taps the named submodules on that copy;
    the user's object is never modified. A tap is the submodule's output: for
    an `nnx.Conv` followed by `nnx.relu` in the parent's `__call__`, the
    pre-activation (wrap conv and activation in a submodule to tap after it).

    Args:
      module: `module(x[B,H,W,C], **call_kwargs) -> logits[B,K]`.
      layers: submodule attribute paths, "."-joined (e.g. "conv2", "blocks.0").
      input_size, channels, layouts, mean, std, labels, call_kwargs, name: as in `from_linen`.

    Example:
      >>> net = MyNNXNet(rngs=nnx.Rngs(0))
      >>> model = from_nnx(net, layers=("conv2",), input_size=32)
    """
    if not isinstance(module, nnx.Module):
        raise TypeError(f"from_nnx expects a flax.nnx Module, got {type(module).__name__}")
    graphdef, params, batch_stats, rest = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
    states = {"params": params, "batch_stats": batch_stats, "nnx_state": rest}
    variables = {c: nnx.to_pure_dict(s) for c, s in states.items() if jax.tree.leaves(s)}
    adapter = NNXAdapter(graphdef, tuple(variables), call_kwargs=_static_kwargs(call_kwargs))
    spec = Spec(input_size, layers, channels, layouts, mean, std, labels)
    return build_model(adapter, variables, spec, name or type(module).__name__, unused_hint=UNUSED_OUTPUT)


def from_function(
    fn: Callable,
    params: Any = None,
    *,
    layers: Sequence[str] = (),
    input_size: int | tuple[int, int],
    channels: int = 3,
    layout: str = "HWC",
    layouts: Mapping[str, str] | None = None,
    mean: float | Sequence[float] = 0.0,
    std: float | Sequence[float] = 1.0,
    labels: Sequence[str] | None = None,
    name: str | None = None,
) -> Model:
    """A `Model` of a plain JAX function.

    Signature rule: `fn` is called as `fn(params, x)` — or `fn(x)` when
    `params` is None — with x [B,H,W,C] ([B,C,H,W] with `layout="CHW"`), and
    must return logits [B,K]. If its signature has a parameter named `tap`, it
    also gets `tap=tap`, a function `tap(name, h) -> h` to call on each
    intermediate it exposes as a layer (it records `h` as feature `name` and
    makes it a perturbation point): the function must go on with tap's return
    value, `h = tap("conv", h)` (a dropped one is refused when the `Model` is
    built). A function without `tap` exposes no layers.

    Pass the weights as `params` (any pytree) rather than closing over them:
    then they are the `Model`'s variables (traced, not baked in as constants).

    Args:
      fn: the logit function, batched.
      params: its weights, or None.
      layers: names `fn` passes to `tap`.
      layout: "HWC" (default) or "CHW", the layout `fn` takes x in.
      input_size, channels, layouts, mean, std, labels, name: as in `from_linen`.

    Example:
      >>> def net(params, x, tap):
      ...     h = tap("conv", jax.nn.relu(conv(x, params["conv"])))
      ...     return h.mean((1, 2)) @ params["head"]
      >>> model = from_function(net, params, layers=("conv",), input_size=32)
    """
    if not callable(fn):
        raise TypeError(f"from_function expects a callable fn(params, x[, tap]), got {type(fn).__name__}")
    boxed = params is not None and not (isinstance(params, Mapping) and all(isinstance(k, str) for k in params))
    variables = {} if params is None else {"params": {"fn": params} if boxed else dict(params)}
    takes_tap = _takes_tap(fn)
    adapter = FunctionAdapter(fn, params is not None, boxed, takes_tap,
                              taps=Taps(input_layout=check_layout(layout, "layout")))
    spec = Spec(input_size, layers, channels, layouts, mean, std, labels)
    hint = "it exposes no layers" if takes_tap else "fn has no `tap` parameter, so it exposes no layers"
    return build_model(adapter, variables, spec, name or getattr(fn, "__name__", "fn"), no_layers_hint=hint,
                       unused_hint=": use tap()'s return value, h = tap(name, h)")


def _takes_tap(fn: Callable) -> bool:
    try:
        return "tap" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins and other objects without a signature
        return False


def _static_kwargs(kwargs: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    items = tuple(sorted((kwargs or {}).items()))
    try:
        hash(items)
    except TypeError:
        raise ValueError(f"call_kwargs values must be hashable (static); got {dict(items)!r}") from None
    return items


__all__ = ["FunctionAdapter", "LinenAdapter", "NNXAdapter", "TappedCall", "from_function", "from_linen", "from_nnx"]
