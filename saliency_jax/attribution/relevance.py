"""Relevance propagation (LRP, DeepLift) as transforms of any JAX function.

`lrp(fn, composite)` and `deeplift(fn)` trace `fn` to a jaxpr and evaluate it
with the walking machinery of `saliency_jax.attribution.rules`, binding at
every *layer* a `jax.custom_vjp` whose backward pass is the layer's relevance
rule. Forward values are unchanged. A layer is found by what the program
computes, not by how the model's code spells it:

    conv        conv_general_dilated (grouped and depthwise too), a dot_general contracting
                the last axis of a >= 3-d activation (a 1x1 convolution as a matrix product),
                a `custom_vjp` listed in `models.layers.LINEAR_VJP_BACKWARDS` (our shift-add
                depthwise convolution), and a `lax.platform_dependent` choice between such
                forms (our im2col stem / depthwise convolution), and a call (e.g. `jnp.einsum`'s
                jit) whose body is one such layer (or average pools only)
    dense       a dot_general contracting the last axis of a 1-d or 2-d activation
    avgpool     reduce_sum, reduce_window_sum (average/mean pooling, with its division by the
                count), a dot_general contracting other axes (an adaptive pool as a matrix)
    sum         add/sub of two activations (residual connections)
    maxpool     reduce_max, reduce_window_max
    activation  an elementwise nonlinearity of one activation (relu = max(x, 0), relu6,
                clip, tanh, sigmoid, ...)
    scale       mul/div/neg of an activation by a constant (relevance passes)

A conv/dense layer followed at once by an add (or sub) of a constant is one
affine layer, the constant its bias; an average pool followed at once by a
scaling (a mean's division by the count) is one pool. Everything else (reshapes, slices,
padding, concatenation) keeps its true backward pass, which routes relevance
exactly.

LRP: the cotangent is relevance. Conv, dense and avgpool layers take the rule
their composite gives (`lrp_rules`); sums split relevance in proportion to
the summands (zennit's Norm); activations and scalings pass it through; max
pools send it to the maximum. On a bias-free network LRP-0 conserves the
output relevance exactly.

DeepLift (Shrikumar et al. 2017, rescale rule, as Captum defines it): `fn` is
evaluated at x and at a reference x0 together; an activation's backward is
g * (y - y0) / (x - x0) (the gradient where |x - x0| < 1e-10), a max pool
sends g * (max(y, y0) - y0) to the argmax of x's window and g * (y - max(y, y0))
to the argmax of x0's, divided by x - x0 (Captum's documented max-pool rule:
it sums exactly to y - y0), and linear layers keep their gradient. Then
(x - x0) * multipliers sums to fn(x) - fn(x0).

Limitations: layers inside `lax.cond` (other than platform choices),
`lax.scan`/`while_loop` and users' own `custom_vjp` functions are evaluated as
they are (their gradient); an activation spelled with `where` (leaky ReLU) or
a product of two activations (gating, attention) keeps its gradient.
Reverse mode only. `fn` is retraced on every call: wrap the result in `jax.jit`.

References: Bach et al. 2015 (LRP); Montavon et al. 2019 ("Layer-wise relevance
propagation: an overview"); Shrikumar et al. 2017 (DeepLift); zennit 0.5.1 and
Captum 0.9 for the conventions.
"""

from __future__ import annotations

import collections
import functools
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex

from saliency_jax.attribution import lrp_rules
from saliency_jax.attribution.rules import bind, closed_jaxpr, inline_body, nonlinearities, run_jaxpr, trace
from saliency_jax.models.layers import LINEAR_VJP_BACKWARDS

_LINEAR = ("conv", "dense", "avgpool")
_ACTIVATIONS = frozenset({"max", "min", "clamp", "tanh", "logistic", "exp", "log", "log1p", "expm1", "erf", "erfc",
                          "abs", "sign", "integer_pow", "pow", "sqrt", "rsqrt", "sin", "cos"})
_SCALES = frozenset({"mul", "div", "neg"})
DEEPLIFT_EPS = 1e-10  # Captum's threshold on |x - x0|


