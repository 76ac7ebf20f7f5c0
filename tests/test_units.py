"""Unit targets for every gradient method, the Zeiler–Fergus projection, and receptive fields."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saliency_jax
from saliency_jax import methods
from saliency_jax.attribution.rules import backward_rule
from saliency_jax.attribution.units import project_activation, unit
from saliency_jax.models import efficientnet_lite, layers
from saliency_jax.models.model import Model
from saliency_jax.receptive_field import (
    ReceptiveField, analytic_receptive_field, crop, receptive_field, support_window,
)
from tiny_models import tiny_model


# ---- a tiny ConvNet with hand-set weights ----------------------------------------------------
class HandNet(nn.Module):
    """conv 2x2 ("lin", no ReLU) -> ReLU -> conv 2x2 -> ReLU ("top") -> mean ("pool") -> dense."""

    @nn.compact
    def __call__(self, x):
        lin = nn.Conv(2, (2, 2), padding="VALID", name="c1")(x)
        top = nn.relu(nn.Conv(2, (2, 2), padding="VALID", name="c2")(nn.relu(lin)))
        feats = {"lin": lin, "top": top, "pool": top.mean(axis=(1, 2))}
        return nn.Dense(3, name="fc")(feats["pool"]), feats


W1 = np.array([[[[1, -1], [0, 2], [-1, 1]], [[2, 0], [1, -1], [0, 1]]],
               [[[-1, 1], [1, 0], [0, -2]], [[1, 1], [-2, 0], [1, 0]]]], np.float32)  # [2,2,3,2]
B1 = np.array([0.5, -0.5], np.float32)
W2 = np.array([[[[1, -1], [-2, 1]], [[0, 2], [1, 1]]],
               [[[-1, 0], [2, -1]], [[1, 1], [-1, 2]]]], np.float32)  # [2,2,2,2]
B2 = np.array([1.0, 0.0], np.float32)


def hand_model():
    params = {"c1": {"kernel": W1, "bias": B1}, "c2": {"kernel": W2, "bias": B2},
              "fc": {"kernel": np.ones((2, 3), np.float32), "bias": np.zeros(3, np.float32)}}
    params = jax.tree.map(jnp.asarray, params)
    return Model("hand", HandNet(), {"params": params}, (5, 5), (0.0,), (1.0,), ("a", "b", "c"),
                 ("lin", "top", "pool"))


def _conv(x, w, b):  # VALID correlation, [H,W,Ci] x [k,k,Ci,Co]
    k = w.shape[0]
    out = np.zeros((x.shape[0] - k + 1, x.shape[1] - k + 1, w.shape[3]), np.float64)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = np.tensordot(x[i:i + k, j:j + k], w, axes=3) + b
    return out


def _conv_back(g, w, in_shape):  # scatter each output cotangent through the kernel
    k = w.shape[0]
    out = np.zeros(in_shape, np.float64)
    for i in range(g.shape[0]):
        for j in range(g.shape[1]):
            out[i:i + k, j:j + k] += np.tensordot(w, g[i, j], axes=([3], [0]))
    return out


def _relu_back(a, g, rule):
    return {"deconvnet": np.maximum(g, 0), "guided": g * (a > 0) * (g > 0), "gradient": g * (a > 0)}[rule]


def reference_projection(x, channel, position, rule):
    """Zeiler–Fergus by hand: keep A[y,x,c] of "top", rectify at each ReLU by `rule`, transpose each conv."""
    a1 = _conv(x, W1, B1)
    a2 = _conv(np.maximum(a1, 0), W2, B2)
    top = np.maximum(a2, 0)
    g = np.zeros_like(top)
    if position is None:  # the channel's whole map
        g[..., channel] = top[..., channel]
    else:
        g[position[0], position[1], channel] = top[position[0], position[1], channel]
    g = _relu_back(a2, g, rule)
    g = _relu_back(a1, _conv_back(g, W2, a1.shape), rule)
    return _conv_back(g, W1, x.shape)


@pytest.fixture(scope="module")
def hand():
    return hand_model()


@pytest.fixture(scope="module")
def hand_x():
    return np.random.default_rng(3).normal(0, 1, (3, 5, 5, 3)).astype(np.float32)


@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
def test_projection_equals_hand_computed_reconstruction(hand, hand_x, rule):
    channels, positions = [0, 1, 0], [[0, 0], [2, 1], [1, 2]]
    out = np.asarray(project_activation(hand, hand_x, "top", channels, positions, rule=rule))
    expected = np.stack([reference_projection(xi.astype(np.float64), c, p, rule)
                         for xi, c, p in zip(hand_x, channels, positions)])
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    if rule == "deconvnet":  # the rectification must matter on this net, or the test proves little
        from saliency_jax.attribution.units import _project_batch

        before = _project_batch._cache_size()
        project_activation(hand, hand_x, "top", [1, 1, 0], [[0, 1], [2, 2], [0, 0]])
        assert _project_batch._cache_size() == before  # channel and position are data
        assert not np.allclose(expected, np.stack([reference_projection(xi.astype(np.float64), c, p, "gradient")
                                                   for xi, c, p in zip(hand_x, channels, positions)]))


def test_projection_without_relu_in_the_path_is_activation_times_gradient(hand, hand_x):
    def act(x):
        return hand.apply(x[None])[1]["lin"][0, 2, 3, 1]

    out = project_activation(hand, hand_x[:1], "lin", 1, (2, 3))[0]
    np.testing.assert_allclose(out, jax.jit(lambda x: act(x) * jax.grad(act)(x))(hand_x[0]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out, project_activation(hand, hand_x[:1], "lin", 1, (2, 3), rule="gradient")[0],
                               rtol=1e-6)


def test_projection_of_a_whole_channel_keeps_every_position(hand, hand_x):
    out = project_activation(hand, hand_x, "top", [1, 0, 1])
    expected = np.stack([reference_projection(xi.astype(np.float64), c, None, "deconvnet")
                         for xi, c in zip(hand_x, [1, 0, 1])])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("positions", [None, [[0, 0], [2, 1], [1, 2]]])
def test_projection_in_batches_equals_one_call(hand, hand_x, positions):
    whole = np.asarray(project_activation(hand, hand_x, "top", [0, 1, 0], positions))
    chunked = project_activation(hand, hand_x, "top", [0, 1, 0], positions, batch_size=2)  # 2 + 1 padded
    assert isinstance(chunked, np.ndarray) and np.abs(whole).max() > 0
    np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-7)


def test_layer_shapes_follow_the_forward_order(model):
    from saliency_jax.models.inspect import layer_shapes

    shapes = layer_shapes(model, (224, 224, 3))
    assert tuple(shapes) == model.layers and shapes["block5"] == (14, 14, 80) and shapes["pool"] == (1280,)
    shapes["block5"] = None  # a copy: the cached shapes are not changed by callers
    assert layer_shapes(model, (224, 224, 3))["block5"] == (14, 14, 80)


# ---- unit targets through `attribute` --------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


@pytest.fixture(scope="module")
def tiny_x():
    return jnp.asarray(np.random.default_rng(0).normal(0, 1, (3, 8, 8, 3)), jnp.float32)


def unit_fn(model, layer, channel, position=None, reduce=jnp.sum):
    """The unit's activation for one image, written directly (independent of `UnitTarget.scores`)."""
    def f(x):
        act = model.apply(x[None])[1][layer][0]
        return act[position[0], position[1], channel] if position is not None else reduce(act[..., channel])
    return f


