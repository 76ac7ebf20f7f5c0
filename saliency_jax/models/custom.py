"""Bring your own model: a Flax linen module, a Flax NNX module or a plain JAX function as a `Model`.

One call turns a user's classifier into a `Model`, so every attribution method
(including the deconvnet/guided rules and Grad-CAM on a named layer) and every
maximisation objective runs on it unchanged:

    >>> model = from_linen(MyNet(), variables, layers=("conv2",), input_size=(32, 32))
    >>> model = from_nnx(my_nnx_net, layers=("blocks.1",), input_size=(32, 32))
    >>> model = from_function(my_fn, params, layers=("conv2",), input_size=(32, 32))
    >>> maps = saliency_jax.attribute(model, x, "top1", method="gradcam", layer="conv2")

The user's model must map a float batch x [B,H,W,3] to logits [B,K]
(unnormalised scores). Its `Model.module` is a small linen adapter that runs
the user's computation in inference mode and *taps* the requested layers:
each tapped activation is returned as a named feature and is a perturbation
point (collection "perturbations", as in the zoo models), which is how
Grad-CAM and the maximisation objectives reach it.

Layer names (`layers=`):
  * linen: the submodule's path, "/"-joined (flax's own convention), e.g.
    "Conv_1" or "backbone/conv3"; the output of its `__call__` is tapped.
  * NNX: the submodule's attribute path, "."-joined, e.g. "conv2" or
    "blocks.0" (item 0 of `self.blocks`); the output of its `__call__` is tapped.
  * function: whatever names the function passes to `tap(name, h)`.
A tapped layer must produce one array and run once per forward pass (a shared
submodule called twice cannot be tapped). Unknown names raise a ValueError
that lists the available ones. `Model.layers` lists the taps in forward order
(the order in which their outputs are computed).

Variables: the `Model`'s pytree leaves. For linen they are exactly the user's
variables (the adapter shares the user module's scope, so
`model.variables["params"]["Conv_0"]` is the user's `Conv_0`); for NNX they
are the module's state split by kind (`{"params": ..., "batch_stats": ...,
"nnx_state": ...}`, plain nested dicts, a snapshot taken at construction); for
a function, `{"params": params}` (a params pytree that is not a dict with
string keys is stored as `{"params": {"fn": params}}`).

Limitations: the input has 3 channels (the `Model` contract); the user's model
must not use the "perturbations" collection itself; linen submodules are tapped
on `__call__` only.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from saliency_jax.models.model import Model

Tap = Callable[[str, jax.Array], jax.Array]
_CHECK_BATCH = 2  # batch size of the construction-time shape trace


# ---- adapters: linen modules with the `Model` contract ------------------------------------


def _perturb(module: nn.Module, name: str, y):
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


class _Adapter(nn.Module):
    """Base: `__call__(x[B,H,W,C]) -> (logits[B,K], {layer: activation})`, taps via `_run(x, tap)`.

    `layers=None` is the discovery mode used at construction: the features
    are instead a list of `{name: activation}`, one per tap in call order (a
    list, because pytree dicts come back with sorted keys), and nothing is
    perturbed.
    """

    def _run(self, x, tap: Tap):  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x):
        feats: dict[str, Any] = {}
        calls: list[dict[str, Any]] = []

        def tap(name: str, y):
            if self.layers is None:
                calls.append({name: y})
            elif name in self.layers:
                y = feats[name] = _perturb(self, name, y)
            return y

        logits = self._run(x, tap)
        return logits, (calls if self.layers is None else feats)


class LinenAdapter(_Adapter):
    """Runs a user's linen module in its own scope and taps its submodules' `__call__` outputs."""

    module: nn.Module
    layers: tuple[str, ...] | None = ()
    call_kwargs: tuple[tuple[str, Any], ...] = ()

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


class _TappedSubmodule:
    """Stands in for an NNX submodule on the merged copy: calls it, then taps the output."""

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


class NNXAdapter(_Adapter):
    """Merges an NNX module from its graphdef and the variables (inside the trace), in eval mode."""

    graphdef: Any
    collections: tuple[str, ...] = ("params",)
    layers: tuple[str, ...] | None = ()
    call_kwargs: tuple[tuple[str, Any], ...] = ()

    def _run(self, x, tap):
        module = nnx.merge(self.graphdef, *(self.variables[c] for c in self.collections))
        module.eval()  # a fresh copy: the user's object keeps its mode
        for path, sub in list(nnx.iter_modules(module)):  # children before parents
            name = _nnx_name(path)
            if path and callable(sub) and (self.layers is None or name in self.layers):
                parent = _nnx_get(module, path[:-1])
                wrapper = _TappedSubmodule(sub, name, tap)
                if isinstance(path[-1], str) and not isinstance(parent, Mapping):
                    setattr(parent, path[-1], wrapper)
                else:
                    parent[path[-1]] = wrapper
        return module(x, **dict(self.call_kwargs))


class FunctionAdapter(_Adapter):
    """Runs `fn([params,] x[, tap=tap])` (see `from_function`)."""

    fn: Callable
    has_params: bool = True
    boxed: bool = False
    takes_tap: bool = False
    layers: tuple[str, ...] | None = ()

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
        module = module._inner if isinstance(module, _TappedSubmodule) else module
        module = module[key] if isinstance(key, int) or isinstance(module, Mapping) else getattr(module, key)
    return module


# ---- public constructors ---------------------------------------------------------------------


def from_linen(
    module: nn.Module,
    variables: Mapping[str, Any],
    *,
    layers: Sequence[str] = (),
    input_size: int | tuple[int, int],
    mean: float | Sequence[float] = 0.0,
    std: float | Sequence[float] = 1.0,
    labels: Sequence[str] | None = None,
    call_kwargs: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> Model:
    """A `Model` of a user's Flax linen classifier.

    Args:
      module: an unbound linen module, `module.apply(variables, x[B,H,W,3],
        **call_kwargs) -> logits[B,K]`. Its fields must be hashable.
      variables: what `module.init` returns (all collections: params, batch_stats, ...).
      layers: submodule paths to tap, "/"-joined (e.g. "Conv_1", "backbone/conv3").
      input_size: (height, width) (or one int) that `preprocess` resizes to.
      mean, std: preprocessing `x = (uint8 - mean) / std`, scalar or per channel.
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
    adapter = LinenAdapter(module.clone(parent=None, name=None), layers=None, call_kwargs=_static_kwargs(call_kwargs))
    return _build(adapter, dict(variables), layers, input_size, mean, std, labels, name or type(module).__name__)


