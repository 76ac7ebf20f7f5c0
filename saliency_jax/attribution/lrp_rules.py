"""LRP rules at one linear layer, and composites that choose a rule per layer.

For a layer y = L(x; W) + b (L linear in x: a dense layer, any convolution),
the rules of Bach et al. (2015) and Montavon et al. (2019) redistribute the
output relevance R (shaped like y) onto x as a vector-Jacobian product of a
*modified* layer:

    R_x = sum_k x_k' * dL(x_k'; W_k')^T [ R / stab(z') ]

with rule-specific inputs x_k', weights W_k' and denominator z'. Definitions
follow zennit 0.5.1 (`zennit/rules.py`), including its conventions:
`stab(z) = z + eps * sign(z)` with sign(0) = +1, parameter modifiers applied
to the bias too (z+ keeps b+ in its denominator), and a division by an exact
zero giving 0.

    zero        x * W^T (R / z)                                  LRP-0
    epsilon     x * W^T (R / stab_eps(z))                        LRP-epsilon
    zplus       x+ W+^T d + x- W-^T d,  d = R / stab(W+x+ + b+ + W-x-)      (alpha1-beta0)
    alpha_beta  alpha (x+ W+^T dp + x- W-^T dp) - beta (x+ W-^T dn + x- W+^T dn)
    gamma       as zplus with W + gamma W+ (y > 0) / W + gamma W- (y < 0)   (generalised)
    flat        1^T (R / stab(L(1; 1)))                          (Lapuschkin et al. 2019)
    wsquare     (W^2)^T (R / stab(L(1; W^2) + b^2))              (Montavon et al. 2017)
    zbox        x W^T d - l W+^T d - h W-^T d,  d = R / stab(z - L(l; W+) - L(h; W-))   (z^B)
    norm        x * J^T (R / stab(y))  for a parameter-free sum or average (zennit's Norm)
    pass        R (elementwise layers: activations, scalings)
    gradient    J^T R (max pooling: winner takes all)

Each rule here is a function `rule(layer, R, options) -> R_x` of a `Layer`;
`saliency_jax.attribution.relevance` binds it as the backward pass of every
layer of a traced function.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from saliency_jax.validate import one_of, real

RULES = ("zero", "epsilon", "gamma", "zplus", "alpha_beta", "flat", "wsquare", "zbox", "norm", "pass", "gradient")
# What a layer is, as the interpreter sees it: "first" means the first conv or dense layer.
KINDS = ("conv", "dense", "sum", "avgpool", "maxpool", "activation", "first", "first_conv")
_LAYER_KINDS = ("conv", "dense", "avgpool", "first", "first_conv")
_BASE = {"sum": "norm", "avgpool": "norm", "maxpool": "gradient", "activation": "pass", "scale": "pass"}
COMPOSITES: dict[str, dict[str, str]] = {
    "epsilon": {"conv": "epsilon", "dense": "epsilon"},
    "epsilon_plus": {"conv": "zplus", "dense": "epsilon"},
    "epsilon_plus_flat": {"first": "flat", "conv": "zplus", "dense": "epsilon"},
    "epsilon_gamma_box": {"first_conv": "zbox", "conv": "gamma", "dense": "epsilon"},
    "alpha_beta": {"conv": "alpha_beta", "dense": "epsilon"},
}


class Options(NamedTuple):
    """Rule parameters: epsilon (the epsilon rule), stabilizer (every other rule's eps), gamma,
    alpha/beta, and the box bounds low/high (scalars or per channel, in model space)."""

    epsilon: float = 1e-6
    stabilizer: float = 1e-6
    gamma: float = 0.25
    alpha: float = 2.0
    beta: float = 1.0
    low: Any = 0.0
    high: Any = 1.0


class Layer(NamedTuple):
    """One linear layer at its forward point: y = lin(x, params) + bias.

    lin: `(x, params) -> z`, linear in x; params: its other operands (weights;
    integer operands are never modified); bias: broadcast to y, or None; nonneg: x >= 0 is known.
    """

    lin: Callable
    x: jax.Array
    params: Sequence[Any]
    bias: Any
    y: jax.Array
    nonneg: bool = False  # x is statically >= 0 (after a ReLU): the rules skip their x- terms (all zero)
    relu_out: bool = False  # R is statically 0 where y < 0 (y feeds only a ReLU, see `relevance`): gamma skips [y < 0]


def stabilize(z, eps: float):
    """z + eps * sign(z), sign(0) = +1 (zennit's stabiliser)."""
    return z + eps * jnp.where(z >= 0, 1, -1).astype(z.dtype)


def divide(r, z, eps: float):
    """r / stab(z), 0 where the stabilised denominator is exactly 0."""
    d = stabilize(z, eps)
    zero = d == 0
    return jnp.where(zero, 0, r / jnp.where(zero, 1, d))


def _pos(v):
    return jnp.maximum(v, 0)


def _neg(v):
    return jnp.minimum(v, 0)


def _mod(params, fn):
    return [fn(p) if jnp.issubdtype(jnp.result_type(p), jnp.inexact) else p for p in params]


def _bias(layer: Layer, fn=None):
    if layer.bias is None or fn is None:
        return 0
    return fn(layer.bias)


def _term(layer: Layer, x_in, param_fn, bias_fn=None):
    """(z', pullback) of the modified layer L(x_in; param_fn(W)) + bias_fn(b)."""
    params = _mod(layer.params, param_fn)
    z, pull = jax.vjp(lambda v: layer.lin(v, params), x_in)
    return z + _bias(layer, bias_fn), lambda d: pull(d)[0]


def _apply(layer: Layer, x_in, param_fn):
    """L(x_in; param_fn(W)), no bias (one modified forward)."""
    return layer.lin(x_in, _mod(layer.params, param_fn))


def _transpose(layer: Layer, param_fn):
    """d -> L(.; param_fn(W))^T d (one transposed convolution; the VJP's forward value is unused)."""
    params = _mod(layer.params, param_fn)
    pull = jax.vjp(lambda v: layer.lin(v, params), layer.x)[1]
    return lambda d: pull(d)[0]


def _plain(layer: Layer):
    """L(x; W) = y - b, the forward value reused."""
    return layer.y if layer.bias is None else layer.y - layer.bias


def _positive_part(layer: Layer):
    """W+ x+ + W- x- (every positive contribution). One modified forward: x >= 0 gives W+ x; otherwise
    (Wx + |W| |x|) / 2, Wx reused (|W| |x| - Wx = -2 (W+ x- + W- x+) >= 0)."""
    if layer.nonneg:
        return _apply(layer, layer.x, _pos)
    return (_plain(layer) + _apply(layer, jnp.abs(layer.x), jnp.abs)) / 2


def _same(v):
    return v


def rule_epsilon(layer: Layer, r, eps: float):
    """x * W^T (R / stab(y)), the forward output y reused (one VJP)."""
    _, pull = jax.vjp(lambda v: layer.lin(v, layer.params), layer.x)
    return layer.x * pull(divide(r, layer.y, eps))[0]


def _signed_share(layer: Layer, d):
    """x+ W+^T d + x- W-^T d: one transposed convolution when x >= 0 is known, else two."""
    if layer.nonneg:
        return layer.x * _transpose(layer, _pos)(d)
    return _pos(layer.x) * _transpose(layer, _pos)(d) + _neg(layer.x) * _transpose(layer, _neg)(d)


def rule_zplus(layer: Layer, r, o: Options):
    """d = R / stab(W+ x+ + W- x- + b+), R_x = x+ W+^T d + x- W-^T d."""
    d = divide(r, _positive_part(layer) + _bias(layer, _pos), o.stabilizer)
    return _signed_share(layer, d)


def rule_alpha_beta(layer: Layer, r, o: Options):
    """alpha z+ share - beta z- share; the negative part W- x+ + W+ x- = Wx - (W+ x+ + W- x-) is reused."""
    p = _positive_part(layer)
    dp = o.alpha * divide(r, p + _bias(layer, _pos), o.stabilizer)
    dn = o.beta * divide(r, _plain(layer) - p + _bias(layer, _neg), o.stabilizer)
    if layer.nonneg:  # x (alpha W+^T dp - beta W-^T dn)
        return layer.x * (_transpose(layer, _pos)(dp) - _transpose(layer, _neg)(dn))
    # x+ (W+^T dp - W-^T dn) + x- (W-^T dp - W+^T dn), with W-^T v = W^T v - W+^T v
    plain, pos = _transpose(layer, _same), _transpose(layer, _pos)
    e = pos(dp + dn)
    return _pos(layer.x) * (e - plain(dn)) + _neg(layer.x) * (plain(dp) - e)


def rule_gamma(layer: Layer, r, o: Options):
    """zennit's generalised gamma, with up = W + gamma W+, down = W + gamma W-:
    zp = up x+ + down x- + b + gamma b+ = y + gamma (W+ x+ + W- x- + b+),
    zn = down x+ + up x- + b + gamma b- = y + gamma (Wx - (W+ x+ + W- x-) + b-),
    dp = [y > 0] R / stab(zp), dn = [y < 0] R / stab(zn),
    R_x = x+ (up^T dp + down^T dn) + x- (down^T dp + up^T dn).
    One modified forward (the positive part) and two transposed convolutions (one when x >= 0 and
    R = 0 where y < 0 are known)."""
    g = o.gamma
    p = _positive_part(layer)
    dp = (layer.y > 0) * divide(r, layer.y + g * (p + _bias(layer, _pos)), o.stabilizer)
    if layer.relu_out:  # dn is all zeros: with x >= 0 one transposed convolution, up^T dp
        dn = 0
    else:
        dn = (layer.y < 0) * divide(r, layer.y + g * (_plain(layer) - p + _bias(layer, _neg)), o.stabilizer)
    if layer.nonneg:
        up, down = (lambda w: w + g * _pos(w)), (lambda w: w + g * _neg(w))
        share = _transpose(layer, up)(dp)
        return layer.x * (share if layer.relu_out else share + _transpose(layer, down)(dn))
    # up^T dp + down^T dn and down^T dp + up^T dn from their sum (2 + g) W^T (dp + dn) and
    # their difference g |W|^T (dp - dn)
    total = (2 + g) * _transpose(layer, _same)(dp + dn)
    diff = g * _transpose(layer, jnp.abs)(dp - dn)
    return (_pos(layer.x) * (total + diff) + _neg(layer.x) * (total - diff)) / 2


def rule_flat(layer: Layer, r, o: Options):
    z, pull = _term(layer, jnp.ones_like(layer.x), jnp.ones_like)
    return pull(divide(r, z, o.stabilizer))


def rule_wsquare(layer: Layer, r, o: Options):
    z, pull = _term(layer, jnp.ones_like(layer.x), jnp.square, jnp.square)
    return pull(divide(r, z, o.stabilizer))


def _bound(value, x):
    """A box bound (scalar or per channel) broadcast to x, channels last (or first, if only that fits)."""
    v = jnp.asarray(value, x.dtype)
    if v.ndim == 1 and x.ndim > 1 and v.shape[0] != x.shape[-1] and v.shape[0] == x.shape[1]:
        v = v.reshape((-1,) + (1,) * (x.ndim - 2))
    return jnp.broadcast_to(v, x.shape)


def rule_zbox(layer: Layer, r, o: Options):
    """d = R / stab(y - (W+ l + b+) - (W- h + b-)), R_x = x W^T d - l W+^T d - h W-^T d
    = (x - h) W^T d + (h - l) W+^T d (W-^T = W^T - W+^T): two transposed convolutions; the bounds'
    forwards do not depend on the image (computed once per batch under vmap)."""
    low, high = _bound(o.low, layer.x), _bound(o.high, layer.x)
    z = layer.y - (_apply(layer, low, _pos) + _bias(layer, _pos)) - (_apply(layer, high, _neg) + _bias(layer, _neg))
    d = divide(r, z, o.stabilizer)
    return (layer.x - high) * _transpose(layer, _same)(d) + (high - low) * _transpose(layer, _pos)(d)


def linear_rule(name: str, layer: Layer, r, o: Options):
    """R_x of the rule `name` at `layer` for output relevance r (shaped like layer.y)."""
    if name in ("zero", "epsilon", "norm"):
        return rule_epsilon(layer, r, {"zero": 0.0, "epsilon": o.epsilon, "norm": o.stabilizer}[name])
    if name == "gradient":
        _, pull = jax.vjp(lambda v: layer.lin(v, layer.params), layer.x)
        return pull(r)[0]
    rules = {"zplus": rule_zplus, "alpha_beta": rule_alpha_beta, "gamma": rule_gamma, "flat": rule_flat,
             "wsquare": rule_wsquare, "zbox": rule_zbox}
    return rules[name](layer, r, o)


# ---- composites -------------------------------------------------------------------------


def composite_map(composite: str | Mapping[str, str] | Sequence[tuple[str, str]]) -> dict[str, str]:
    """{layer name or kind: rule} of a named composite or a user mapping (checked; one-line ValueError).

    Keys of a user mapping are layer names (matched against the layer's scope,
    e.g. "block1_conv1" or "VGG16/block1_conv1") or kinds: "conv", "dense",
    "sum" (residual adds), "avgpool", "maxpool", "activation", "first" (the
    first conv or dense layer), "first_conv" (the first conv layer). Kinds left out keep zennit's base map: sums and
    average pools "norm", activations "pass", max pools "gradient", conv and
    dense layers "epsilon".
    """
    if isinstance(composite, str):
        one_of("composite", composite, tuple(COMPOSITES))
        return dict(COMPOSITES[composite])
    pairs = dict(composite.items() if isinstance(composite, Mapping) else composite)
    for key, rule in pairs.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"composite keys must be layer names or kinds ({', '.join(KINDS)}), got {key!r}")
        one_of(f"rule for {key!r}", rule, RULES)
        if key in _LAYER_KINDS and rule == "pass":
            raise ValueError(f"rule 'pass' is for elementwise layers, not {key!r} layers")
    return pairs


def rule_for(mapping: Mapping[str, str], kind: str, name: str, seen: set) -> str:
    """The rule `mapping` gives a layer of `kind` with scope `name`; `seen`: kinds met before it
    (the first conv or dense layer takes "first", the first conv "first_conv")."""
    parts = [p for p in name.split("/") if p]
    for i in range(len(parts)):
        scope = "/".join(parts[i:])
        if scope in mapping:
            return mapping[scope]
    if kind == "conv" and "conv" not in seen and "first_conv" in mapping:
        return mapping["first_conv"]
    if kind in ("conv", "dense") and not {"conv", "dense"} & seen and "first" in mapping:
        return mapping["first"]
    return mapping.get(kind, _BASE.get(kind, "epsilon"))


def check_options(o: Options) -> None:
    """One-line ValueErrors for rule parameters out of range (all >= 0, alpha - beta = 1)."""
    for name in ("epsilon", "stabilizer", "gamma", "alpha", "beta"):
        real(name, getattr(o, name), low=0.0)
    if abs(o.alpha - o.beta - 1) > 1e-12:
        raise ValueError(f"alpha - beta must equal 1 (relevance is conserved), got alpha={o.alpha}, beta={o.beta}")


__all__ = ["COMPOSITES", "KINDS", "Layer", "Options", "RULES", "check_options", "composite_map", "divide",
           "linear_rule", "rule_for", "stabilize"]
