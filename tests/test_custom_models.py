"""Bring your own model: one ConvNet as a linen module, an NNX module and a plain function, same weights.

Each kind becomes a `Model` in one call; every attribution method must give
the same maps on all three, and the known values (plain gradient, guided rule,
hand-computed Grad-CAM) come from the user's own function, not from the library.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import saliency_jax
from saliency_jax import methods
from saliency_jax.models.custom import from_function, from_linen, from_nnx
from method_options import cheap_options

H, W, K = 16, 16, 5
ATOL = 1e-5


# ---- the same network three ways ---------------------------------------------------------------
# conv1 3x3 (3->4) relu -> conv2 3x3 stride 2 (4->6) relu -> 2x2 max-pool -> flatten (4*4*6) -> dense K.


def _conv(x, w, b, stride=1):
    y = jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + b


def _head(params, a2):
    """Everything after conv2's (pre-ReLU) output: [B,8,8,6] -> logits [B,K]."""
    y = jax.lax.reduce_window(jax.nn.relu(a2), -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    return y.reshape(len(y), -1) @ params["head"]["kernel"] + params["head"]["bias"]


def net_fn(params, x, tap):
    """The plain-function kind, and the hand computation for the others."""
    h = tap("conv1", _conv(x, params["conv1"]["kernel"], params["conv1"]["bias"]))
    a2 = tap("conv2", _conv(jax.nn.relu(h), params["conv2"]["kernel"], params["conv2"]["bias"], 2))
    return tap("head", _head(params, a2))


def no_tap(name, h):
    return h


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = jax.nn.relu(nn.Conv(4, (3, 3), name="conv1")(x))
        x = nn.relu(nn.Conv(6, (3, 3), strides=2, name="conv2")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        return nn.Dense(K, name="head")(x.reshape(len(x), -1))


class NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.conv1 = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(4, 6, (3, 3), strides=2, rngs=rngs)
        self.head = nnx.Linear(96, K, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.conv2(jax.nn.relu(self.conv1(x))))
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        return self.head(x.reshape(len(x), -1))


@pytest.fixture(scope="module")
def params():
    shapes = {"conv1": ((3, 3, 3, 4), (4,)), "conv2": ((3, 3, 4, 6), (6,)), "head": ((96, K), (K,))}
    rng = np.random.default_rng(0)
    draw = lambda scale, shape: jnp.asarray(rng.normal(0, scale, shape), jnp.float32)  # noqa: E731
    return {n: {"kernel": draw(0.4, k), "bias": draw(0.1, b)} for n, (k, b) in shapes.items()}


@pytest.fixture(scope="module")
def nnx_net(params):
    """An `NNXNet` holding `params` (built abstractly: eager NNX init costs seconds of small compiles)."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: NNXNet(nnx.Rngs(0))))
    return nnx.merge(graphdef, params)


@pytest.fixture(scope="module")
def models(params, nnx_net):
    return {
        "linen": from_linen(LinenNet(), {"params": params}, layers=("conv2", "conv1"), input_size=(H, W)),
        "nnx": from_nnx(nnx_net, layers=("conv2", "conv1"), input_size=(H, W)),
        "function": from_function(net_fn, params, layers=("conv2", "conv1"), input_size=(H, W)),
    }


@pytest.fixture(scope="module")
def x():
    return jnp.asarray(np.random.default_rng(1).normal(size=(2, H, W, 3)), jnp.float32)


TARGETS = jnp.array([1, 4])


def _user_gradients(params, x, transform=lambda f: f):
    """d transform(S_t)/dx per image, from the user's own function (no library code but `transform`)."""

    def grad(xi, t):
        return jax.grad(transform(lambda xi: net_fn(params, xi[None], no_tap)[0, t]))(xi)

    return jax.jit(jax.vmap(grad))(x, TARGETS)


# ---- construction ------------------------------------------------------------------------------
def test_logits_equal_the_users_own_code_on_every_kind(models, params, nnx_net, x):
    expected = jax.jit(net_fn, static_argnums=2)(params, x, no_tap)
    np.testing.assert_allclose(jax.jit(LinenNet().apply)({"params": params}, x), expected, atol=ATOL)
    np.testing.assert_allclose(nnx.jit(lambda net, x: net(x))(nnx_net, x), expected, atol=ATOL)
    for kind, model in models.items():
        np.testing.assert_allclose(model(x), expected, atol=ATOL, err_msg=kind)


def test_features_are_the_named_intermediates(models, params, x):
    conv1 = jax.jit(_conv)(x, params["conv1"]["kernel"], params["conv1"]["bias"])
    conv2 = jax.jit(_conv, static_argnums=3)(jax.nn.relu(conv1), params["conv2"]["kernel"], params["conv2"]["bias"], 2)
    for kind, model in models.items():
        assert model.layers == ("conv1", "conv2"), kind
        feats = model.features(x)
        assert set(feats) == {"conv1", "conv2"}, kind
        np.testing.assert_allclose(feats["conv1"], conv1, atol=ATOL, err_msg=kind)
        np.testing.assert_allclose(feats["conv2"], conv2, atol=ATOL, err_msg=kind)


def test_mutable_perturbations_give_one_zero_variable_per_layer(models, x):
    """`apply(mutable=["perturbations"])` works although layer "conv1" is also a submodule's scope name."""
    for kind, model in models.items():
        (_, feats), state = jax.eval_shape(lambda m, x: m.apply(x, mutable=["perturbations"]), model, x)
        assert set(feats) == set(state["perturbations"]) == {"conv1", "conv2"}, kind
        assert all(state["perturbations"][n].shape == feats[n].shape for n in feats), kind


def test_metadata_defaults_and_variables(models, params):
    for kind, model in models.items():
        assert model.labels == tuple(f"class_{i}" for i in range(K)) and model.num_classes == K, kind
        assert model.input_size == (H, W) and model.mean == (0.0,) and model.std == (1.0,), kind
    assert models["linen"].name == "LinenNet" and models["function"].name == "net_fn"
    # linen and function variables are the user's own tree; NNX's are its params state.
    for kind in models:
        np.testing.assert_array_equal(models[kind].variables["params"]["conv2"]["kernel"], params["conv2"]["kernel"])
    m = from_linen(LinenNet(), {"params": params}, input_size=H, mean=(1, 2, 3), std=2, labels=list("abcde"))
    assert m.input_size == (H, H) and m.mean == (1.0, 2.0, 3.0) and m.std == (2.0,) and m.labels == tuple("abcde")
    assert m.layers == () and m.features(jnp.zeros((1, H, H, 3))) == {}


def test_nnx_runs_in_eval_mode_without_touching_the_users_module():
    class BNNet(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
            self.bn = nnx.BatchNorm(4, rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)
            self.head = nnx.Linear(4, 3, rngs=rngs)

        def __call__(self, x):
            return self.head(self.drop(nnx.relu(self.bn(self.conv(x)))).mean((1, 2)))

    net = BNNet(nnx.Rngs(0))
    net.bn.mean[...] = jnp.arange(4.0)  # running statistics that differ from a batch's
    net.bn.var[...] = jnp.full((4,), 2.0)
    model = from_nnx(net, layers=("bn",), input_size=8)
    assert set(model.variables) == {"params", "batch_stats", "nnx_state"}
    x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 8, 8, 3)), jnp.float32)
    logits = model(x)
    assert not net.bn.use_running_average and not net.drop.deterministic  # the user's object is unchanged
    reference = nnx.merge(*nnx.split(net))  # an independent copy, switched to eval by hand
    reference.eval()
    np.testing.assert_allclose(logits, reference(x), atol=ATOL)
    np.testing.assert_array_equal(net.bn.mean[...], jnp.arange(4.0))