def from_nnx(
    module: nnx.Module,
    *,
    layers: Sequence[str] = (),
    input_size: int | tuple[int, int],
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
    the user's object is never modified.

    Args:
      module: `module(x[B,H,W,3], **call_kwargs) -> logits[B,K]`.
      layers: submodule attribute paths, "."-joined (e.g. "conv2", "blocks.0").
      input_size, mean, std, labels, call_kwargs, name: as in `from_linen`.

    Example:
      >>> net = MyNNXNet(rngs=nnx.Rngs(0))
      >>> model = from_nnx(net, layers=("conv2",), input_size=32)
    """
    if not isinstance(module, nnx.Module):
        raise TypeError(f"from_nnx expects a flax.nnx Module, got {type(module).__name__}")
    graphdef, params, batch_stats, rest = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
    states = {"params": params, "batch_stats": batch_stats, "nnx_state": rest}
    variables = {c: nnx.to_pure_dict(s) for c, s in states.items() if jax.tree.leaves(s)}
    adapter = NNXAdapter(graphdef, tuple(variables), layers=None, call_kwargs=_static_kwargs(call_kwargs))
    return _build(adapter, variables, layers, input_size, mean, std, labels, name or type(module).__name__)


def from_function(
    fn: Callable,
    params: Any = None,
    *,
    layers: Sequence[str] = (),
    input_size: int | tuple[int, int],
    mean: float | Sequence[float] = 0.0,
    std: float | Sequence[float] = 1.0,
    labels: Sequence[str] | None = None,
    name: str | None = None,
) -> Model:
    """A `Model` of a plain JAX function.

    Signature rule: `fn` is called as `fn(params, x)` — or `fn(x)` when
    `params` is None — with x [B,H,W,3], and must return logits [B,K]. If its
    signature has a parameter named `tap`, it also gets `tap=tap`, a function
    `tap(name, h) -> h` to call on each intermediate it exposes as a layer
    (it records `h` as feature `name` and makes it a perturbation point; use
    its return value). A function without `tap` exposes no layers.

    Pass the weights as `params` (any pytree) rather than closing over them:
    then they are the `Model`'s variables (traced, not baked in as constants).

    Args:
      fn: the logit function, batched.
      params: its weights, or None.
      layers: names `fn` passes to `tap`.
      input_size, mean, std, labels, name: as in `from_linen`.

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
    adapter = FunctionAdapter(fn, params is not None, boxed, _takes_tap(fn), layers=None)
    return _build(adapter, variables, layers, input_size, mean, std, labels, name or getattr(fn, "__name__", "fn"))


# ---- shared construction: one abstract trace checks outputs and layers ------------------


def _build(adapter: _Adapter, variables, layers, input_size, mean, std, labels, name: str) -> Model:
    try:
        hash(adapter)
    except TypeError as e:
        raise ValueError(f"{name}: the model's static fields must be hashable ({e}); use tuples, not lists") from None
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in size):
        raise ValueError(f"input_size must be (height, width) positive ints; got {input_size!r}")
    size = tuple(int(s) for s in size)
    variables = jax.tree.map(jnp.asarray, variables)

    x = jax.ShapeDtypeStruct((_CHECK_BATCH, *size, 3), jnp.float32)
    try:
        logits, calls = jax.eval_shape(adapter.apply, variables, x)
    except Exception as e:
        raise ValueError(f"{name} fails on an input of shape {x.shape}: {type(e).__name__}: {e}") from e
    if not isinstance(logits, jax.ShapeDtypeStruct) or logits.ndim != 2 or logits.shape[0] != _CHECK_BATCH:
        got = getattr(logits, "shape", jax.tree.structure(logits))
        raise ValueError(f"{name} must return logits [B,K]; for x of shape {x.shape} it returned {got}")
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise ValueError(f"{name} must return float logits; got dtype {logits.dtype}")
    num_classes = logits.shape[1]

    layers = _check_layers(adapter, calls, layers, name)
    labels = tuple(f"class_{i}" for i in range(num_classes)) if labels is None else tuple(map(str, labels))
    if len(labels) != num_classes:
        raise ValueError(f"{name} has {num_classes} classes but {len(labels)} labels were given")
    return Model(
        name=name,
        module=adapter.clone(layers=layers),
        variables=variables,
        input_size=size,
        mean=_floats(mean, "mean"),
        std=_floats(std, "std"),
        labels=labels,
        layers=layers,
    )