@pytest.mark.parametrize("method", ["vanilla", "gradient_x_input", "deconvnet", "guided"])
@pytest.mark.parametrize("position,reduce", [(None, "sum"), (None, "max"), (None, "mean"), ((3, 4), "sum")])
def test_unit_target_equals_direct_gradient_of_the_activation(tiny, tiny_x, method, position, reduce):
    out = saliency_jax.attribute(tiny, tiny_x, unit("conv", 5, position, reduce=reduce), method=method)
    f = unit_fn(tiny, "conv", 5, position, {"sum": jnp.sum, "max": jnp.max, "mean": jnp.mean}[reduce])
    rule = {"deconvnet": "deconvnet", "guided": "guided"}.get(method)
    grad = jax.jit(jax.vmap(jax.grad(f if rule is None else backward_rule(f, rule))))(tiny_x)
    expected = tiny_x * grad if method == "gradient_x_input" else grad
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_unit_target_smoothgrad_is_the_mean_noisy_gradient(tiny, tiny_x):
    key, n, scale = jax.random.key(7), 4, 0.2
    out = saliency_jax.attribute(tiny, tiny_x[:1], unit("conv", 2), method="smoothgrad", key=key,
                                 num_samples=n, noise_scale=scale)[0]
    f = unit_fn(tiny, "conv", 2)

    @jax.jit
    def expected(x):
        sigma = scale * (x.max() - x.min())
        noise = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), x.shape))(jnp.arange(n))
        return jnp.mean(jax.vmap(jax.grad(f))(x + sigma * noise), axis=0)

    np.testing.assert_allclose(out, expected(tiny_x[0]), rtol=1e-5, atol=1e-6)