def test_linen_carries_every_collection_and_call_kwargs():
    class BNNet(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = True):
            y = nn.BatchNorm(use_running_average=not train, name="bn")(nn.Conv(4, (3, 3), name="conv")(x))
            return nn.Dense(3)(nn.relu(y).mean((1, 2)))

    net = BNNet()
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 8, 8, 3)), jnp.float32)
    variables = net.init(jax.random.key(0), x, train=False)
    variables["batch_stats"]["bn"]["mean"] = jnp.arange(4.0)
    model = from_linen(net, variables, layers=("bn",), input_size=8, call_kwargs={"train": False})
    np.testing.assert_allclose(model(x), net.apply(variables, x, train=False), atol=ATOL)
    conv = nn.Conv(4, (3, 3)).apply({"params": variables["params"]["conv"]}, x)
    np.testing.assert_allclose(
        model.features(x)["bn"],
        nn.BatchNorm(use_running_average=True).apply({"params": variables["params"]["bn"],
                                                      "batch_stats": variables["batch_stats"]["bn"]}, conv),
        atol=ATOL,
    )


# ---- every method on every kind ----------------------------------------------------------------
def _options(method):
    kw = {"key": jax.random.key(3, impl="rbg")} if methods.get(method).needs_key else {}  # rbg: cheaper on CPU
    return {**kw, **cheap_options(method, layer="conv2")}