# ---- which equations are layers ---------------------------------------------------------


def _is_var(atom) -> bool:
    return not isinstance(atom, jex.Literal)


def _dot_kind(eqn, t: list[bool]) -> str | None:
    (contract, batch) = eqn.params["dimension_numbers"]
    i = t.index(True)
    if batch[i]:
        return None
    rank = eqn.invars[i].aval.ndim
    if tuple(contract[i]) != (rank - 1,):
        return "avgpool"
    return "conv" if rank >= 3 else "dense"


def _body_kind(jaxpr, consts, t: list[bool]) -> str | None:
    """The kind of a sub-jaxpr that is one linear layer (one conv/dense, or average pools only), else None."""
    kinds = [k for k, _ in sites(jaxpr, consts, t)]
    if not kinds or len(set(kinds)) != 1 or kinds[0] not in _LINEAR:
        return None
    return kinds[0] if kinds[0] == "avgpool" or len(kinds) == 1 else None


def _call_kind(eqn, t: list[bool], platform: set) -> str | None:
    """A call (e.g. `jnp.einsum`'s jit) or a platform choice whose body is one linear layer, as that layer."""
    if sum(t) != 1:
        return None
    body = inline_body(eqn)
    if body is not None:
        return _body_kind(*body, t)
    if eqn.primitive.name == "cond" and _is_var(eqn.invars[0]) and eqn.invars[0] in platform and not t[0]:
        kinds = {_body_kind(*closed_jaxpr(b), t[1:]) for b in eqn.params["branches"]}
        return kinds.pop() if len(kinds) == 1 else None
    return None


def _kind(eqn, t: list[bool], platform: set) -> str | None:
    """What the equation is as a layer, given which operands are activations (None: no rule)."""
    n, name = sum(t), eqn.primitive.name
    if n == 0:
        return None
    if name == "conv_general_dilated":
        return "conv" if t[0] and n == 1 else None
    if name == "dot_general":
        return _dot_kind(eqn, t) if n == 1 else None
    if name == "custom_vjp_call":
        linear = getattr(eqn.params.get("bwd"), "f", None) in LINEAR_VJP_BACKWARDS
        return "conv" if linear and t[eqn.params.get("num_consts", 0)] and n == 1 else None
    if name == "cond" or inline_body(eqn) is not None:
        return _call_kind(eqn, t, platform)
    if name in ("add", "sub", "add_any"):
        return "sum" if n == 2 else None
    if name in ("reduce_sum", "reduce_window_sum"):
        return "avgpool"
    if name in ("reduce_max", "reduce_window_max"):
        return "maxpool"
    if len(eqn.outvars) != 1 or not jnp.issubdtype(eqn.outvars[0].aval.dtype, jnp.inexact) or n != 1:
        return None
    if name in _ACTIVATIONS:
        return "activation"
    return "scale" if name in _SCALES and (name != "div" or t[0]) else None


# Operations whose output is >= 0 where all their activation operands are (data movement, pools, sums).
_KEEPS_SIGN = frozenset({"reshape", "transpose", "broadcast_in_dim", "squeeze", "expand_dims", "slice", "rev",
                         "copy", "convert_element_type", "reduce_window_max", "reduce_max", "reduce_sum",
                         "reduce_window_sum", "dynamic_slice"})


def _nonnegative(atom, known: set) -> bool:
    if isinstance(atom, jex.Literal):
        try:
            return bool(np.all(np.asarray(atom.val) >= 0))
        except (TypeError, ValueError):
            return False
    return atom in known


def _nonneg_out(eqn, known: set, t: list[bool]) -> list[bool]:
    """Which outputs of `eqn` are statically >= 0 (a ReLU's max(x, 0), relu6, a pool of those, ...)."""
    name, ins = eqn.primitive.name, [_nonnegative(v, known) for v in eqn.invars]
    if name == "max":
        return [any(ins)]
    if name in ("min", "pad", "add", "concatenate"):
        return [all(ins)]
    if name == "clamp":
        return [ins[0] or (ins[1] and ins[2])]
    if name in _KEEPS_SIGN:
        return [all(n for n, ti in zip(ins, t) if ti)]
    body = inline_body(eqn)
    if body is not None:
        sub = _Analysis(body[0], t, ins)
        return [_nonnegative(v, sub.nonneg) for v in body[0].outvars]
    return [False] * len(eqn.outvars)


