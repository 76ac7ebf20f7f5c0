"""LRP and DeepLift as jaxpr transforms (saliency_jax.attribution.relevance), checked by hand.

Every LRP rule is recomputed here in NumPy from its definition as a sum of
contributions z_ij over a layer's weight matrix (a convolution as its explicit
Toeplitz matrix), independently of the VJP formulation the library uses.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saliency_jax
from saliency_jax import methods
from saliency_jax.attribution import lrp_rules
from saliency_jax.attribution.relevance import deeplift, lrp, relevance_sites
from saliency_jax.models import layers

LINEAR_RULES = ("zero", "epsilon", "gamma", "zplus", "alpha_beta", "flat", "wsquare", "zbox")
OPTS = dict(epsilon=0.05, stabilizer=1e-6, gamma=0.3, alpha=2.0, beta=1.0, low=-1.5, high=2.0)


# ---- NumPy relevance of one layer y = x W + b from its contributions ------------------------------
def _stab(z, eps):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def _share(c, den, r, eps):
    """sum_j c_ij / stab(den_j) r_j."""
    return c @ (r / _stab(den, eps))


def np_rule(rule, x, w, b, r, o=OPTS, mask=None):
    """R_x [n] of `rule` at y = x @ w + b (w [n,m]; mask: which w_ij exist, for the flat rule)."""
    pos, neg = np.maximum, np.minimum
    xp, xn, wp, wn = pos(x, 0)[:, None], neg(x, 0)[:, None], pos(w, 0), neg(w, 0)
    z = x @ w + b
    if rule in ("zero", "epsilon"):
        return _share(x[:, None] * w, z, r, 0.0 if rule == "zero" else o["epsilon"])
    eps = o["stabilizer"]
    if rule == "zplus":
        c = xp * wp + xn * wn
        return _share(c, c.sum(0) + pos(b, 0), r, eps)
    if rule == "alpha_beta":
        p, n = xp * wp + xn * wn, xp * wn + xn * wp
        return o["alpha"] * _share(p, p.sum(0) + pos(b, 0), r, eps) - o["beta"] * _share(n, n.sum(0) + neg(b, 0), r, eps)
    if rule == "gamma":
        g = o["gamma"]
        up = xp * (w + g * wp) + xn * (w + g * wn)
        down = xp * (w + g * wn) + xn * (w + g * wp)
        return (_share(up, up.sum(0) + b + g * pos(b, 0), r * (z > 0), eps)
                + _share(down, down.sum(0) + b + g * neg(b, 0), r * (z < 0), eps))
    if rule == "flat":
        c = np.ones_like(w) if mask is None else mask
        return _share(c, c.sum(0), r, eps)
    if rule == "wsquare":
        return _share(w**2, (w**2).sum(0) + b**2, r, eps)
    if rule == "zbox":
        low, high = np.full_like(x, o["low"])[:, None], np.full_like(x, o["high"])[:, None]
        c = x[:, None] * w - low * wp - high * wn
        return _share(c, c.sum(0), r, eps)
    raise AssertionError(rule)


def _relevance(fn, x, target, composite, **options):
    y, pull = jax.vjp(lrp(fn, composite, **options), x)
    return np.asarray(pull(jax.nn.one_hot(target, y.shape[-1]) * y)[0]), np.asarray(y)


# ---- a two-layer dense net: every rule, by hand -------------------------------------------------
@pytest.fixture(scope="module")
def dense_net():
    rng = np.random.default_rng(0)
    w1, b1 = rng.normal(size=(6, 5)), rng.normal(size=5) * 0.5
    w2, b2 = rng.normal(size=(5, 3)), rng.normal(size=3) * 0.5
    x = rng.normal(size=6)
    f = lambda v: jax.nn.relu(v @ w1 + b1) @ w2 + b2  # noqa: E731
    return f, (w1, b1, w2, b2), x


@pytest.mark.parametrize("rule", LINEAR_RULES)
def test_every_rule_on_a_two_layer_dense_net_matches_the_hand_computation(dense_net, rule):
    jax.config.update("jax_enable_x64", True)
    try:
        f, (w1, b1, w2, b2), x = dense_net
        out, y = _relevance(f, jnp.asarray(x), 1, {"dense": rule}, **OPTS)
        h = np.maximum(x @ w1 + b1, 0)
        r_h = np_rule(rule, h, w2, b2, np.eye(3)[1] * y)
        expected = np_rule(rule, x, w1, b1, r_h)  # the ReLU passes relevance through
        np.testing.assert_allclose(out, expected, rtol=1e-9, atol=1e-12)
    finally:
        jax.config.update("jax_enable_x64", False)


# ---- a tiny conv net: every rule at the conv (first and later), by hand -------------------------
def _conv_matrix(k):
    """[5*5*2, 5*5*3] Toeplitz matrix of a SAME 3x3 conv k [3,3,2,3] on 5x5 (NHWC, flattened), and its mask."""
    n, cin, cout = 5, k.shape[2], k.shape[3]
    m, mask = np.zeros((n * n * cin, n * n * cout)), np.zeros((n * n * cin, n * n * cout))
    for i in range(n):
        for j in range(n):
            for di in range(3):
                for dj in range(3):
                    a, bb = i + di - 1, j + dj - 1
                    if 0 <= a < n and 0 <= bb < n:
                        rows = (a * n + bb) * cin + np.arange(cin)
                        cols = (i * n + j) * cout + np.arange(cout)
                        m[np.ix_(rows, cols)] = k[di, dj]
                        mask[np.ix_(rows, cols)] = 1
    return m, mask


@pytest.fixture(scope="module")
def conv_net():
    rng = np.random.default_rng(1)
    k, kb = rng.normal(size=(3, 3, 2, 3)), rng.normal(size=3) * 0.3
    w2, b2 = rng.normal(size=(75, 4)) * 0.3, rng.normal(size=4) * 0.3
    x = rng.normal(size=(5, 5, 2))

    def f(v):
        y = jax.lax.conv_general_dilated(v[None], k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return (jax.nn.relu(y + kb).reshape(1, -1) @ w2 + b2)[0]

    return f, (k, kb, w2, b2), x


@pytest.mark.parametrize("rule", LINEAR_RULES)
def test_every_rule_on_a_tiny_conv_net_matches_the_toeplitz_hand_computation(conv_net, rule):
    jax.config.update("jax_enable_x64", True)
    try:
        f, (k, kb, w2, b2), x = conv_net
        out, y = _relevance(f, jnp.asarray(x), 2, {"conv": rule, "dense": "epsilon"}, **OPTS)
        m, mask = _conv_matrix(k)
        bias = np.tile(kb, 25)
        h = np.maximum(x.ravel() @ m + bias, 0)
        r_h = np_rule("epsilon", h, w2, b2, np.eye(4)[2] * y)
        expected = np_rule(rule, x.ravel(), m, bias, r_h, mask=mask)
        np.testing.assert_allclose(out.ravel(), expected, rtol=1e-8, atol=1e-11)
    finally:
        jax.config.update("jax_enable_x64", False)


def test_composites_choose_the_first_layer_rule_as_zennit(conv_net):
    _, (k, kb, w2, b2), x = conv_net
    f = conv_net[0]
    found = [k for k, _ in relevance_sites(f, jnp.asarray(x, jnp.float32))]
    assert found == ["conv", "activation", "dense"]
    flat, _ = _relevance(f, jnp.asarray(x, jnp.float32), 0, "epsilon_plus_flat")
    manual, _ = _relevance(f, jnp.asarray(x, jnp.float32), 0, {"conv": "flat", "dense": "epsilon"})
    np.testing.assert_allclose(flat, manual, rtol=1e-6)
    by_name, _ = _relevance(f, jnp.asarray(x, jnp.float32), 0, {"first": "wsquare"})
    again, _ = _relevance(f, jnp.asarray(x, jnp.float32), 0, {"conv": "wsquare"})
    np.testing.assert_allclose(by_name, again, rtol=1e-6)


# ---- conservation ------------------------------------------------------------------------------
def _bias_free_resnet(seed=2):
    """conv-relu, maxpool, conv + skip (residual add), avg-pool, dense; no biases."""
    rng = np.random.default_rng(seed)
    k1, k2 = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32), jnp.asarray(rng.normal(size=(3, 3, 4, 4)) * .3,
                                                                                   jnp.float32)
    w = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)

    def conv(v, kk):
        return jax.lax.conv_general_dilated(v, kk, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def f(x):
        h = jax.nn.relu(conv(x[None], k1))
        h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        h = jax.nn.relu(conv(h, k2) + h)
        return (jnp.mean(h, axis=(1, 2)) @ w)[0]

    return f


@pytest.mark.parametrize("composite,options", [("epsilon", {"epsilon": 0.0}), ("epsilon", {"epsilon": 1e-7})])
def test_lrp0_and_epsilon_conserve_the_target_logit_on_a_bias_free_network(composite, options):
    f = _bias_free_resnet()
    x = jax.random.normal(jax.random.key(0), (8, 8, 3))
    for target in range(3):
        r, y = _relevance(f, x, target, composite, **options)
        assert abs(r.sum() - y[target]) <= 1e-4 * max(1.0, abs(y[target])), (r.sum(), y[target])


def test_deeplift_sums_to_the_difference_from_the_baseline():
    f = _bias_free_resnet()
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(8, 8, 3)), jnp.float32)
    for baseline in (jnp.zeros_like(x), jnp.asarray(rng.normal(size=(8, 8, 3)) * 0.5, jnp.float32)):
        for target in range(3):
            attribution = methods.DeepLift(baseline=baseline).explain(f, x, jnp.int32(target))
            delta = f(x)[target] - f(baseline)[target]
            assert abs(float(attribution.sum()) - float(delta)) <= 1e-4 * max(1.0, abs(float(delta)))


# ---- the rule at each primitive kind ------------------------------------------------------------
def test_residual_add_splits_relevance_in_proportion_to_the_summands():
    a_w, b_w = jnp.array([[2.0], [0.0]]), jnp.array([[0.0], [3.0]])
    f = lambda x: (x @ a_w + x @ b_w)  # noqa: E731   y = 2 x0 + 3 x1
    r, y = _relevance(f, jnp.array([1.0, 1.0]), 0, "epsilon", epsilon=0.0)
    np.testing.assert_allclose(r, [2.0, 3.0], rtol=1e-6)  # shares 2/5 and 3/5 of y = 5


def test_max_pooling_sends_relevance_to_the_maximum_and_avg_pooling_in_proportion():
    x = jnp.array([[1.0, 3.0], [2.0, 0.5]])
    pool = lambda v: jax.lax.reduce_window(v, -jnp.inf, jax.lax.max, (2, 2), (2, 2), "VALID").reshape(1)  # noqa
    r, _ = _relevance(lambda v: pool(v) * 2.0, x, 0, "epsilon", epsilon=0.0)
    np.testing.assert_allclose(r, [[0, 6.0], [0, 0]], rtol=1e-6)
    r, _ = _relevance(lambda v: jnp.mean(v).reshape(1), x, 0, "epsilon", epsilon=0.0)
    np.testing.assert_allclose(r, np.asarray(x) / 4, rtol=1e-6)  # x_i / sum(x) of mean = sum / 4
    # a mean is one Norm layer (zennit's AvgPool): the stabiliser acts on the mean 1.625, not the sum 6.5
    r, y = _relevance(lambda v: jnp.mean(v).reshape(1), x, 0, "epsilon", stabilizer=0.5)
    np.testing.assert_allclose(r, np.asarray(x) / 4 * y[0] / (y[0] + 0.5), rtol=1e-6)
    # an adaptive average pool as two pooling matrices (VGG's einsum over h, then w) is one Norm layer
    from saliency_jax.models.vgg import adaptive_avg_pool

    x = jnp.asarray(np.random.default_rng(6).uniform(0.5, 2, size=(1, 2, 2, 3)), jnp.float32)
    pooled = lambda v: adaptive_avg_pool(v, (7, 7)).reshape(-1)  # noqa: E731
    r, _ = _relevance(pooled, x, 24 * 3 + 1, "epsilon", stabilizer=0.1)
    y = np.asarray(pooled(x))
    expected = np.asarray(x).reshape(-1) * np.asarray(jax.grad(lambda v: pooled(v)[73])(x)).reshape(-1) * y[73] / (
        y[73] + 0.1)
    np.testing.assert_allclose(r.reshape(-1), expected, rtol=1e-5)


@pytest.mark.parametrize("impl", ["shift_add", "native", "auto"])
def test_grouped_and_depthwise_convolutions_are_one_layer_under_every_implementation(impl):
    rng = np.random.default_rng(4)
    w = jnp.asarray(rng.normal(size=(3, 3, 4)), jnp.float32)
    head = jnp.asarray(rng.normal(size=(4 * 16, 3)), jnp.float32)
    x = jnp.asarray(rng.normal(size=(4, 4, 4)), jnp.float32)

    def f(v, impl=impl):
        return jax.nn.relu(layers.depthwise_conv(v[None], w, stride=1, impl=impl) + 0.1).reshape(1, -1)[0] @ head

    assert [k for k, _ in relevance_sites(f, x)][0] == "conv"
    grouped = lambda v: f(v, "native")  # noqa: E731   conv_general_dilated(feature_group_count=4)
    for rule in ("zplus", "gamma", "flat", "zbox"):
        out, _ = _relevance(f, x, 1, {"conv": rule}, **OPTS)
        expected, _ = _relevance(grouped, x, 1, {"conv": rule}, **OPTS)
        np.testing.assert_allclose(out, expected, rtol=2e-4, atol=1e-6, err_msg=rule)
        assert float(np.abs(expected).max()) > 0


def test_a_jitted_layer_and_its_bias_are_one_layer():
    """A layer inside a jit call, its bias added outside that call."""
    jax.config.update("jax_enable_x64", True)
    try:
        rng = np.random.default_rng(5)
        w, b, x = rng.normal(size=(3, 4)), rng.normal(size=4), rng.normal(size=(2, 2, 3))
        f = lambda v: (jax.jit(layers.pointwise_conv)(v[None], w) + b).reshape(-1)  # noqa: E731
        assert [k for k, _ in relevance_sites(f, jnp.asarray(x))] == ["conv"]
        out, y = _relevance(f, jnp.asarray(x), 5, {"conv": "zplus"}, **OPTS)
        r = np.eye(16)[5] * y
        expected = np_rule("zplus", x.reshape(4, 3)[1], w, b, r.reshape(4, 4)[1])  # position 1, channel 1
        np.testing.assert_allclose(out.reshape(4, 3)[1], expected, rtol=1e-9)
        np.testing.assert_allclose(np.delete(out.reshape(4, 3), 1, axis=0), 0, atol=1e-12)
    finally:
        jax.config.update("jax_enable_x64", False)


def _compiled_convolutions(fn, x) -> int:
    """Convolutions XLA keeps in the compiled relevance pass of fn at x (unused VJP forwards removed)."""
    def relevance(v):
        y, pull = jax.vjp(fn, v)
        return pull(y)[0]

    return jax.jit(relevance).lower(x).compile().as_text().count(" convolution(")


def test_gamma_skips_its_negative_output_term_only_where_a_relu_zeroes_that_relevance():
    """zennit's gamma has a [y < 0] term; where y feeds only a ReLU whose relevance is proportional to
    its value (the next layer's rule), that term is zero and skipped: one transposed convolution for
    a non-negative input instead of two. A ReLU output that is the function's output keeps the term."""
    jax.config.update("jax_enable_x64", True)
    try:
        rng = np.random.default_rng(7)
        k1, k2, x = rng.normal(size=(3, 3, 2, 3)), rng.normal(size=(3, 3, 3, 3)), rng.normal(size=(5, 5, 2))
        conv = lambda v, k: jax.lax.conv_general_dilated(  # noqa: E731
            v[None], k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]
        f = lambda v: jnp.mean(jax.nn.relu(conv(jax.nn.relu(conv(v, k1)), k2)), axis=(0, 1))  # noqa: E731
        gamma = lrp(f, {"conv": "gamma"}, gamma=0.3)
        # conv1 (signed input): 1 modified forward + 2 transposed; conv2 (x >= 0, ReLU'd output): 1 + 1
        assert _compiled_convolutions(gamma, jnp.asarray(x)) == 2 + 3 + 2
        # the same values as the full rule: the hand computation with both terms
        m1, _ = _conv_matrix(k1)
        m2, _ = _conv_matrix(k2)
        h1 = np.maximum(x.reshape(-1) @ m1, 0)
        h2 = np.maximum(h1 @ m2, 0)
        r_out = np.asarray(f(jnp.asarray(x)))
        r_h2 = h2 * np.tile(r_out / _stab(r_out, 1e-6) / 25, 25)  # the mean's Norm rule, all 3 outputs seeded
        o = dict(OPTS, gamma=0.3)
        expected = np_rule("gamma", x.reshape(-1), m1, 0 * m1[0], np_rule("gamma", h1, m2, 0 * m2[0], r_h2, o), o)
        r = np.asarray(jax.vjp(gamma, jnp.asarray(x))[1](jnp.asarray(r_out))[0])
        np.testing.assert_allclose(r.reshape(-1), expected, rtol=1e-9, atol=1e-12)
        # a ReLU'd conv output returned as it is: relevance there is whatever the caller seeds
        g = lambda v: jax.nn.relu(conv(v, k1)).reshape(-1)  # noqa: E731
        seed = jnp.ones(75)
        r = np.asarray(jax.vjp(lrp(g, {"conv": "gamma"}, gamma=0.3), jnp.asarray(x))[1](seed)[0])
        np.testing.assert_allclose(r.reshape(-1), np_rule("gamma", x.reshape(-1), m1, 0 * m1[0], np.ones(75), o),
                                   rtol=1e-9, atol=1e-12)
    finally:
        jax.config.update("jax_enable_x64", False)


def test_deeplift_multipliers_by_hand():
    w1, w2 = jnp.array([[1.0, -1.0], [2.0, 1.0]]), jnp.array([1.0, 1.0])
    f = lambda v: (jax.nn.relu(v @ w1 - 0.5) @ w2).reshape(1)  # noqa: E731
    x, x0 = jnp.array([1.0, 1.0]), jnp.array([0.0, 0.5])
    # pre-activations: x -> [2.5, -0.5], x0 -> [0.5, 0]; relu rescale multipliers [2/2, 0/-0.5 = 0]
    out = methods.DeepLift(baseline=x0).explain(f, x, jnp.int32(0))
    np.testing.assert_allclose(out, (x - x0) * (w1 @ jnp.array([1.0, 0.0])), rtol=1e-6)
    pool = lambda v: jax.lax.reduce_window(v, -jnp.inf, jax.lax.max, (2,), (2,), "VALID")  # noqa: E731
    x, x0 = jnp.array([1.0, 3.0]), jnp.array([2.0, 0.0])  # argmax moves from 0 (ref) to 1 (input)
    out = methods.DeepLift(baseline=x0).explain(pool, x, jnp.int32(0))
    # Captum's rule: g (max(y, y0) - y0) = 1 to x's argmax, g (y - max(y, y0)) = 0 to x0's
    np.testing.assert_allclose(out, [0.0, 1.0], atol=1e-6)


# ---- end to end --------------------------------------------------------------------------------
def test_efficientnet_lite0_end_to_end(model, skimage_images):
    x = jax.image.resize(model.preprocess(skimage_images["chelsea"]), (1, 64, 64, 3), "linear")  # compiles faster
    sites = [k for k, _ in relevance_sites(model.logit_fn, x[0])]
    assert sites.count("conv") == 49 and sites.count("dense") == 1 and sites.count("sum") == 9
    out = saliency_jax.attribute(model, x, "top1", method=methods.LRP(composite="epsilon"))
    assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
    assert float(jnp.abs(out).max()) > 0 and float(jnp.std(out)) > 0


# ---- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("options,message", [
    (dict(composite="plus_flat"), "unknown composite 'plus_flat'; choose one of epsilon, epsilon_plus"),
    (dict(gamma=-0.5), r"gamma must lie in \[0, inf\], got -0.5"),
    (dict(epsilon=float("nan")), "epsilon must be a finite number, got nan"),
    (dict(alpha=1.0, beta=1.0), "alpha - beta must equal 1"),
    (dict(composite={"conv": "zzplus"}), "unknown rule for 'conv' 'zzplus'; choose one of zero"),
    (dict(composite={"dense": "pass"}), "rule 'pass' is for elementwise layers, not 'dense' layers"),
])
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(ValueError, match=message):
        methods.get("lrp", **options)


def test_a_function_without_linear_layers_is_refused_in_one_line():
    x = jnp.ones((1, 4, 4, 3))
    f = lambda v: jnp.tanh(v).sum(axis=(0, 1)) * 2.0  # noqa: E731
    for name, what in (("lrp", "LRP"), ("deeplift", "DeepLift")):
        with pytest.raises(ValueError, match=rf"^{what} needs linear layers .*; this function has none \(found: tanh\)$"):
            saliency_jax.attribute(f, x, 0, method=name)
    with pytest.raises(ValueError, match="needs low= and high= for a bare logit function"):
        saliency_jax.attribute(_bias_free_resnet(), jnp.ones((1, 8, 8, 3)), 0, method="lrp",
                               composite="epsilon_gamma_box")