def test_unit_target_integrated_gradients_is_complete(tiny, tiny_x):
    ig = saliency_jax.attribute(tiny, tiny_x, unit("conv", 3, reduce="sum"), method="ig", num_steps=256)
    f = unit_fn(tiny, "conv", 3)
    gap = jax.jit(jax.vmap(f))(jnp.concatenate([tiny_x, jnp.zeros_like(tiny_x[:1])]))
    gap = gap[:-1] - gap[-1]
    np.testing.assert_allclose(jnp.sum(ig, axis=(1, 2, 3)), gap, rtol=1e-2)


def test_unit_targets_per_image_batch_like_single_images_and_do_not_recompile(tiny, tiny_x):
    channels, positions = [0, 3, 7], [[1, 2], [3, 4], [7, 7]]
    batch = saliency_jax.attribute(tiny, tiny_x, unit("conv", channels, positions), method="guided")
    for i in range(3):
        single = saliency_jax.attribute(tiny, tiny_x[i:i + 1], unit("conv", channels[i], positions[i]),
                                        method="guided")
        np.testing.assert_allclose(batch[i], single[0], rtol=1e-6, atol=1e-7)
    assert not np.allclose(batch[0], batch[1])
    before = methods.attribute_batch._cache_size()
    again = saliency_jax.attribute(tiny, tiny_x, unit("conv", [6, 1, 2], positions), method="guided")
    assert methods.attribute_batch._cache_size() == before
    assert not np.allclose(again, batch)
    chunked = saliency_jax.attribute(tiny, tiny_x, unit("conv", channels, positions), method="guided", batch_size=2)
    np.testing.assert_allclose(chunked, batch, rtol=1e-6, atol=1e-7)


def test_unit_target_on_a_non_spatial_layer(tiny, tiny_x):
    out = saliency_jax.attribute(tiny, tiny_x[:1], unit("pool", 4), method="vanilla")[0]
    np.testing.assert_allclose(out, jax.jit(jax.grad(lambda x: tiny.apply(x[None])[1]["pool"][0, 4]))(tiny_x[0]),
                               rtol=1e-5, atol=1e-7)


# ---- receptive fields --------------------------------------------------------------------------
class ConvStack(nn.Module):
    """ReLU6 convolutions (k, s) per layer; a kernel given as ("pool", k) is a k x k max-pool of stride s."""

    layers: tuple
    padding: str

    @nn.compact
    def __call__(self, x):
        for k, s in self.layers:
            if isinstance(k, tuple):
                x = nn.max_pool(x, (k[1], k[1]), strides=(s, s), padding=self.padding)
            else:
                x = jax.nn.relu6(nn.Conv(4, (k, k), strides=(s, s), padding=self.padding)(x))
        return x.mean(axis=(1, 2)), {"out": x}