class _Analysis:
    """Static facts of one jaxpr: which vars are activations (and which are >= 0), each equation's kind,
    fused biases."""

    def __init__(self, jaxpr: jex.Jaxpr, tainted_invars: Sequence[bool], nonneg_invars: Sequence[bool] = ()):
        self.tainted = {v for v, t in zip(jaxpr.invars, tainted_invars) if t}
        self.nonneg = {v for v, n in zip(jaxpr.invars, nonneg_invars) if n}
        self.taint, self.kinds, self.bias_of, self.fused, self.chain_of = [], {}, {}, set(), {}
        uses = collections.Counter(v for e in jaxpr.eqns for v in e.invars if _is_var(v))
        uses.update(v for v in jaxpr.outvars if _is_var(v))
        platform, producer, pools = set(), {}, {}
        for i, eqn in enumerate(jaxpr.eqns):
            t = [_is_var(v) and v in self.tainted for v in eqn.invars]
            self.taint.append(t)
            if eqn.primitive.name == "platform_index":
                platform.update(eqn.outvars)
            kind = _kind(eqn, t, platform)
            if kind is not None:
                self.kinds[i] = kind
                if kind in ("conv", "dense") and len(eqn.outvars) == 1:
                    producer[eqn.outvars[0]] = i
                self._chain(i, eqn, t, pools, uses)
            self._fuse(i, eqn, t, producer, uses)
            if any(t):
                self.tainted.update(eqn.outvars)
                self.nonneg.update(v for v, n in zip(eqn.outvars, _nonneg_out(eqn, self.nonneg, t)) if n)

    def _chain(self, i, eqn, t, pools, uses) -> None:
        """Marks a pooling matrix applied to another's output (e.g. an einsum over h, then w), and a
        pool's scaling (a mean's or average pool's division by the count), as one layer: zennit's
        AvgPool rule stabilises the average, not the sum."""
        name, kind = eqn.primitive.name, self.kinds[i]
        scaling = kind == "scale" and name in ("mul", "div")
        if not (scaling or (name == "dot_general" and kind == "avgpool")):
            if kind == "avgpool" and len(eqn.outvars) == 1:
                pools[eqn.outvars[0]] = (i, False)
            return
        z = eqn.invars[t.index(True)]
        if z in pools and uses[z] == 1 and (scaling or pools[z][1]):
            self.chain_of[i] = pools[z][0]
            self.fused.add(pools[z][0])
            self.kinds[i] = "avgpool"
        if self.kinds[i] == "avgpool":
            pools[eqn.outvars[0]] = (i, name == "dot_general")

    def _fuse(self, i, eqn, t, producer, uses) -> None:
        """Marks `z + b` / `b + z` / `z - b` (b constant, z a conv/dense output used once) as z's bias."""
        if eqn.primitive.name not in ("add", "sub") or sum(t) != 1:
            return
        j = t.index(True)
        z = eqn.invars[j]
        if z in producer and uses[z] == 1 and not (eqn.primitive.name == "sub" and j == 1):
            self.kinds.pop(i, None)
            self.bias_of[i] = (producer[z], j)
            self.fused.add(producer[z])


# Operations that route relevance to where their operand's values go (data movement, max pools).
_ROUTES = frozenset({"reshape", "transpose", "broadcast_in_dim", "squeeze", "expand_dims", "slice", "rev", "copy",
                     "convert_element_type", "concatenate", "pad", "dynamic_slice", "reduce_window_max", "reduce_max"})
# Rules whose input relevance is x * (...), so 0 wherever the layer's input is 0.
_PROPORTIONAL = frozenset({"zero", "epsilon", "norm", "zplus", "alpha_beta", "gamma"})


def _literal(atom, test) -> bool:
    return isinstance(atom, jex.Literal) and bool(np.all(test(np.asarray(atom.val))))


