"""Backward rules (deconvnet, guided backprop) as function transforms.

Simonyan et al. (2014, Sec. 4) observe that the deconvnet reconstruction of
Zeiler & Fergus is the gradient except at ReLUs. For `y = max(x, 0)` with
upstream cotangent `g`, the three rules send back

    gradient:   g * 1[x > 0]
    deconvnet:  max(g, 0)                    (Zeiler & Fergus 2014)
    guided:     g * 1[x > 0] * 1[g > 0]      (Springenberg et al. 2015)

and every other operation (convolutions, max-pooling switches, adds, ...)
keeps its true backward pass.

`backward_rule(fn, rule)` traces `fn` to a jaxpr at call time and evaluates
it with an interpreter that swaps every ReLU site for a `jax.custom_vjp` ReLU
implementing the rule. A ReLU site is a `max` one of whose operands is known
to be zero (a literal, a constant array of zeros, or a broadcast/cast of one),
in either order, or a `clamp` whose lower bound is zero. That covers
`jax.nn.relu`, `jax.nn.relu6` (the rule acts on its `max(x, 0)`; the `min(., 6)`
keeps its own gradient), `jnp.maximum(x, 0)`, `jnp.maximum(0, x)` and
`jnp.clip(x, 0, hi)`, wherever they occur: module fields, functional calls in
someone else's `__call__`, inside nested `jit`, `checkpoint`, `custom_jvp`
(whose custom derivative is dropped so the rule applies), `lax.cond` and
`lax.scan`.

Why a jaxpr transform rather than module hooks: Captum attaches backward hooks
to `nn.ReLU` modules, so a model calling `F.relu` in its `forward` is silently
left with the plain gradient there, and its GuidedBackprop on a ReLU6 network
returns the plain gradient without a warning. Here the rule reaches every
ReLU in the traced computation regardless of how the model's code spells it,
without editing that code, and `count_relus` reports how many sites were
rewritten so coverage can be checked rather than assumed.

Limitations:
  * Reverse mode only: the rewritten function supports `jax.grad`/`jax.vjp`
    (and `jit`, `vmap` around them) but not `jax.jvp`/`jax.jacfwd`, since
    `custom_vjp` functions have no forward-mode derivative.
  * ReLUs inside a user's own `jax.custom_vjp` function, `lax.while_loop`,
    `shard_map` or other higher-order primitives not listed above are left
    as they are (the `custom_vjp`'s own backward is kept on purpose).
  * A ReLU spelled without `max`/`clamp` (e.g. `jnp.where(x > 0, x, 0)` or
    `x * (x > 0)`) is not recognised.
  * `fn` is retraced on every call; wrap the result in `jax.jit`.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jex
from jax.extend.core import primitives as P

Rule = Literal["gradient", "deconvnet", "guided"]
RULES: tuple[str, ...] = ("gradient", "deconvnet", "guided")
_FIELD = "field"  # private rule of `field_probe`: deconvnet ReLUs, max-pools spread like sum-pools

# Primitives whose output is all zeros when their (first) operand is.
_ZERO_PRESERVING = frozenset(
    {P.broadcast_in_dim_p, P.convert_element_type_p, P.reshape_p, P.squeeze_p, P.transpose_p, P.copy_p}
)
# Call-like primitives whose body is evaluated inline, rewritten.
_INLINE_CALLS = frozenset({P.jit_p, P.closed_call_p, P.call_p})


# ---- the rule at one ReLU ---------------------------------------------------------------


@functools.cache
def _relu_with_rule(rule: str) -> Callable[[jax.Array], jax.Array]:
    """`max(x, 0)` whose backward pass is `rule` (see the module docstring)."""

    @jax.custom_vjp
    def relu(x):
        return lax.max(x, lax.full_like(x, 0))

    def fwd(x):
        return relu(x), (None if rule == "deconvnet" else x)

    def bwd(x, g):
        zero = jnp.zeros_like(g)
        if rule == "deconvnet":
            return (jnp.maximum(g, zero),)
        keep = x > 0
        if rule == "guided":
            keep = keep & (g > 0)
        return (jnp.where(keep, g, zero),)

    relu.defvjp(fwd, bwd)
    return relu


# ---- static analysis: which atoms are zeros, which equations are ReLU sites -------------


def _all_zero(value) -> bool:
    if isinstance(value, jax.core.Tracer):
        return False
    try:
        return bool(np.all(np.asarray(value) == 0))
    except Exception:  # opaque values (keys, tokens)
        return False


class _Zeros:
    """Which atoms of one jaxpr are known, without running it, to hold only zeros."""

    def __init__(self, jaxpr: jex.Jaxpr, consts: Sequence[Any], zero_invars: Sequence[bool]):
        self._consts = dict(zip(jaxpr.constvars, consts))
        self._known = {v for v, z in zip(jaxpr.invars, zero_invars) if z}
        self._checked: dict[Any, bool] = {}

    def __call__(self, atom) -> bool:
        if isinstance(atom, jex.Literal):
            return _all_zero(atom.val)
        if atom in self._known:
            return True
        if atom in self._consts:  # inspected lazily: only constants that meet a `max`
            if atom not in self._checked:
                self._checked[atom] = _all_zero(self._consts[atom])
            return self._checked[atom]
        return False

    def see(self, eqn: jex.JaxprEqn) -> None:
        """Propagates zero-ness through broadcasts, casts and reshapes."""
        if eqn.primitive in _ZERO_PRESERVING and self(eqn.invars[0]):
            self._known.add(eqn.outvars[0])


def _relu_operand(eqn: jex.JaxprEqn, zeros: _Zeros) -> int | None:
    """Index of the operand `x` if `eqn` is a ReLU site (max(x,0), max(0,x), clamp(0,x,hi))."""
    if eqn.primitive not in (P.max_p, P.clamp_p) or not jnp.issubdtype(eqn.outvars[0].aval.dtype, jnp.inexact):
        return None
    if eqn.primitive is P.max_p:
        a, b = (zeros(v) for v in eqn.invars)
        return 0 if b and not a else 1 if a and not b else None
    if eqn.primitive is P.clamp_p and zeros(eqn.invars[0]) and not zeros(eqn.invars[1]):
        return 1
    return None


def closed_jaxpr(j) -> tuple[jex.Jaxpr, Sequence[Any]]:
    """(jaxpr, consts) of a `ClosedJaxpr` or a bare `Jaxpr`."""
    return (j.jaxpr, j.consts) if isinstance(j, jex.ClosedJaxpr) else (j, ())


def _scan_counts(params) -> tuple[int, int]:
    """(number of constants, number of carries) of a scan equation."""
    if "num_consts" in params:  # jax <= 0.10
        return params["num_consts"], params["num_carry"]
    consts, carry, _ = params["ft_in"].unpack()  # jax >= 0.11: a flat tree (consts, carry, xs)
    return len(consts), len(carry)


def _children(eqn: jex.JaxprEqn, zeros: _Zeros) -> list[tuple[jex.Jaxpr, Sequence[Any], list[bool]]] | None:
    """The sub-jaxprs the rewrite reaches into, with their zero operands; None if opaque."""
    p, params = eqn.primitive, eqn.params
    zin = [zeros(v) for v in eqn.invars]
    body = inline_body(eqn)
    if body is not None:
        return [(*body, zin)]
    if p is P.cond_p:
        return [(*closed_jaxpr(b), zin[1:]) for b in params["branches"]]
    if p is P.scan_p:
        n, _ = _scan_counts(params)
        jaxpr, consts = closed_jaxpr(params["jaxpr"])
        return [(jaxpr, consts, zin[:n] + [False] * (len(zin) - n))]
    return None  # custom_vjp_call (its backward is kept), while, shard_map, ...


def _count(jaxpr: jex.Jaxpr, consts: Sequence[Any], zero_invars: Sequence[bool], pools: bool = False) -> int:
    """Number of ReLU sites (and max-pools if `pools`) in the jaxpr and the sub-jaxprs it reaches."""
    zeros, n = _Zeros(jaxpr, consts, zero_invars), 0
    for eqn in jaxpr.eqns:
        if _relu_operand(eqn, zeros) is not None or (pools and eqn.primitive is P.reduce_window_max_p):
            n += 1
        else:
            n += sum(_count(*c, pools) for c in _children(eqn, zeros) or ())
        zeros.see(eqn)
    return n


# ---- the interpreter --------------------------------------------------------------------


def run_jaxpr(jaxpr: jex.Jaxpr, consts: Sequence[Any], args: Sequence[Any], eval_eqn: Callable) -> list:
    """`jax.core.eval_jaxpr` with each equation evaluated by `eval_eqn(eqn, invals) -> outvals`.

    The walking machinery shared by the rule interpreters (here and
    `saliency_jax.attribution.relevance`); `bind` is the plain evaluation.
    """
    env: dict[Any, Any] = {}

    def read(atom):
        return atom.val if isinstance(atom, jex.Literal) else env[atom]

    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        with getattr(eqn.ctx, "manager", contextlib.nullcontext()):
            outvals = eval_eqn(eqn, invals)
        env.update(zip(eqn.outvars, outvals))
    return [read(v) for v in jaxpr.outvars]


def bind(eqn: jex.JaxprEqn, invals: Sequence[Any]) -> list:
    """The equation evaluated as it is, on `invals`: its outputs as a list."""
    p = eqn.primitive
    out = p.bind(*invals, **p.get_bind_params(eqn.params))
    return list(out) if p.multiple_results else [out]


def inline_body(eqn: jex.JaxprEqn) -> tuple[jex.Jaxpr, Sequence[Any]] | None:
    """(jaxpr, consts) of a call-like equation whose body an interpreter may evaluate inline.

    Nested `jit`/calls, `custom_jvp` functions (their custom rule is dropped) and
    `checkpoint` (evaluated without rematerialisation); None for anything else.
    """
    p, params = eqn.primitive, eqn.params
    if p in _INLINE_CALLS:
        return closed_jaxpr(params["jaxpr" if p is P.jit_p else "call_jaxpr"])
    if p is P.custom_jvp_call_p:
        return closed_jaxpr(params["call_jaxpr"])
    if p is P.remat_p:
        return closed_jaxpr(params["jaxpr"])
    return None


def _eval(jaxpr: jex.Jaxpr, consts: Sequence[Any], args: Sequence[Any], rule: str, zero_invars: Sequence[bool]):
    """`jax.core.eval_jaxpr`, with every ReLU site's backward replaced by `rule`."""
    zeros = _Zeros(jaxpr, consts, zero_invars)

    def eval_eqn(eqn, invals):
        outvals = _eval_eqn(eqn, invals, zeros, rule)
        zeros.see(eqn)
        return outvals

    return run_jaxpr(jaxpr, consts, args, eval_eqn)