@pytest.mark.parametrize("method", saliency_jax.available_methods())
def test_every_method_runs_on_every_kind_and_agrees(models, x, method):
    maps = {kind: saliency_jax.attribute(m, x, TARGETS, method=method, **_options(method))
            for kind, m in models.items()}
    for kind, out in maps.items():
        assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out))), kind
        np.testing.assert_allclose(out, maps["linen"], rtol=1e-4, atol=1e-5, err_msg=f"{kind} vs linen")
    assert float(jnp.abs(maps["linen"]).max()) > 0


def test_vanilla_is_the_gradient_of_the_users_function(models, params, x):
    expected = _user_gradients(params, x)
    for kind, model in models.items():
        np.testing.assert_allclose(saliency_jax.attribute(model, x, TARGETS), expected, atol=ATOL, err_msg=kind)


@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_backward_rules_reach_the_users_relus(models, params, x, rule):
    transform = {"guided": saliency_jax.guided_backprop, "deconvnet": saliency_jax.deconvnet}[rule]
    expected = _user_gradients(params, x, transform)
    assert float(jnp.abs(expected - _user_gradients(params, x)).max()) > 1e-3  # the rule changes this net's map
    for kind, model in models.items():
        out = saliency_jax.attribute(model, x, TARGETS, method=rule)
        np.testing.assert_allclose(out, expected, atol=ATOL, err_msg=kind)


@jax.jit
def _hand_gradcam(params, x, targets):
    """Grad-CAM on conv2 by hand: alpha = mean_hw dS/dA, relu(sum_k alpha_k A_k), bilinear to [H,W]."""
    a = _conv(jax.nn.relu(_conv(x, params["conv1"]["kernel"], params["conv1"]["bias"])),
              params["conv2"]["kernel"], params["conv2"]["bias"], 2)  # A [B,8,8,6]
    grads = jax.vmap(lambda ai, t: jax.grad(lambda ai: _head(params, ai[None])[0, t])(ai))(a, targets)  # dS/dA
    cam = jax.nn.relu(jnp.einsum("bhwk,bk->bhw", a, grads.mean(axis=(1, 2))))
    return jax.vmap(lambda c: jax.image.resize(c, (H, W), method="bilinear"))(cam)


def test_gradcam_equals_the_hand_computation(models, params, x):
    cam = _hand_gradcam(params, x, TARGETS)
    assert float(cam.min()) == 0 and float(cam.max()) > 0
    for kind, model in models.items():
        out = saliency_jax.attribute(model, x, TARGETS, method="gradcam", layer="conv2")
        np.testing.assert_allclose(out, jnp.broadcast_to(cam[..., None], x.shape), atol=ATOL, err_msg=kind)