def _is_relu(eqn) -> bool:
    """max(x, 0) or min(max(x, 0), c >= 0) (relu, relu6), possibly inside custom_jvp/jit wrappers."""
    eqns = [eqn]
    while len(eqns) == 1 and inline_body(eqns[0]) is not None:
        eqns = inline_body(eqns[0])[0].eqns
    if not eqns or eqns[0].primitive.name != "max" or not any(_literal(v, lambda a: a == 0) for v in eqns[0].invars):
        return False
    if len(eqns) == 1:
        return True
    low = eqns[1]
    return (len(eqns) == 2 and low.primitive.name == "min" and eqns[0].outvars[0] in low.invars
            and any(_literal(v, lambda a: a >= 0) for v in low.invars))


class _ReluOutputs:
    """Which layer outputs y of a jaxpr get relevance 0 wherever y < 0, whatever the input: y reaches
    only ReLUs (through data movement), whose outputs reach, through data movement and max pools only,
    layers whose rule is proportional to their input (`_PROPORTIONAL`), so relevance vanishes where
    they are 0. (Not when a ReLU's output is the function's: the caller seeds that relevance.)"""

    def __init__(self, jaxpr: jex.Jaxpr, analysis: _Analysis, mapping: Mapping[str, str]):
        self.jaxpr, self.a, self.mapping = jaxpr, analysis, mapping
        self.uses = collections.defaultdict(list)
        for k, eqn in enumerate(jaxpr.eqns):
            for v in eqn.invars:
                if _is_var(v):
                    self.uses[v].append(k)
        self.outs = {v for v in jaxpr.outvars if _is_var(v)}

    def __call__(self, y, kind: str) -> bool:
        """Relevance at `y` (a `kind` layer's output) vanishes where y < 0: each use is a ReLU, or moves
        values (a reshape, a max pool, ...) to such uses."""
        if y in self.outs or not self.uses[y]:
            return False
        for k in self.uses[y]:
            eqn = self.jaxpr.eqns[k]
            if _is_relu(eqn):
                if not self._vanishes(eqn.outvars[0], {kind}):
                    return False
            elif not (eqn.primitive.name in _ROUTES and all(self(out, kind) for out in eqn.outvars)):
                return False
        return True

    def _vanishes(self, v, seen) -> bool:
        if v in self.outs:
            return False
        for k in self.uses[v]:
            eqn, kind = self.jaxpr.eqns[k], self.a.kinds.get(k)
            if kind in ("conv", "dense", "avgpool", "sum"):
                if lrp_rules.rule_for(self.mapping, kind, str(eqn.source_info.name_stack), seen) not in _PROPORTIONAL:
                    return False
            elif eqn.primitive.name in _ROUTES or kind == "maxpool":
                if not all(self._vanishes(out, seen) for out in eqn.outvars):
                    return False
            else:
                return False
        return True


def sites(jaxpr: jex.Jaxpr, consts, tainted: Sequence[bool]) -> list[tuple[str, str]]:
    """(kind, scope name) of every layer the transforms rewrite, in program order (nested calls included)."""
    a, out = _Analysis(jaxpr, tainted), []
    for i, eqn in enumerate(jaxpr.eqns):
        body = inline_body(eqn) if any(a.taint[i]) else None
        if i in a.kinds:
            out.append((a.kinds[i], str(eqn.source_info.name_stack)))
        elif body is not None:
            out += sites(*body, a.taint[i])
    return out


def relevance_sites(fn: Callable, *args, **kwargs) -> list[tuple[str, str]]:
    """(kind, scope) of the layers `lrp(fn)` / `deeplift(fn)` find at these (abstract) arguments.

    Example:
      >>> relevance_sites(lambda x: jax.nn.relu(x @ jnp.ones((3, 2))).sum(), jnp.ones(3))
      [('dense', ''), ('activation', ''), ('avgpool', '')]
    """
    closed, flat, _ = trace(fn, args, kwargs)
    return sites(closed.jaxpr, closed.consts, [True] * len(flat))


