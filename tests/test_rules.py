"""Backward rules as function transforms: hand-computed maps, coverage counts, composition."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

from saliency_jax.attribution.rules import RULES, backward_rule, count_relus, deconvnet, guided_backprop


def _rule_np(rule, z, g):
    """The rule at one ReLU with pre-activation z and upstream g, in NumPy (the paper's Sec. 4)."""
    if rule == "gradient":
        return g * (z > 0)
    if rule == "deconvnet":
        return np.maximum(g, 0)
    return g * (z > 0) * (g > 0)


def _grad(fn, rule):
    return jax.grad(backward_rule(fn, rule))


# ---- 1. two-layer ReLU network with hand-set weights ----------------------------------

A = np.array([[1.0, 0.0], [0.0, -1.0], [1.0, 1.0]], np.float32)  # 2 -> 3
B = np.array([[1.0, -1.0, 1.0], [-1.0, 2.0, 0.5], [-1.0, 0.0, 0.0]], np.float32)  # 3 -> 3
C = np.array([1.0, -1.0, 2.0], np.float32)  # readout: one negative upstream signal
X = np.array([1.0, 2.0], np.float32)  # z1 = A x = [1, -2, 3];  z2 = B relu(z1) = [4, 0.5, -1]

SPELLINGS = {
    "jax.nn.relu": jax.nn.relu,
    "nn.relu": nn.relu,
    "maximum(z, 0)": lambda z: jnp.maximum(z, 0),
    "maximum(0, z)": lambda z: jnp.maximum(0.0, z),
    "maximum(z, zeros)": lambda z: jnp.maximum(z, jnp.zeros_like(z)),
    "maximum(np.zeros, z)": lambda z: jnp.maximum(np.zeros(z.shape, np.float32), z),
    "clip(z, 0)": lambda z: jnp.clip(z, 0),
}


def _mlp(act):
    return lambda x: jnp.dot(C, act(B @ act(A @ x)))


def _mlp_by_hand(rule):
    z1 = A @ X
    z2 = B @ np.maximum(z1, 0)
    d2 = _rule_np(rule, z2, C)
    d1 = _rule_np(rule, z1, B.T @ d2)
    return A.T @ d1


def test_hand_values_are_the_papers_rules():
    # Worked by hand once, so the NumPy helper itself is checked too.
    np.testing.assert_array_equal(_mlp_by_hand("gradient"), [2.5, 0.5])
    np.testing.assert_array_equal(_mlp_by_hand("deconvnet"), [1.0, 1.0])
    np.testing.assert_array_equal(_mlp_by_hand("guided"), [2.0, 1.0])


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("rule", RULES)
def test_two_layer_relu_network(rule, spelling):
    f = _mlp(SPELLINGS[spelling])
    assert count_relus(f, X) == 2
    np.testing.assert_array_equal(_grad(f, rule)(X), _mlp_by_hand(rule))


def test_named_transforms_are_the_rules():
    f = _mlp(jax.nn.relu)
    np.testing.assert_array_equal(jax.grad(deconvnet(f))(X), _mlp_by_hand("deconvnet"))
    np.testing.assert_array_equal(jax.grad(guided_backprop(f))(X), _mlp_by_hand("guided"))


# ---- 2. ReLU6, clamp, max-pooling ------------------------------------------------------

A6 = np.array([[1.0, 0.0], [0.0, -1.0], [3.0, 2.0]], np.float32)  # z1 = [1, -2, 7]: one above 6


@pytest.mark.parametrize("act6", [jax.nn.relu6, lambda z: jnp.clip(z, 0, 6), lambda z: lax.clamp(0.0, z, 6.0)])
@pytest.mark.parametrize("rule", RULES)
def test_relu6_rule_acts_on_the_max_and_the_min_clips(rule, act6):
    def f(x):
        return jnp.dot(C, act6(B @ act6(A6 @ x)))

    z1 = A6 @ X
    z2 = B @ np.clip(z1, 0, 6)
    d2 = _rule_np(rule, z2, C) * (z2 < 6)
    d1 = _rule_np(rule, z1, B.T @ d2) * (z1 < 6)  # z1[2] = 7 > 6: zero under every rule
    expected = A6.T @ d1
    assert count_relus(f, X) == 2
    np.testing.assert_array_equal(_grad(f, rule)(X), expected)


W_POOL = np.array([2.0, -1.0, 1.0, 1.0], np.float32)
D_SKIP = np.array([0.5, 1.0, 1.0, -0.5], np.float32)
C_POOL = np.array([-1.0, 1.0], np.float32)
X_POOL = np.array([1.0, 2.0, -1.0, 3.0], np.float32)  # z = [2, -2, -1, 3]

POOLS = {
    "flax max_pool": lambda h: nn.max_pool(h[None, :, None], (2,), strides=(2,))[0, :, 0],
    "reduce_window": lambda h: lax.reduce_window(h, -jnp.inf, lax.max, (2,), (2,), "VALID"),
    "maximum of pairs": lambda h: jnp.maximum(h[0::2], h[1::2]),  # a max, but not a ReLU
}


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("rule", RULES)
def test_max_pooling_keeps_its_routing(rule, pool):
    def f(x):
        h = jax.nn.relu(W_POOL * x)
        return jnp.dot(C_POOL, POOLS[pool](h)) + jnp.dot(D_SKIP, h)

    z = W_POOL * X_POOL
    h = np.maximum(z, 0)
    routed = np.zeros(4, np.float32)
    for k, pair in enumerate(h.reshape(2, 2)):
        routed[2 * k + int(np.argmax(pair))] = C_POOL[k]  # the max-pool switch
    upstream = routed + D_SKIP  # [-0.5, 1, 1, 0.5]
    expected = W_POOL * _rule_np(rule, z, upstream)
    assert count_relus(f, X_POOL) == 1
    np.testing.assert_array_equal(_grad(f, rule)(X_POOL), expected)
    if rule != "gradient":
        assert not np.array_equal(expected, W_POOL * _rule_np("gradient", z, upstream))


# ---- 3. Flax modules: functional calls and activation fields ---------------------------


class _FunctionalMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(8)(x))
        x = nn.relu(nn.Dense(8)(x))
        return nn.Dense(3)(x)