def test_repeat_call_does_not_recompile(models, params, nnx_net, x):
    rebuild = {
        "linen": lambda: from_linen(LinenNet(), {"params": params}, layers=("conv1", "conv2"), input_size=(H, W)),
        "nnx": lambda: from_nnx(nnx_net, layers=("conv1", "conv2"), input_size=(H, W)),
        "function": lambda: from_function(net_fn, params, layers=("conv1", "conv2"), input_size=(H, W)),
    }
    for kind, model in models.items():
        saliency_jax.attribute(model, x, TARGETS, method="gradcam", layer="conv2")
        before = methods.attribute_batch._cache_size()
        saliency_jax.attribute(model, x + 1.0, TARGETS[::-1], method="gradcam", layer="conv2")
        # Building the same model again gives an equal static structure: no recompile either.
        saliency_jax.attribute(rebuild[kind](), x, TARGETS, method="gradcam", layer="conv2")
        assert methods.attribute_batch._cache_size() == before, kind


def test_nested_layer_names_linen_paths_and_nnx_attribute_paths():
    class Block(nn.Module):
        @nn.compact
        def __call__(self, x):
            return jax.nn.relu(nn.Conv(2, (1, 1), name="conv")(x))

    class Outer(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3, name="head")(Block(name="block1")(Block(name="block0")(x)).mean((1, 2)))

    class NNXBlock(nnx.Module):
        def __init__(self, cin, rngs):
            self.conv = nnx.Conv(cin, 2, (1, 1), rngs=rngs)

        def __call__(self, x):
            return nnx.relu(self.conv(x))

    class NNXOuter(nnx.Module):
        def __init__(self, rngs):
            self.blocks = nnx.List([NNXBlock(3, rngs), NNXBlock(2, rngs)])
            self.head = nnx.Linear(2, 3, rngs=rngs)

        def __call__(self, x):
            for block in self.blocks:
                x = block(x)
            return self.head(x.mean((1, 2)))

    rng = np.random.default_rng(4)
    draw = lambda s: jnp.asarray(rng.normal(size=s.shape), jnp.float32)  # noqa: E731
    params = jax.tree.map(draw, jax.eval_shape(Outer().init, jax.random.key(0), jnp.zeros((1, 4, 4, 3))))["params"]
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: NNXOuter(nnx.Rngs(0))))
    nnx_params = {"blocks": {0: params["block0"], 1: params["block1"]}, "head": params["head"]}
    linen = from_linen(Outer(), {"params": params}, layers=("block0", "block0/conv"), input_size=4)
    nnx_model = from_nnx(nnx.merge(graphdef, nnx_params), layers=("blocks.0", "blocks.0.conv"), input_size=4)
    assert linen.layers == ("block0/conv", "block0") and nnx_model.layers == ("blocks.0.conv", "blocks.0")

    x = jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32)
    conv0 = jnp.einsum("bhwc,cd->bhwd", x, params["block0"]["conv"]["kernel"][0, 0]) + params["block0"]["conv"]["bias"]
    linen_feats, nnx_feats = linen.features(x), nnx_model.features(x)
    np.testing.assert_allclose(linen_feats["block0/conv"], conv0, atol=ATOL)
    np.testing.assert_allclose(nnx_feats["blocks.0.conv"], conv0, atol=ATOL)
    np.testing.assert_allclose(linen_feats["block0"], jax.nn.relu(conv0), atol=ATOL)
    np.testing.assert_allclose(nnx_feats["blocks.0"], jax.nn.relu(conv0), atol=ATOL)
    np.testing.assert_allclose(nnx_model(x), linen(x), atol=ATOL)
    with pytest.raises(ValueError, match="available: block0/conv, block0, block1/conv, block1, head$"):
        from_linen(Outer(), {"params": params}, layers=("block0.conv",), input_size=4)
    with pytest.raises(ValueError, match="available: blocks.0.conv, blocks.0, blocks.1.conv, blocks.1, head$"):
        from_nnx(nnx.merge(graphdef, nnx_params), layers=("blocks/0",), input_size=4)


def test_a_plain_logit_function_still_works_without_an_adapter(models, params, x):
    """The per-image logit-function contract is unchanged: no `from_function` needed."""
    fn = lambda xi: net_fn(params, xi[None], no_tap)[0]  # noqa: E731
    np.testing.assert_allclose(
        saliency_jax.attribute(fn, x, TARGETS), saliency_jax.attribute(models["nnx"], x, TARGETS), atol=ATOL
    )