def require_layers(fn: Callable, *args, what: str = "relevance propagation") -> int:
    """The number of conv/dense layers of `fn` at these arguments; a one-line ValueError if none."""
    found = [k for k, _ in relevance_sites(fn, *args)]
    n = sum(k in ("conv", "dense") for k in found)
    if n == 0:
        other = ", ".join(nonlinearities(fn, *args)) or "no nonlinearity"
        raise ValueError(f"{what} needs linear layers (dot_general, conv_general_dilated, a depthwise convolution); "
                         f"this function has none (found: {other})")
    return n


# ---- LRP ------------------------------------------------------------------------------------


def _insert(values: Sequence, i: int, x) -> list:
    return [*values[:i], x, *values[i:]]


def _without(values: Sequence, i: int) -> list:
    return [v for j, v in enumerate(values) if j != i]


def _piece(eqn, invals, t: int, nonneg: bool):
    """(lin, x, params, nonneg) of a linear equation whose activation operand is `t`: lin(x, params) = z;
    nonneg: x is statically >= 0."""

    def lin(x, ps):
        return bind(eqn, _insert(ps, t, x))[0]

    return lin, invals[t], _without(invals, t), nonneg


def _compose(inner, outer):
    """The piece `outer` applied to `inner`'s output, as one piece (a chain of pooling matrices)."""
    (lin_a, x, pa, nonneg), (lin_b, _, pb, _) = inner, outer
    n = len(pa)
    return (lambda v, ps: lin_b(lin_a(v, ps[:n]), ps[n:])), x, [*pa, *pb], nonneg


def _linear_layer(piece, bias, rule: str, options: lrp_rules.Options, relu_out: bool = False):
    """The linear piece (lin, x, params, nonneg) + bias, with `rule` as its backward pass (relu_out: see
    `lrp_rules.Layer`)."""
    lin, x0, params, nonneg = piece
    n = len(params)

    @jax.custom_vjp
    def layer(x, *rest):
        z = lin(x, rest[:n])
        return z if bias is None else z + rest[n]

    def fwd(x, *rest):
        y = layer(x, *rest)
        return y, (x, rest, y)

    def bwd(res, r):
        x, rest, y = res
        b = None if bias is None else rest[n]
        rx = lrp_rules.linear_rule(rule, lrp_rules.Layer(lin, x, rest[:n], b, y, nonneg, relu_out), r, options)
        return (rx.astype(x.dtype), *[None] * len(rest))

    layer.defvjp(fwd, bwd)
    return layer(x0, *params, *(() if bias is None else (bias,)))


def _sum_layer(eqn, invals, eps: float):
    """a + b (or a - b) whose backward splits R in proportion: a R / stab(y), +-b R / stab(y)."""
    sign = -1 if eqn.primitive.name == "sub" else 1

    @jax.custom_vjp
    def layer(a, b):
        return bind(eqn, [a, b])[0]

    def fwd(a, b):
        y = layer(a, b)
        return y, (a, b, y)

    def bwd(res, r):
        a, b, y = res
        d = lrp_rules.divide(r, y, eps)
        return (a * d).astype(a.dtype), (sign * b * d).astype(b.dtype)

    layer.defvjp(fwd, bwd)
    a, b = (jnp.broadcast_to(v, eqn.outvars[0].aval.shape) for v in invals)
    return layer(a, b)


def _pass_layer(eqn, invals, t: int):
    """An elementwise layer of operand `t` whose backward passes relevance through unchanged."""
    others = _without(invals, t)

    @jax.custom_vjp
    def layer(x, *rest):
        return bind(eqn, _insert(rest, t, x))[0]

    layer.defvjp(lambda x, *rest: (layer(x, *rest), None), lambda _, r: (r, *[None] * len(others)))
    return layer(jnp.broadcast_to(invals[t], eqn.outvars[0].aval.shape), *others)