def _eval_eqn(eqn: jex.JaxprEqn, invals: list, zeros: _Zeros, rule: str) -> list:
    p, params = eqn.primitive, eqn.params
    if rule == _FIELD and p is P.reduce_window_max_p:  # every window element gets the cotangent
        return [P.reduce_window_sum_p.bind(*invals, **params)]
    i = _relu_operand(eqn, zeros)
    if i is not None:
        out_aval = eqn.outvars[0].aval
        x = jnp.broadcast_to(invals[i], out_aval.shape).astype(out_aval.dtype)
        y = _relu_with_rule("deconvnet" if rule == _FIELD else rule)(x)
        if p is P.clamp_p:  # the upper bound keeps clamp's own gradient (0 at y == hi)
            y = jnp.where(y < invals[2], y, invals[2]).astype(y.dtype)
        return [y]

    children = _children(eqn, zeros)
    if children and any(_count(*c, rule == _FIELD) for c in children):
        if p in _INLINE_CALLS or p is P.custom_jvp_call_p:  # a custom_jvp's rule is dropped
            (jaxpr, consts, zin), = children
            return _eval(jaxpr, consts, invals, rule, zin)
        if p is P.remat_p:
            (jaxpr, consts, zin), = children
            body = jax.checkpoint(
                lambda *a: _eval(jaxpr, consts, a, rule, zin),
                prevent_cse=params["prevent_cse"],
                policy=params["policy"],
            )
            return list(body(*invals))
        if p is P.cond_p:
            branches = [functools.partial(_eval_list, j, c, rule, z) for j, c, z in children]
            return list(lax.switch(invals[0], branches, *invals[1:]))
        if p is P.scan_p:
            (jaxpr, consts, zin), = children
            n, n_carry = _scan_counts(params)
            scan_consts, init, xs = invals[:n], invals[n : n + n_carry], invals[n + n_carry :]

            def body(carry, x):
                out = _eval(jaxpr, consts, [*scan_consts, *carry, *x], rule, zin)
                return out[:n_carry], out[n_carry:]

            carry, ys = lax.scan(
                body, init, xs, length=params["length"], reverse=params["reverse"], unroll=params["unroll"]
            )
            return [*carry, *ys]

    return bind(eqn, invals)