class _FieldConvNet(nn.Module):
    act: callable = nn.relu6

    @nn.compact
    def __call__(self, x):  # x: [H,W,C]
        x = nn.relu(nn.Conv(4, (3, 3))(x))  # a stem that bypasses the field
        x = self.act(nn.Conv(4, (3, 3))(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = self.act(nn.Conv(4, (3, 3))(x))
        return nn.Dense(5)(jnp.mean(x, axis=(0, 1)))


def _params(module, shape, seed=0):
    """Random NumPy params for a Flax module, without compiling its `init`."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros(shape))
    x = rng.normal(size=shape).astype(np.float32)
    return jax.tree.map(lambda s: rng.normal(scale=0.5, size=s.shape).astype(np.float32), shapes), x


@pytest.mark.parametrize("module, shape, sites", [(_FunctionalMLP(), (6,), 2), (_FieldConvNet(), (8, 8, 2), 3)])
def test_flax_modules_are_rewritten(module, shape, sites):
    params, x = _params(module, shape)
    f = functools.partial(module.apply, params)
    assert count_relus(f, x) == sites

    @jax.jit
    def run(x):
        fns = [f] + [backward_rule(f, r) for r in ("deconvnet", "guided")]
        return [g(x) for g in fns], [jax.grad(lambda x: g(x)[1])(x) for g in fns]

    (out, *outs), (plain, *grads) = run(x)
    for o, g in zip(outs, grads):
        np.testing.assert_array_equal(o, out)
        assert not np.allclose(g, plain)


# ---- 4./5. where no ReLU is present, and the "gradient" rule ----------------------------


def _relu_free(x):  # x: [6,6,1]
    k = jnp.arange(9.0).reshape(3, 3, 1, 1) / 10 - 0.4
    y = lax.conv_general_dilated(x[None], k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]
    y = jnp.tanh(y) + jnp.maximum(y, 0.25)  # a max against a non-zero constant is no ReLU
    y = nn.max_pool(y, (2, 2), strides=(2, 2))
    return jnp.sum(y * jnp.linspace(-1, 1, y.size).reshape(y.shape)) + jnp.maximum(x[0, 0, 0], x[1, 1, 0])


@pytest.mark.parametrize("rule", RULES)
def test_relu_free_network_keeps_the_true_gradient(rule):
    x = jax.random.normal(jax.random.key(0), (6, 6, 1))
    assert count_relus(_relu_free, x) == 0
    np.testing.assert_array_equal(jax.jit(_grad(_relu_free, rule))(x), jax.jit(jax.grad(_relu_free))(x))


def test_gradient_rule_is_the_gradient_and_forward_values_are_unchanged():
    module = _FieldConvNet(act=nn.relu)
    params, x = _params(module, (8, 8, 2))
    f = lambda x: module.apply(params, x)[2]  # noqa: E731
    np.testing.assert_allclose(jax.jit(_grad(f, "gradient"))(x), jax.jit(jax.grad(f))(x), rtol=1e-6, atol=1e-7)
    # finite differences in float64: in float32 their rounding (~1e-3 at check_grads' step) sits at the
    # tolerance and moved past it with XLA's code generation level
    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
        f64 = lambda x: module.apply(params64, x)[2]  # noqa: E731
        check_grads(jax.jit(backward_rule(f64, "gradient")), (np.asarray(x, np.float64),), order=1, modes=["rev"])
    for rule in RULES:
        np.testing.assert_array_equal(backward_rule(f, rule)(x), f(x))  # both op by op


def test_gradient_rule_at_a_tie_follows_jax_nn_relu():
    x = jnp.array([0.0, 1.0])
    for spelling in ("jax.nn.relu", "maximum(z, 0)"):
        f = lambda x: jnp.sum(SPELLINGS[spelling](x))  # noqa: E731
        np.testing.assert_array_equal(_grad(f, "gradient")(x), [0.0, 1.0])


# ---- 6. composition --------------------------------------------------------------------


@jax.custom_vjp
def _times_two(x):
    return 2 * x


_times_two.defvjp(lambda x: (2 * x, None), lambda _, g: (3 * g,))  # deliberately not the gradient (2)


def test_composes_with_jit_vmap_nested_jit_and_custom_vjp():
    inner = jax.jit(lambda h: jnp.maximum(B @ h, 0))

    def f(x):  # x: [2]
        return jnp.dot(C, inner(_times_two(jax.nn.relu(A @ x))))

    xs = np.stack([X, -X, np.array([0.5, -3.0], np.float32)])
    per_example = np.stack([jax.grad(guided_backprop(f))(x) for x in xs])
    batched = jax.jit(jax.vmap(jax.grad(guided_backprop(f))))
    np.testing.assert_array_equal(batched(xs), per_example)
    assert count_relus(f, X) == 2

    # By hand for X: the custom bwd multiplies by 3 (not 2) between the two ReLUs.
    z1 = A @ X
    z2 = B @ (2 * np.maximum(z1, 0))
    d2 = _rule_np("guided", z2, C)
    d1 = _rule_np("guided", z1, 3 * (B.T @ d2))
    np.testing.assert_array_equal(per_example[0], A.T @ d1)
    np.testing.assert_array_equal(per_example[0], [6.0, 3.0])

    batched(xs)
    assert batched._cache_size() == 1  # a repeat call does not recompile


@pytest.mark.parametrize("rule", RULES)
def test_control_flow_remat_and_pytrees(rule):
    def f(params, x):  # the two-layer network, through checkpoint, cond and scan
        h = jax.checkpoint(jax.nn.relu)(params["a"] @ x)
        h = lax.cond(h.sum() > 0, jax.nn.relu, lambda h: 2 * h, params["b"] @ h)
        h, _ = lax.scan(lambda c, w: (jax.nn.relu(w * c), None), h, jnp.ones((2, 3)))
        return {"out": jnp.dot(C, h), "h": h}

    params = {"a": A, "b": B}
    assert count_relus(f, params, X) == 3  # checkpoint + taken cond branch + scan body (once)
    transformed = backward_rule(f, rule)
    jax.tree.map(np.testing.assert_array_equal, transformed(params, X), f(params, X))
    g = jax.grad(lambda p, x: transformed(p, x)["out"], argnums=(0, 1))(params, X)
    np.testing.assert_array_equal(g[1], _mlp_by_hand(rule))  # repeated ReLUs are idempotent under each rule
    assert jax.tree.structure(g[0]) == jax.tree.structure(params)


def test_scan_operand_counts_in_both_jax_layouts():
    from saliency_jax.attribution.rules import _scan_counts

    k = jnp.float32(2.0)  # a closed-over constant of the scan body
    jaxpr = jax.make_jaxpr(lambda c, xs: lax.scan(lambda c, x: (c * x + k, c), c, xs))(1.0, jnp.ones(3))
    scan = next(e for e in jaxpr.jaxpr.eqns if e.primitive is lax.scan_p)
    assert _scan_counts(scan.params) == (len(scan.invars) - 2, 1)  # the installed jax's layout

    class FlatTree:  # jax >= 0.11 describes the operands as a flat tree (consts, carry, xs)
        def unpack(self):
            return [0, 1], [2], [3, 4, 5]

    assert _scan_counts({"ft_in": FlatTree(), "jaxpr": None}) == (2, 1)


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="rule must be one of"):
        backward_rule(jax.nn.relu, "lrp")


# ---- 7. the pretrained model -----------------------------------------------------------


def test_pretrained_model_every_relu6_is_reached(model, skimage_images):
    from saliency_jax.models import efficientnet_lite

    specs = efficientnet_lite.block_specs(efficientnet_lite.LITE0)
    expected_sites = 1 + sum((s.expand_ratio != 1) + 1 for s in specs) + 1
    x = jnp.asarray(model.preprocess(skimage_images["chelsea"])[0])
    assert expected_sites == 33
    assert count_relus(model.logit_fn, x) == expected_sites

    @jax.jit
    def maps(x):
        fns = (model.logit_fn, deconvnet(model.logit_fn), guided_backprop(model.logit_fn))
        return [jax.grad(lambda x: f(x)[285])(x) for f in fns], fns[2](x)

    (plain, deconv, guided), logits = jax.device_get(maps(x))
    np.testing.assert_allclose(logits, model.logit_fn(x), rtol=1e-5, atol=1e-4)
    for m in (plain, deconv, guided):
        assert m.shape == x.shape and np.isfinite(m).all()
    assert not np.allclose(guided, plain) and not np.allclose(deconv, plain)
    # As saliency maps (max |.| over channels, as in the paper) guided backprop sees what the gradient sees.
    p, g = (np.abs(m).max(-1).ravel() for m in (plain, guided))
    assert np.corrcoef(p, g)[0, 1] > 0.05


# ---- a rule that cannot be honoured is refused, never a silent plain gradient -------------------
@pytest.mark.parametrize("act,found", [
    (jax.nn.gelu, "tanh"),
    (lambda h: jax.nn.gelu(h, approximate=False), "erfc (e.g. exact gelu)"),
    (jax.nn.leaky_relu, "where/select"),
    (lambda h: jnp.where(h > 0, h, 0.0), "where/select"),
    (jnp.tanh, "tanh"),
])
@pytest.mark.parametrize("method", ["guided", "deconvnet", "guided_smoothgrad"])
def test_rules_refuse_a_function_without_relu_sites(act, found, method):
    import saliency_jax

    w = jnp.linspace(-1.0, 1.0, 4 * 4 * 3 * 2).reshape(4, 4, 3, 2)
    f = lambda x: jnp.einsum("hwc,hwck->k", act(x), w)  # noqa: E731
    what = {"guided": "guided backprop", "deconvnet": "deconvnet", "guided_smoothgrad": "guided backprop"}[method]
    with pytest.raises(ValueError, match=rf"^{what} needs ReLU-family nonlinearities .*this function has none "
                                         rf"\(found: .*{re.escape(found)}"):
        saliency_jax.attribute(f, jnp.ones((1, 4, 4, 3)), 0, method=method, key=jax.random.key(0))
    relu_f = lambda x: jnp.einsum("hwc,hwck->k", jax.nn.relu(x), w)  # noqa: E731
    assert saliency_jax.attribute(relu_f, jnp.ones((1, 4, 4, 3)), 0, method=method,
                                  key=jax.random.key(0)).shape == (1, 4, 4, 3)