class _LRP:
    """One LRP evaluation: the composite's map, the rule options, the kinds met so far."""

    def __init__(self, mapping: Mapping[str, str], options: lrp_rules.Options):
        self.mapping, self.options, self.seen = mapping, options, set()

    def rule(self, kind: str, eqn) -> str:
        rule = lrp_rules.rule_for(self.mapping, kind, str(eqn.source_info.name_stack), self.seen)
        self.seen.add(kind)
        return rule

    def eval(self, jaxpr, consts, args, tainted, nonneg=()) -> list:
        a = _Analysis(jaxpr, tainted, nonneg)
        relu_out = _ReluOutputs(jaxpr, a, self.mapping)
        index = {id(e): i for i, e in enumerate(jaxpr.eqns)}
        pending = {}

        def piece(i, eqn, invals):
            t = a.taint[i].index(True)
            own = _piece(eqn, invals, t, _nonnegative(eqn.invars[t], a.nonneg))
            return _compose(pending.pop(a.chain_of[i])[0], own) if i in a.chain_of else own

        def eval_eqn(eqn, invals):
            i = index[id(eqn)]
            if i in a.fused:  # evaluated with its bias at the add, or with the next pooling matrix
                pending[i] = (piece(i, eqn, invals), self.rule(a.kinds[i], eqn))
                return bind(eqn, invals)
            if i in a.bias_of:
                j, pos = a.bias_of[i]
                (lin_piece, rule), bias = pending.pop(j), invals[1 - pos]
                bias = -bias if eqn.primitive.name == "sub" else bias
                relu = rule == "gamma" and relu_out(eqn.outvars[0], a.kinds[j])
                return [_linear_layer(lin_piece, bias, rule, self.options, relu)]
            if a.kinds.get(i) in _LINEAR:
                rule = self.rule(a.kinds[i], eqn)
                relu = rule == "gamma" and relu_out(eqn.outvars[0], a.kinds[i])
                return [_linear_layer(piece(i, eqn, invals), None, rule, self.options, relu)]
            nonneg = [_nonnegative(v, a.nonneg) for v in eqn.invars]
            return self.eval_eqn(eqn, invals, a.kinds.get(i), a.taint[i], nonneg)

        return run_jaxpr(jaxpr, consts, args, eval_eqn)

    def eval_eqn(self, eqn, invals, kind, t, nonneg) -> list:
        if kind is None:
            body = inline_body(eqn) if any(t) else None
            if body is not None and sites(*body, t):
                return self.eval(*body, invals, t, nonneg)
            return bind(eqn, invals)
        rule = self.rule(kind, eqn)
        if rule == "gradient" or kind == "maxpool":
            return bind(eqn, invals)
        if kind == "sum":
            o = self.options
            return [_sum_layer(eqn, invals, {"zero": 0.0, "epsilon": o.epsilon}.get(rule, o.stabilizer))]
        return [_pass_layer(eqn, invals, t.index(True))]


def lrp(fn: Callable, composite: str | Mapping[str, str] = "epsilon_plus_flat", **options) -> Callable:
    """`fn` whose backward pass is layer-wise relevance propagation.

    The cotangent fed to the result's VJP is the output relevance (e.g. the
    one-hot target times the logits); the cotangent it returns at the inputs is
    their relevance.

    Args:
      fn: any JAX-traceable function of arrays (pytrees in and out).
      composite: a name in `lrp_rules.COMPOSITES` ("epsilon", "epsilon_plus",
        "epsilon_plus_flat", "epsilon_gamma_box", "alpha_beta"), or a mapping
        {layer name or kind: rule} (see `lrp_rules.composite_map`).
      **options: `lrp_rules.Options` fields (epsilon, stabilizer, gamma, alpha,
        beta, low, high).

    Example:
      >>> f = lambda x: jnp.ones((2, 3)) @ jax.nn.relu(jnp.eye(3) @ x)
      >>> y, pull = jax.vjp(lrp(f, "epsilon", epsilon=0.0), jnp.array([1., 2., -1.]))
      >>> pull(jnp.array([y[0], 0.]))[0]          # sums to y[0] = 3
      Array([ 1.,  2., -0.], dtype=float32)
    """
    mapping, opts = lrp_rules.composite_map(composite), lrp_rules.Options(**options)
    lrp_rules.check_options(opts)

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        closed, flat, out_tree = trace(fn, args, kwargs)
        out = _LRP(mapping, opts).eval(closed.jaxpr, closed.consts, flat, [True] * len(flat))
        return jax.tree.unflatten(out_tree, out)

    return wrapped