def _eval_list(jaxpr, consts, rule, zin, *args):
    return _eval(jaxpr, consts, args, rule, zin)


# ---- public API -------------------------------------------------------------------------


def trace(fn: Callable, args, kwargs):
    """(ClosedJaxpr, flat argument leaves, output treedef) of `fn(*args, **kwargs)`."""
    flat, in_tree = jax.tree.flatten((args, kwargs))

    def flat_fn(*leaves):
        a, k = jax.tree.unflatten(in_tree, leaves)
        return fn(*a, **k)

    closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(*flat)
    return closed, flat, jax.tree.structure(out_shape)


def backward_rule(fn: Callable, rule: Rule) -> Callable:
    """`fn` with the backward pass of every ReLU replaced by `rule`.

    For each ReLU `y = max(x, 0)` inside `fn`, with upstream cotangent `g`:
    "gradient" sends back `g * 1[x > 0]` (the true gradient, with 0 at the
    kink), "deconvnet" `max(g, 0)`, "guided" `g * 1[x > 0] * 1[g > 0]`. All
    other operations keep their true backward pass; forward values are
    unchanged.

    Args:
      fn: any JAX-traceable function of arrays (pytrees in and out). Static
        arguments should be bound beforehand (`functools.partial`).
      rule: "gradient", "deconvnet" or "guided".

    Returns:
      A function with `fn`'s signature and outputs, for use under
      `jax.grad`/`jax.vjp` (and `jit`/`vmap` around them); not forward-mode.

    Example:
      >>> f = lambda x: jnp.sum(jax.nn.relu(x) * jnp.array([1., -1.]))
      >>> jax.grad(guided_backprop(f))(jnp.array([1., 2.]))
      Array([1., 0.], dtype=float32)
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    return _rewrite(fn, rule)


def field_probe(fn: Callable) -> Callable:
    """`fn` for receptive-field probes: deconvnet ReLUs, and max-pooling that sends the
    cotangent to every element of its window (its forward becomes sum-pooling).

    Forward values match `fn` only where every pooling window holds one value
    (e.g. all zeros, as in `saliency_jax.receptive_field`); the gradient's
    support is then the set of inputs connected to the output, since a tie at
    a max-pool no longer routes the gradient to a single element.
    """
    return _rewrite(fn, _FIELD)


def _rewrite(fn: Callable, rule: str) -> Callable:
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        closed, flat, out_tree = trace(fn, args, kwargs)
        out = _eval(closed.jaxpr, closed.consts, flat, rule, [False] * len(flat))
        return jax.tree.unflatten(out_tree, out)

    return wrapped


# Primitives a network's nonlinearity may be spelled with, by what to call them in a message.
_NONLINEARITIES = {
    "tanh": "tanh", "logistic": "sigmoid", "erf": "erf (e.g. exact gelu)", "erfc": "erfc (e.g. exact gelu)", "exp": "exp", "log": "log",
    "log1p": "log1p", "select_n": "where/select (e.g. leaky_relu, a where-spelled relu)", "max": "max (not with 0)",
    "min": "min", "abs": "abs", "sign": "sign", "integer_pow": "power", "pow": "power", "sqrt": "sqrt",
    "rsqrt": "rsqrt", "sin": "sin", "cos": "cos", "clamp": "clamp (not at 0)",
}


def _primitive_names(jaxpr: jex.Jaxpr, names: set) -> set:
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, (jex.ClosedJaxpr, jex.Jaxpr)):
                    _primitive_names(closed_jaxpr(sub)[0], names)
    return names


def nonlinearities(fn: Callable, *args, **kwargs) -> tuple[str, ...]:
    """Names of the nonlinear operations in `fn`'s traced program (for messages), sorted."""
    closed, _, _ = trace(fn, args, kwargs)
    found = _primitive_names(closed.jaxpr, set())
    return tuple(sorted({_NONLINEARITIES[n] for n in found if n in _NONLINEARITIES}))


