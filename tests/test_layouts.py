"""Your own model, done right: each way a custom model used to give a silently wrong map is now right or refused.

Channels-first taps (recorded channels-last, or refused naming `layouts=`), a
`tap()` whose value is dropped (refused), grayscale models through every
registered method and the renderer, fixed-size models (one-line size error,
the lucid preset's crop), half-precision images, and the bad numbers.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saliency_jax
from saliency_jax import cli, methods, render
from saliency_jax.images import to_uint8_batch
from saliency_jax.maximize import presets, transforms
from saliency_jax.methods import batch
from saliency_jax.models.custom import from_function, from_linen

from method_options import cheap_options

S, K = 8, 3


def _rng_params(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return {n: jnp.asarray(rng.normal(0, 0.5, s), jnp.float32) for n, s in shapes.items()}


def _conv_nchw(x, w):  # x [B,C,H,W], w [O,I,3,3]
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"))


def chw_net(params, x, tap):
    """A PyTorch-style function: x [B,C,H,W], one conv tapped channels-first, global mean, dense."""
    h = tap("c1", jax.nn.relu(_conv_nchw(x, params["w"])))
    return h.mean((2, 3)) @ params["head"]


def chw_flat(params, x, tap):
    """The same, with a flatten + dense head: runs at S x S only."""
    h = tap("c1", jax.nn.relu(_conv_nchw(x, params["w"])))
    return h.reshape(len(h), -1) @ params["flat"]


CHW_PARAMS = _rng_params({"w": (4, 3, 3, 3), "head": (4, K), "flat": (4 * S * S, K)})


@pytest.fixture(scope="module")
def x():
    return jnp.asarray(np.random.default_rng(1).normal(size=(2, S, S, 3)), jnp.float32)


@pytest.fixture(scope="module")
def chw_model():
    return from_function(chw_net, CHW_PARAMS, layers=("c1",), input_size=S, layout="CHW", layouts={"c1": "CHW"})


# ---- 1. layouts ----------------------------------------------------------------------------------
def _hand_gradcam(x, t):
    """Grad-CAM of chw_net's c1 computed from the user's function alone."""
    def act(xi):
        return jax.nn.relu(_conv_nchw(jnp.moveaxis(xi, -1, 0)[None], CHW_PARAMS["w"]))[0]  # [C,H,W]

    def score_of_act(a):
        return (a.mean((1, 2)) @ CHW_PARAMS["head"])[t]

    a = act(x)
    g = jax.grad(score_of_act)(a)
    cam = jax.nn.relu(jnp.einsum("khw,k->hw", a, g.mean((1, 2))))
    return jnp.broadcast_to(cam[..., None], (S, S, 3))


def test_channels_first_tap_is_read_channels_last(chw_model, x):
    assert chw_model.layouts == (("c1", "CHW"),)
    feats = chw_model.features(x)["c1"]
    expected = jax.nn.relu(_conv_nchw(jnp.moveaxis(x, -1, 1), CHW_PARAMS["w"]))
    np.testing.assert_allclose(feats, jnp.moveaxis(expected, 1, -1), atol=1e-6)
    cams = saliency_jax.attribute(chw_model, x, 2, method="gradcam", layer="c1")
    np.testing.assert_allclose(cams[0], _hand_gradcam(x[0], 2), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(saliency_jax.attribute(chw_model, x, 2),
                               jax.vmap(jax.grad(lambda xi: chw_net(CHW_PARAMS, jnp.moveaxis(xi, -1, 0)[None],
                                                                    lambda n, h: h)[0, 2]))(x), atol=1e-6)


def test_unit_targets_topk_and_receptive_fields_read_the_declared_layout(chw_model, x):
    u = saliency_jax.unit("c1", 3, (2, 5))

    def user_unit(xi):
        return jax.nn.relu(_conv_nchw(jnp.moveaxis(xi, -1, 0)[None], CHW_PARAMS["w"]))[0, 3, 2, 5]

    np.testing.assert_allclose(saliency_jax.attribute(chw_model, x, u), jax.vmap(jax.grad(user_unit))(x), atol=1e-6)
    rf = saliency_jax.receptive_field(chw_model, "c1")
    assert rf.size == (3, 3) and rf.stride == (1, 1) and rf.offset == (-1, -1)
    from saliency_jax.features.topk import layer_shape
    assert layer_shape(chw_model, "c1", [0, 3]) == (S, S, 4)


def test_undeclared_channels_first_layer_is_refused():
    with pytest.raises(ValueError, match=r"layer 'c1' looks channels-first .* layouts=\{'c1': 'CHW'\}"):
        from_function(chw_net, CHW_PARAMS, layers=("c1",), input_size=S, layout="CHW")
    # a model that runs at its own size only: judged by shape arithmetic
    with pytest.raises(ValueError, match=r"layer 'c1' looks channels-first .* layouts="):
        from_function(chw_flat, CHW_PARAMS, layers=("c1",), input_size=S, layout="CHW")
    flat = from_function(chw_flat, CHW_PARAMS, layers=("c1",), input_size=S, layout="CHW", layouts={"c1": "CHW"})
    assert saliency_jax.attribute(flat, jnp.ones((1, S, S, 3)), 0, method="gradcam", layer="c1").shape == (1, S, S, 3)


def test_declared_layout_that_contradicts_the_activation_is_refused():
    def hwc_net(params, x, tap):
        h = tap("c1", jax.nn.relu(jnp.moveaxis(_conv_nchw(jnp.moveaxis(x, -1, 1), params["w"]), 1, -1)))
        return h.mean((1, 2)) @ params["head"]

    with pytest.raises(ValueError, match=r"layer 'c1' was declared with a layout that does not match"):
        from_function(hwc_net, CHW_PARAMS, layers=("c1",), input_size=S, layouts={"c1": "CHW"})
    assert from_function(hwc_net, CHW_PARAMS, layers=("c1",), input_size=S).layouts == (("c1", "HWC"),)


def test_ambiguous_layer_of_a_fixed_size_model_must_be_declared():
    params = _rng_params({"w": (S, 3, 3, 3), "flat": (S * S * S, K)})  # c1 is [8,8,8] either way

    def cube(params, x, tap):
        h = tap("c1", _conv_nchw(jnp.moveaxis(x, -1, 1), params["w"]))
        return h.reshape(len(h), -1) @ params["flat"]

    with pytest.raises(ValueError, match=r"cannot tell the layout of layer 'c1' .* layouts=\{'c1': 'HWC'\}"):
        from_function(cube, params, layers=("c1",), input_size=S)
    assert from_function(cube, params, layers=("c1",), input_size=S, layouts={"c1": "CHW"}).layers == ("c1",)


@pytest.mark.parametrize("bad,message", [("NCHW", r"per image: .* 'NCHW' is 'CHW'"), ("CWH", "must be 'HWC'")])
def test_layout_vocabulary(bad, message):
    with pytest.raises(ValueError, match=message):
        from_function(chw_net, CHW_PARAMS, layers=("c1",), input_size=S, layout="CHW", layouts={"c1": bad})
    with pytest.raises(ValueError, match="not in layers="):
        from_function(chw_net, CHW_PARAMS, layers=(), input_size=S, layout="CHW", layouts={"c1": "CHW"})


# ---- 3. a tap that does not reach the output -----------------------------------------------------
def _hwc_conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


HWC_PARAMS = _rng_params({"w": (3, 3, 3, 4), "head": (4, K)})


def dropped_tap(params, x, tap):
    h = jax.nn.relu(_hwc_conv(x, params["w"]))
    tap("c1", h)  # the value handed back is not used: the perturbation point is cut off
    return h.mean((1, 2)) @ params["head"]


def used_inside_jit(params, x, tap):
    h = tap("c1", jax.jit(lambda x: jax.nn.relu(_hwc_conv(x, params["w"])))(x))
    return jax.jit(lambda h: h.mean((1, 2)) @ params["head"])(h)


def dropped_inside_jit(params, x, tap):
    h = jax.nn.relu(_hwc_conv(x, params["w"]))
    t = tap("c1", h)  # handed to a jitted head that ignores it: found by walking into the jit
    return jax.jit(lambda h, t: h.mean((1, 2)) @ params["head"])(h, t)


def test_a_dropped_tap_is_refused_when_the_model_is_built():
    with pytest.raises(ValueError, match=r"layer 'c1' of dropped_tap does not influence the output: "
                                         r"use tap\(\)'s return value"):
        from_function(dropped_tap, HWC_PARAMS, layers=("c1",), input_size=S)
    with pytest.raises(ValueError, match="does not influence the output"):
        from_function(dropped_inside_jit, HWC_PARAMS, layers=("c1",), input_size=S)
    model = from_function(used_inside_jit, HWC_PARAMS, layers=("c1",), input_size=S)
    cams = saliency_jax.attribute(model, jnp.ones((1, S, S, 3)), 0, method="gradcam", layer="c1")
    assert float(jnp.abs(cams).max()) > 0


def test_an_unused_linen_submodule_is_refused():
    class AuxHead(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
            nn.Dense(2, name="aux")(h.mean((1, 2)))  # computed, never used
            return nn.Dense(K, name="head")(h.mean((1, 2)))

    net = AuxHead()
    variables = net.init(jax.random.key(0), jnp.zeros((1, S, S, 3)))
    with pytest.raises(ValueError, match=r"layer 'aux' of AuxHead does not influence the output: its output is not"):
        from_linen(net, variables, layers=("conv", "aux"), input_size=S)
    assert from_linen(net, variables, layers=("conv",), input_size=S).layers == ("conv",)


# ---- 2. any channel count ------------------------------------------------------------------------
class Gray(nn.Module):
    """A 1-channel ConvNet: conv (1->4) relu, conv (4->4) relu, global mean, dense."""

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(4, (3, 3), name="conv1")(x))
        h = nn.relu(nn.Conv(4, (3, 3), name="conv2")(h))
        return nn.Dense(K, name="head")(h.mean((1, 2)))


@pytest.fixture(scope="module")
def gray():
    net = Gray()
    variables = net.init(jax.random.key(0), jnp.zeros((1, S, S, 1)))
    return from_linen(net, variables, layers=("conv1", "conv2"), input_size=S, channels=1, mean=127.5, std=127.5)


def _options(name):
    return cheap_options(name, layer="conv2")


@pytest.mark.parametrize("name", saliency_jax.available_methods())
def test_every_method_runs_on_a_grayscale_model(gray, name):
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, S, S, 1)), jnp.float32)
    maps = saliency_jax.attribute(gray, x, 1, method=name, key=jax.random.key(0), **_options(name))
    assert maps.shape == (2, S, S, 1) and bool(jnp.all(jnp.isfinite(maps)))
    shown = saliency_jax.saliency_map(maps)
    assert shown.shape == (2, S, S)


def test_grayscale_preprocess_maps_and_overlay(gray):
    rgb = np.random.default_rng(3).integers(0, 256, (2, S, S, 3), dtype=np.uint8)
    x = gray.preprocess(rgb)
    luma = np.clip(np.rint(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)), 0, 255)
    np.testing.assert_allclose(x[..., 0], (luma - 127.5) / 127.5, atol=1e-6)
    assert gray.preprocess(rgb[0, :, :, :1]).shape == (1, S, S, 1)  # a gray photo stays gray
    maps = saliency_jax.saliency_map(saliency_jax.attribute(gray, x, 0))
    photo = gray.deprocess(x[0])  # uint8 [S,S,1]
    shown = render.overlay(photo, np.asarray(maps[0]), dim=0.0)
    assert shown.shape == (S, S, 3)
    zero = render.overlay(photo, np.zeros((S, S)), dim=0.0)
    np.testing.assert_array_equal(zero, np.repeat(photo, 3, axis=-1))  # map 0: the gray photo itself
    assert render.montage([photo[..., 0], shown], pad=0).shape == (S, 2 * S, 3)


def test_the_batch_job_runs_a_grayscale_model_on_rgb_files(gray, tmp_path):
    from PIL import Image

    from saliency_jax.data import open_source
    from saliency_jax.jobs import load_outputs, run_batch_job

    rgb = np.random.default_rng(4).integers(0, 256, (3, S, S, 3), dtype=np.uint8)
    (tmp_path / "in").mkdir()
    for i, image in enumerate(rgb):
        Image.fromarray(image).save(tmp_path / "in" / f"{i}.png")
    summary = run_batch_job(open_source(str(tmp_path / "in")), gray, tmp_path / "out", batch_size=2, progress=False)
    assert summary.errors == 0
    expected = saliency_jax.saliency_map(saliency_jax.attribute(gray, gray.preprocess(rgb), "top1"))
    np.testing.assert_allclose(load_outputs(tmp_path / "out")["maps"], expected, atol=1e-5)


def test_multispectral_preprocess_resizes_each_band():
    def net(x):
        return x.mean((1, 2)) @ jnp.ones((5, K))

    model = from_function(net, input_size=4, channels=5, mean=10.0, std=2.0)
    bands = np.random.default_rng(4).integers(0, 256, (8, 8, 5), dtype=np.uint8)
    x = model.preprocess(bands)
    assert x.shape == (1, 4, 4, 5)
    for c in range(5):
        expected = (to_uint8_batch(bands[..., c], (4, 4))[..., 0].astype(np.float32) - 10.0) / 2.0
        np.testing.assert_allclose(x[..., c], expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"a 5-channel model preprocesses uint8 arrays \[B,H,W,5\]"):
        model.preprocess(bands[..., :3])


def test_channel_mismatches_are_one_line_errors(gray):
    with pytest.raises(ValueError, match="Gray expects 1 colour channels; got x with shape"):
        saliency_jax.attribute(gray, jnp.ones((1, S, S, 3)), 0)
    net = Gray()
    variables = net.init(jax.random.key(0), jnp.zeros((1, S, S, 1)))
    with pytest.raises(ValueError, match=r"Gray fails on an input of shape \(2, 8, 8, 3\)"):
        from_linen(net, variables, input_size=S)

    def one_channel(x):
        return jax.lax.conv_general_dilated(x, jnp.ones((3, 3, 1, K)), (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC")).mean((1, 2))

    with pytest.raises(ValueError, match=r"another channel count than 3: pass channels= \(1 for grayscale\)"):
        from_function(one_channel, input_size=S)
    assert from_function(one_channel, input_size=S, channels=1).channels == 1
    with pytest.raises(ValueError, match=r"mean must be a scalar or one value per channel \(1\)"):
        from_function(one_channel, input_size=S, channels=1, mean=(1, 2, 3))


# ---- 5. the lucid preset on a fixed-size model ---------------------------------------------------
class Flat(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
        return nn.Dense(K, name="head")(h.reshape(len(h), -1))


@pytest.fixture(scope="module")
def flat():
    net = Flat()
    variables = net.init(jax.random.key(0), jnp.zeros((1, S, S, 3)))
    return from_linen(net, variables, layers=("conv",), input_size=S)


def test_lucid_preset_crops_back_to_a_fixed_size_model(flat):
    options = presets.preset_options("lucid", flat, saliency_jax.maximize.objectives.class_score(1))
    assert options["transforms"][-1] == transforms.CenterCrop(S, S)
    vis = saliency_jax.class_model(flat, [0, 2], preset="lucid", key=jax.random.key(0), num_steps=3)
    assert vis.pixels.shape == (2, S, S, 3) and np.isfinite(vis.values).all()
    neuron = saliency_jax.neuron_model(flat, "conv", [1], preset="lucid", key=jax.random.key(1), num_steps=2)
    assert neuron.pixels.shape == (1, S, S, 3)


def test_lucid_preset_keeps_the_padding_for_a_model_of_any_size(gray):
    options = presets.preset_options("lucid", gray, saliency_jax.maximize.objectives.class_score(1))
    assert not any(isinstance(t, transforms.CenterCrop) for t in options["transforms"])
    assert options["parameterization"].decorrelate is False  # one channel: no RGB colour mixing
    vis = saliency_jax.class_model(gray, [0], preset="lucid", key=jax.random.key(0), num_steps=2)
    assert vis.pixels.shape == (1, S, S, 1)


# ---- 6. bad numbers, before compiling ------------------------------------------------------------
def test_wrong_image_size_for_a_fixed_size_model(flat, gray):
    with pytest.raises(ValueError, match=r"^Flat expects 8x8 images, got 6x6 \(it does not run at that size"):
        saliency_jax.attribute(flat, jnp.ones((1, 6, 6, 3)), 0)
    with pytest.raises(ValueError, match=r"Flat expects 8x8 images, got 6x6"):
        flat.logits(jnp.ones((1, 6, 6, 3)))
    assert saliency_jax.attribute(gray, jnp.ones((1, 12, 12, 1)), 0).shape == (1, 12, 12, 1)  # any size runs


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_images_are_cast_to_the_models_dtype(flat, x, dtype):
    half = x.astype(dtype)
    expected = saliency_jax.attribute(flat, half.astype(jnp.float32), 1)
    got = saliency_jax.attribute(flat, half, 1, method="vanilla")
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(flat.logits(half), flat.logits(half.astype(jnp.float32)), rtol=1e-6)


@pytest.mark.parametrize("flag", ["--l2", "--lr"])
@pytest.mark.parametrize("value", ["inf", "nan"])
def test_class_model_refuses_non_finite_numbers(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["class-model", "--classes", "1", flag, value])
    assert exit_info.value.code == 2
    assert "(not inf or nan)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="l2 must be a finite number >= 0, got inf"):
        presets.preset_options("paper", None, None, l2=float("inf"))


def test_a_call_that_cannot_fit_in_memory_is_refused_before_compiling(gray, monkeypatch):
    x = jnp.ones((4, S, S, 1))
    compiled = []
    monkeypatch.setattr(batch, "attribute_batch", lambda *a, **k: compiled.append(1))
    monkeypatch.setattr(batch, "free_memory", lambda: 20_000)
    with pytest.raises(ValueError, match=r"method 'smoothgrad' would need about .* GiB for 32 images in flight "
                                         r"\(4 per call x 8 samples\), .* GiB are free: pass batch_size=\d+, chunk_size=1"):
        saliency_jax.attribute(gray, x, 0, method="smoothgrad", num_samples=8, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"pass chunk_size=2$"):
        batch.check_memory(gray, methods.SmoothGrad(num_samples=8, chunk_size=8), (S, S, 1), 4,
                           free=int(4 * 2 * 3 * 4 * S * S * 9 / batch.MEMORY_FRACTION) + 1)
    with pytest.raises(ValueError, match=r"pass batch_size=1$"):
        batch.check_memory(gray, methods.Vanilla(), (S, S, 1), 4, free=1)
    assert not compiled
    batch.check_memory(gray, methods.Vanilla(), (S, S, 1), 4, free=2**30)  # plenty: no error
