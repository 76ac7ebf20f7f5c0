"""from_equinox and from_keras: gradients equal `jax.grad` of the raw model, Grad-CAM a hand computation on
the named layer, and the README examples run.

Keras needs its backend chosen before its first import: this module sets
KERAS_BACKEND=jax (and skips the Keras tests if keras was already imported
with another backend in this process).
"""

import os
import pathlib

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import saliency_jax  # noqa: E402

eqx = pytest.importorskip("equinox")
keras = pytest.importorskip("keras")
needs_jax_keras = pytest.mark.skipif(keras.backend.backend() != "jax", reason="keras imported with another backend")

S, K = 8, 4
README = (pathlib.Path(__file__).parents[1] / "README.md").read_text()


def _readme_block(tag: str) -> str:
    block = README.split(f"<!-- tested: tests/test_equinox_keras.py runs this block ({tag}) -->\n```python\n", 1)[1]
    return block.split("```", 1)[0]


def _gradcam_from(acts, grads, shape):
    """Grad-CAM from a layer's activation A [h,w,K] and dS/dA, upsampled as the paper does."""
    cam = jax.nn.relu(jnp.einsum("hwk,k->hw", acts, grads.mean((0, 1))))
    return jnp.broadcast_to(jax.image.resize(cam, shape[:2], "bilinear")[..., None], shape)


@pytest.fixture(scope="module")
def x():
    return jnp.asarray(np.random.default_rng(0).normal(size=(2, S, S, 3)), jnp.float32)