def _check_layers(adapter, calls: list[dict], requested: Sequence[str], name: str) -> tuple[str, ...]:
    """The requested layer names in forward order; ValueError for unknown or repeated ones."""
    if isinstance(requested, str):
        requested = (requested,)
    taps: dict[str, int] = {}  # name -> number of calls, in order of the first call's output
    for (n,) in calls:
        taps[n] = taps.get(n, 0) + 1
    available = [n for n, count in taps.items() if count == 1]
    unknown = [n for n in requested if n not in taps]
    if unknown:
        if available:
            hint = f"available: {', '.join(available)}"
        elif isinstance(adapter, FunctionAdapter) and not adapter.takes_tap:
            hint = "fn has no `tap` parameter, so it exposes no layers"
        else:
            hint = "it exposes no layers"
        raise ValueError(f"unknown layer(s) {', '.join(map(repr, unknown))} for {name}; {hint}")
    repeated = [n for n in requested if taps[n] > 1]
    if repeated:
        counts = ", ".join(f"{n!r} ({taps[n]} times)" for n in repeated)
        raise ValueError(f"layer(s) {counts} run more than once per forward pass in {name}; tap a layer that runs once")
    return tuple(n for n in available if n in set(requested))


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


def _floats(v, what: str) -> tuple[float, ...]:
    out = tuple(float(a) for a in np.ravel(np.asarray(v, np.float64)))
    if len(out) not in (1, 3):
        raise ValueError(f"{what} must be a scalar or one value per RGB channel; got {v!r}")
    return out


__all__ = ["from_function", "from_linen", "from_nnx"]