@pytest.mark.parametrize(
    "stack,padding,expected",
    [
        (((3, 2), (5, 1), (3, 2), (3, 1)), "VALID", (23, 4)),
        (((3, 2), (5, 1), (3, 2), (3, 1)), "SAME", (23, 4)),
        (((3, 1), (("pool", 2), 2), (3, 1), (("pool", 3), 2), (3, 1)), "VALID", (1 + 2 + 1 + 4 + 4 + 8, 4)),
    ],
)
def test_receptive_field_of_a_conv_stack_is_the_analytic_one(stack, padding, expected):
    size = 40
    module = ConvStack(stack, padding)
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
    params = jax.tree.map(lambda s: jnp.asarray(np.random.default_rng(0).normal(0, 1, s.shape), s.dtype), shapes)
    model = Model(f"stack{len(stack)}_{padding}", module, params, (size, size), (0.0,), (1.0,), ("a",) * 4, ("out",))
    kernels = [k[1] if isinstance(k, tuple) else k for k, _ in stack]
    strides = [s for _, s in stack]
    pads = None
    if padding == "SAME":
        pads, n = [], size
        for k, s in zip(kernels, strides):
            pads.append(layers.same_padding(n, k, s)[0])
            n = -(-n // s)
    rf_size, rf_stride, rf_offset = analytic_receptive_field(kernels, strides, pads)
    assert (rf_size, rf_stride) == expected
    assert receptive_field(model, "out") == ReceptiveField((rf_size,) * 2, (rf_stride,) * 2, (rf_offset,) * 2)


@pytest.mark.parametrize("layer", ["block2", "block5"])
def test_receptive_field_contains_the_gradient_support_on_the_pretrained_model(model, skimage_images, layer):
    field = receptive_field(model, layer)
    # Analytic: the path's spatial convolutions are the stem and each block's depthwise kxk ("SAME").
    specs = efficientnet_lite.block_specs(efficientnet_lite.LITE0)[: int(layer[5:]) + 1]
    kernels, strides = [3] + [s.kernel for s in specs], [2] + [s.stride for s in specs]
    pads, n = [], model.input_size[0]
    for k, s in zip(kernels, strides):
        pads.append(layers.same_padding(n, k, s)[0])
        n = -(-n // s)
    size, stride, offset = analytic_receptive_field(kernels, strides, pads)
    assert field == ReceptiveField((size, size), (stride, stride), (offset, offset))
    # One unit at the border (field clipped by the image), one inside.
    x = model.preprocess([skimage_images["chelsea"], skimage_images["coffee"]])
    positions = [(0, n - 1), (n // 2, n // 3)]
    grads = saliency_jax.attribute(model, x, unit(layer, [3, 10], positions), method="vanilla")
    for grad, (y, x_) in zip(grads, positions):
        y0, y1, x0, x1 = support_window(grad)
        w0, w1, v0, v1 = field.window(y, x_, model.input_size)
        assert w0 <= y0 and y1 <= w1 and v0 <= x0 and x1 <= v1
        assert (y1 - y0) > size // 2 and (x1 - x0) > size // 2  # the support is not trivially small


def test_window_is_clipped_to_the_image():
    field = ReceptiveField((11, 7), (4, 2), (-3, -1))
    assert field.window(0, 0, (32, 32)) == (0, 8, 0, 6)
    assert field.window(5, 3, (32, 32)) == (17, 28, 5, 12)
    assert field.window(7, 15, (32, 32)) == (25, 32, 29, 32)
    assert crop(np.zeros((32, 32)), field.window(7, 15, (32, 32))).shape == (7, 3)


# ---- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "target,kwargs,message",
    [
        (unit("fc9", 0), {}, "unknown layer 'fc9'; choose one of conv, pool"),
        (unit("conv", 8), {}, "channel 8 out of range for layer 'conv' with 8 channels"),
        (unit("conv", [0, -1, 2]), {}, r"channel -1 out of range"),
        (unit("conv", 1, (8, 0)), {}, r"position \[8, 0\] out of range for layer 'conv' of size 8x8"),
        (unit("pool", 1, (0, 0)), {}, "layer 'pool' has no spatial positions"),
        (unit("conv", [0, 1]), {}, r"channel must be an int or have shape \[3\]"),
        (unit("conv", 0), dict(method="gradcam"), "method 'gradcam' explains a class score; unit targets work with"),
        (unit("conv", 0), dict(method="guided_gradcam"), "method 'guided_gradcam' explains a class score"),
    ],
)
def test_bad_unit_target_gives_a_clear_error(tiny, tiny_x, target, kwargs, message):
    with pytest.raises(ValueError, match=message):
        saliency_jax.attribute(tiny, tiny_x, target, **kwargs)


def test_unit_target_on_a_bare_function_is_refused(tiny, tiny_x):
    with pytest.raises(ValueError, match="unit target on layer 'conv' needs a Model with named layers"):
        saliency_jax.attribute(tiny.logit_fn, tiny_x, unit("conv", 0))


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: unit("conv", 0, reduce="median"), "reduce must be one of sum, max, mean"),
        (lambda: unit("conv", 0.5), "unit: channel must be an int"),
        (lambda: unit("conv", 0, (1, 2, 3)), r"unit: position must be \(row, col\)"),
        (lambda: unit(3, 0), "layer must be a layer name"),
    ],
)
def test_bad_unit_spec_gives_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_projection_and_receptive_field_bad_input(tiny, tiny_x):
    with pytest.raises(ValueError, match="unknown layer 'fc9'; choose one of conv, pool"):
        project_activation(tiny, tiny_x, "fc9", 0, (0, 0))
    with pytest.raises(ValueError, match=r"position \[\[0, 9\]\] out of range for layer 'conv' of size 8x8"):
        project_activation(tiny, tiny_x[:1], "conv", [0], [[0, 9]])
    with pytest.raises(ValueError, match="rule must be one of"):
        project_activation(tiny, tiny_x, "conv", 0, (0, 0), rule="lrp")
    with pytest.raises(ValueError, match="unknown layer 'fc9'"):
        receptive_field(tiny, "fc9")
    with pytest.raises(ValueError, match="layer 'pool' has no spatial positions"):
        receptive_field(tiny, "pool")