def require_relus(fn: Callable, *args, what: str = "this rule") -> int:
    """The number of ReLU sites of `fn` at these (abstract) arguments; ValueError naming what it has if none.

    A backward rule on a function without a ReLU site would silently return the
    plain gradient; this refuses instead.
    """
    n = count_relus(fn, *args)
    if n == 0:
        found = ", ".join(nonlinearities(fn, *args)) or "no nonlinearity at all"
        raise ValueError(f"{what} needs ReLU-family nonlinearities (relu, relu6, max(x, 0), clip(x, 0, hi)); "
                         f"this function has none (found: {found})")
    return n


def deconvnet(fn: Callable) -> Callable:
    """`backward_rule(fn, "deconvnet")`: a ReLU passes back `max(g, 0)` (Zeiler & Fergus 2014)."""
    return backward_rule(fn, "deconvnet")


def guided_backprop(fn: Callable) -> Callable:
    """`backward_rule(fn, "guided")`: a ReLU passes back `g * 1[x > 0] * 1[g > 0]` (Springenberg et al. 2015)."""
    return backward_rule(fn, "guided")


def count_relus(fn: Callable, *args, **kwargs) -> int:
    """How many ReLU sites `backward_rule(fn, ...)` rewrites when called with these arguments.

    Counts sites in the traced program, not executions: a ReLU in a `lax.scan`
    body counts once. Only abstract shapes of `args` matter.

    Example:
      >>> count_relus(lambda x: jax.nn.relu6(jnp.maximum(0, x)), jnp.ones(3))
      2
    """
    closed, flat, _ = trace(fn, args, kwargs)
    return _count(closed.jaxpr, closed.consts, [False] * len(flat))


__all__ = ["RULES", "Rule", "backward_rule", "bind", "closed_jaxpr", "count_relus", "deconvnet", "guided_backprop",
           "inline_body", "nonlinearities", "require_relus", "run_jaxpr", "trace"]