def test_function_without_params_or_tap(params, x):
    model = from_function(lambda x: net_fn(params, x, no_tap), input_size=(H, W))
    assert model.variables == {} and model.layers == ()
    np.testing.assert_allclose(model(x), net_fn(params, x, no_tap), atol=ATOL)
    boxed = from_function(lambda p, x: x.mean((1, 2)) @ p[0] + p[1], (jnp.eye(3), jnp.ones(3)), input_size=4)
    assert jax.tree.structure(boxed.variables) == jax.tree.structure({"params": {"fn": (0, 0)}})
    np.testing.assert_allclose(boxed(jnp.ones((1, 4, 4, 3))), [[2.0, 2.0, 2.0]])


# ---- bad input ---------------------------------------------------------------------------------
def test_unknown_layer_lists_the_available_ones(params, nnx_net):
    with pytest.raises(ValueError, match=r"unknown layer\(s\) 'conv3' for LinenNet; available: conv1, conv2, head"):
        from_linen(LinenNet(), {"params": params}, layers=("conv3",), input_size=H)
    with pytest.raises(ValueError, match=r"unknown layer\(s\) 'blocks.0' for NNXNet; available: conv1, conv2, head"):
        from_nnx(nnx_net, layers=("blocks.0",), input_size=H)
    with pytest.raises(ValueError, match="fn has no `tap` parameter, so it exposes no layers"):
        from_function(lambda p, x: net_fn(p, x, no_tap), params, layers=("conv2",), input_size=H)


def test_a_layer_run_twice_cannot_be_tapped():
    class Shared(nn.Module):
        @nn.compact
        def __call__(self, x):
            conv = nn.Conv(3, (3, 3), name="conv")
            return conv(conv(x)).mean((1, 2))

    variables = {"params": {"conv": {"kernel": jnp.zeros((3, 3, 3, 3)), "bias": jnp.zeros(3)}}}
    with pytest.raises(ValueError, match=r"layer\(s\) 'conv' \(2 times\) run more than once per forward pass"):
        from_linen(Shared(), variables, layers=("conv",), input_size=8)


@dataclasses.dataclass
class Unhashable:
    """A callable whose `__eq__` makes it unhashable, so it cannot key a compilation cache."""

    def __call__(self, params, x):
        return net_fn(params, x, no_tap)


@pytest.mark.parametrize(
    "build,error,message",
    [
        (lambda p: from_function(3, p, input_size=H), TypeError, "from_function expects a callable"),
        (lambda p: from_linen(LinenNet(), p, input_size=H), ValueError, r"variables must be what module.init returns"),
        (lambda p: from_linen(nn.Conv(4, (3, 3)), {"params": p["conv1"]}, input_size=H), ValueError,
         r"Conv must return logits \[B,K\]; for x of shape \(2, 16, 16, 3\) it returned \(2, 16, 16, 4\)"),
        (lambda p: from_linen(LinenNet(), {"params": {**p, "conv2": p["conv1"]}}, input_size=H), ValueError,
         r"LinenNet fails on an input of shape \(2, 16, 16, 3\): ScopeParamShapeError"),
        (lambda p: from_function(net_fn, p, labels=("a", "b"), input_size=H), ValueError,
         "net_fn has 5 classes but 2 labels were given"),
        (lambda p: from_function(net_fn, p, input_size=(H,)), ValueError, "input_size must be"),
        (lambda p: from_linen(LinenNet(), {"params": p}, input_size=H, call_kwargs={"a": []}), ValueError,
         "call_kwargs values must be hashable"),
        (lambda p: from_nnx(LinenNet(), input_size=H), TypeError, "from_nnx expects a flax.nnx Module"),
        (lambda p: from_function(net_fn, p, input_size=H, std=(1, 2)), ValueError, "std must be a scalar or one value"),
        (lambda p: from_function(Unhashable(), p, input_size=H), ValueError, "static fields must be hashable"),
    ],
)
def test_bad_input_is_a_clear_error(params, build, error, message):
    with pytest.raises(error, match=message):
        build(params)