def test_zoo_receptive_fields_persist_across_processes_and_custom_ones_do_not(model, tiny, monkeypatch, tmp_path):
    import importlib

    rf = importlib.import_module("saliency_jax.receptive_field")  # the package exports a function of this name
    monkeypatch.setenv("SALIENCY_JAX_CACHE", str(tmp_path))
    monkeypatch.setattr(rf, "_CACHE", {})  # a fresh process: nothing in memory
    measured = rf.receptive_field(model, "block1")
    assert (tmp_path / "receptive_fields.json").is_file()

    monkeypatch.setattr(rf, "_CACHE", {})
    monkeypatch.setattr(rf, "_measure", lambda *a: pytest.fail("measured again instead of read from disk"))
    assert rf.receptive_field(model, "block1") == measured
    assert rf._disk_key(model, "block1", (224, 224)) != rf._disk_key(model, "block2", (224, 224))

    assert rf._disk_key(tiny, "conv", tiny.input_size) is None  # a user's module: memory only
    (tmp_path / "receptive_fields.json").write_text("{not json")  # a damaged file is measured around
    monkeypatch.setattr(rf, "_CACHE", {})
    monkeypatch.setattr(rf, "_measure", lambda *a: measured)
    assert rf.receptive_field(model, "block1") == measured