# ---- DeepLift --------------------------------------------------------------------------------


class _Pair(NamedTuple):
    """An activation at the input and at the reference."""

    x: Any
    ref: Any


def _side(values, which: int) -> list:
    return [v[which] if isinstance(v, _Pair) else v for v in values]


def _rescale(eqn, invals, t: int, pool: bool):
    """An activation (or a max pool, `pool`) at (x, x0) whose backward is DeepLift's rule."""
    shape = eqn.outvars[0].aval.shape
    pair, others = invals[t], _without(invals, t)
    x, ref = pair if pool else (jnp.broadcast_to(v, shape) for v in pair)

    def f(v, rest):
        return bind(eqn, _insert(rest, t, v))[0]

    @jax.custom_vjp
    def layer(x, ref, *rest):
        return f(x, rest), f(ref, rest)

    def fwd(x, ref, *rest):
        y, y0 = layer(x, ref, *rest)
        return (y, y0), (x, ref, y, y0, rest)

    def bwd(res, g):
        x, ref, y, y0, rest = res
        pull_x = jax.vjp(lambda v: f(v, rest), x)[1]
        if pool:
            top = jnp.maximum(y, y0)
            pull_0 = jax.vjp(lambda v: f(v, rest), ref)[1]
            numerator = pull_x(g[0] * (top - y0))[0] + pull_0(g[0] * (y - top))[0]
        else:
            numerator = g[0] * (y - y0)
        dx = x - ref
        small = jnp.abs(dx) < DEEPLIFT_EPS
        m = jnp.where(small, pull_x(g[0])[0], numerator / jnp.where(small, 1, dx))
        return (m.astype(x.dtype), jnp.zeros_like(ref), *[None] * len(rest))

    layer.defvjp(fwd, bwd)
    return _Pair(*layer(x, ref, *others))


def _deeplift_eqn(eqn, invals) -> list:
    t = [isinstance(v, _Pair) for v in invals]
    if not any(t):
        return bind(eqn, invals)
    body = inline_body(eqn)
    if body is not None:
        return run_jaxpr(*body, invals, _deeplift_eqn)
    kind = _kind(eqn, t, set())
    if kind in ("activation", "maxpool") and sum(t) == 1 and len(eqn.outvars) == 1:
        return [_rescale(eqn, invals, t.index(True), kind == "maxpool")]
    return [_Pair(a, b) for a, b in zip(bind(eqn, _side(invals, 0)), bind(eqn, _side(invals, 1)))]


def deeplift(fn: Callable) -> Callable:
    """`fn` evaluated at an input and a reference, `(x, x0) -> (fn(x), fn(x0))`, whose VJP w.r.t. x
    is DeepLift's multipliers (rescale rule; see the module docstring).

    Then `(x - x0) * multipliers` sums to `fn(x) - fn(x0)` for the chosen output.

    Example:
      >>> f = lambda x: jnp.sum(jax.nn.relu(x))
      >>> (y, y0), pull = jax.vjp(lambda v: deeplift(f)(v, jnp.array([-1., 1.])), jnp.array([1., 3.]))
      >>> pull((1.0, 0.0))[0]                    # (x - x0) * m = [1, 2] = f(x) - f(x0)
      Array([0.5, 1. ], dtype=float32)
    """

    @functools.wraps(fn)
    def wrapped(x, ref):
        closed, flat, out_tree = trace(fn, (x,), {})
        refs = jax.tree.leaves(ref)
        out = run_jaxpr(closed.jaxpr, closed.consts, [_Pair(a, b) for a, b in zip(flat, refs)], _deeplift_eqn)
        return (jax.tree.unflatten(out_tree, _side(out, 0)), jax.tree.unflatten(out_tree, _side(out, 1)))

    return wrapped


__all__ = ["deeplift", "lrp", "relevance_sites", "require_layers", "sites"]