# ---- Equinox -------------------------------------------------------------------------------------
class EqxNet(eqx.Module):
    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    head: eqx.nn.Linear

    def __init__(self, key):
        a, b, c = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(3, 4, 3, padding=1, key=a)
        self.conv2 = eqx.nn.Conv2d(4, 6, 3, stride=2, padding=1, key=b)
        self.head = eqx.nn.Linear(6 * (S // 2) ** 2, K, key=c)

    def features(self, x):  # [C,H,W] -> conv2's output [6,h,w] (the layer Grad-CAM reads)
        return self.conv2(jax.nn.relu(self.conv1(x)))

    def __call__(self, x):
        return self.head(jax.nn.relu(self.features(x)).reshape(-1))


@pytest.fixture(scope="module")
def eqx_net():
    return EqxNet(jax.random.key(1))


@pytest.fixture(scope="module")
def eqx_model(eqx_net):
    return saliency_jax.from_equinox(eqx_net, layers=("conv2", "conv1"), input_size=S)


def test_equinox_logits_and_gradient_equal_the_raw_module(eqx_net, eqx_model, x):
    assert eqx_model.layers == ("conv1", "conv2") and dict(eqx_model.layouts) == {"conv1": "CHW", "conv2": "CHW"}
    raw = jax.vmap(lambda xi: eqx_net(jnp.moveaxis(xi, -1, 0)))
    np.testing.assert_allclose(eqx_model.logits(x), raw(x), rtol=1e-6, atol=1e-6)
    grads = jax.vmap(jax.grad(lambda xi: eqx_net(jnp.moveaxis(xi, -1, 0))[2]))(x)
    np.testing.assert_allclose(saliency_jax.attribute(eqx_model, x, 2), grads, rtol=1e-5, atol=1e-7)


def test_equinox_gradcam_equals_the_hand_computation(eqx_net, eqx_model, x):
    def hand(xi, t):
        a = eqx_net.features(jnp.moveaxis(xi, -1, 0))  # [C,h,w]
        g = jax.grad(lambda a: eqx_net.head(jax.nn.relu(a).reshape(-1))[t])(a)
        return _gradcam_from(jnp.moveaxis(a, 0, -1), jnp.moveaxis(g, 0, -1), xi.shape)

    cams = saliency_jax.attribute(eqx_model, x, jnp.array([1, 3]), method="gradcam", layer="conv2")
    np.testing.assert_allclose(cams, jnp.stack([hand(x[0], 1), hand(x[1], 3)]), rtol=1e-5, atol=1e-6)
    feats = eqx_model.features(x)["conv2"]
    np.testing.assert_allclose(feats[0], jnp.moveaxis(eqx_net.features(jnp.moveaxis(x[0], -1, 0)), 0, -1), atol=1e-6)


def test_equinox_sequential_paths_and_errors():
    k1, k2 = jax.random.split(jax.random.key(0))
    seq = eqx.nn.Sequential([eqx.nn.Conv2d(3, 2, 3, key=k1), eqx.nn.Lambda(jax.nn.relu),
                             eqx.nn.Lambda(lambda h: h.mean((1, 2))), eqx.nn.Linear(2, K, key=k2)])
    with pytest.raises(ValueError, match=r"unknown layer\(s\) 'conv' for Sequential; available: layers.0, layers.1"):
        saliency_jax.from_equinox(seq, layers=("conv",), input_size=S)
    with pytest.raises(TypeError, match="from_equinox expects an equinox.Module"):
        saliency_jax.from_equinox(lambda x: x, input_size=S)
    model = saliency_jax.from_equinox(seq, layers=("layers.1",), input_size=S)
    assert model.variables["params"]["eqx"].layers[0].weight.shape == (2, 3, 3, 3)


def test_readme_equinox_example_runs():
    code = _readme_block("equinox")
    assert 5 <= len(code.strip().splitlines()) <= 12
    ns = {"jax": jax, "jnp": jnp, "np": np, "saliency_jax": saliency_jax}
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["model"].channels == 1 and ns["cam"].shape == (1, 12, 12, 1) and ns["shown"].shape == (12, 12, 3)


# ---- Keras ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keras_parts():
    keras.utils.set_random_seed(0)
    layers = [keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1"),
              keras.layers.Conv2D(6, 3, strides=2, padding="same", name="conv2"),
              keras.layers.BatchNormalization(name="bn"), keras.layers.ReLU(name="relu2"),
              keras.layers.Flatten(name="flat"), keras.layers.Dense(K, name="head")]
    inputs = keras.Input((S, S, 3))
    h = inputs
    for layer in layers:
        h = layer(h)
    net = keras.Model(inputs, h)
    bn = net.get_layer("bn")  # non-trivial running statistics, so inference mode matters
    bn.moving_mean.assign(np.linspace(-0.5, 0.5, 6).astype(np.float32))
    bn.moving_variance.assign(np.linspace(0.5, 2.0, 6).astype(np.float32))
    return net, {layer.name: layer for layer in layers}


@needs_jax_keras
def test_keras_logits_and_gradient_equal_the_raw_model(keras_parts, x):
    net, _ = keras_parts
    model = saliency_jax.from_keras(net, layers=("conv2",))
    assert model.input_size == (S, S) and model.channels == 3 and "keras_state" in model.variables
    np.testing.assert_allclose(model.logits(x), np.asarray(net(x, training=False)), rtol=1e-5, atol=1e-6)
    trainable = [v.value for v in net.trainable_variables]
    state = [v.value for v in net.non_trainable_variables]

    def score(xi):
        return net.stateless_call(trainable, state, xi[None], training=False)[0][0, 1]

    np.testing.assert_allclose(saliency_jax.attribute(model, x, 1), jax.vmap(jax.grad(score))(x), rtol=1e-5,
                               atol=1e-7)


@needs_jax_keras
def test_keras_gradcam_on_a_middle_layer_equals_the_hand_computation(keras_parts, x):
    net, parts = keras_parts
    model = saliency_jax.from_keras(net, layers=("conv2",))

    def hand(xi, t):
        a = parts["conv2"](parts["conv1"](xi[None]))[0]  # the layers called one by one

        def rest(a):
            h = parts["relu2"](parts["bn"](a[None], training=False))
            return parts["head"](parts["flat"](h))[0, t]

        return _gradcam_from(a, jax.grad(rest)(a), xi.shape)

    cams = saliency_jax.attribute(model, x, 2, method="gradcam", layer="conv2")
    np.testing.assert_allclose(cams, jnp.stack([hand(x[0], 2), hand(x[1], 2)]), rtol=1e-4, atol=1e-6)
    assert "call" not in parts["conv2"].__dict__  # the user's layer is left as it was


@needs_jax_keras
def test_keras_channels_first_layers_are_declared_and_softmax_heads_refused():
    inputs = keras.Input((3, S, S))
    h = keras.layers.Conv2D(4, 3, padding="same", data_format="channels_first", name="conv")(inputs)
    out = keras.layers.Dense(K, name="head")(keras.layers.GlobalAveragePooling2D(data_format="channels_first")(h))
    model = saliency_jax.from_keras(keras.Model(inputs, out), layers=("conv",), layout="CHW")
    assert model.input_size == (S, S) and dict(model.layouts) == {"conv": "CHW"}
    assert model.features(jnp.ones((1, S, S, 3)))["conv"].shape == (1, S, S, 4)
    soft = keras.Sequential([keras.Input((S, S, 3)), keras.layers.Flatten(), keras.layers.Dense(K, activation="softmax",
                                                                                                name="probs")])
    with pytest.raises(ValueError, match=r"last layer 'probs' applies a softmax: .* activation=None"):
        saliency_jax.from_keras(soft)


@needs_jax_keras
def test_readme_keras_example_runs():
    code = _readme_block("keras")
    ns = {"jax": jax, "np": np, "keras": keras, "saliency_jax": saliency_jax}
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["cam"].shape == (1, 16, 16, 3) and ns["model"].layers == ("conv",)
