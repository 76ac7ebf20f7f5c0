"""The CAM family against hand computations: Grad-CAM++'s closed form against true higher derivatives
of exp(S_c), XGrad-CAM / LayerCAM / HiResCAM / Eigen-CAM against NumPy, Score-CAM and Ablation-CAM
against a Python loop over channels, chunk-size independence, and the one-line errors."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saliency_jax
from saliency_jax import methods
from saliency_jax.methods.gradient_cams import PLUS_PLUS_EPS, gradcam_plus_plus_weights
from saliency_jax.methods.score_cams import active_channels, align_corners_matrix, channel_scores
from saliency_jax.models.model import Model
from saliency_jax.models.taps import tap
from tiny_models import tiny_model

N_CLASSES, CHANNELS = 3, 4


class PoolNet(nn.Module):
    """conv 3x3 stride 2 ("pre") -> ReLU ("down" [4,4,4] at 8x8) -> mean ("vec" [4]) -> dense: linear beyond "down"."""

    @nn.compact
    def __call__(self, x):
        feats = {}
        pre = tap(self, feats, "pre", nn.Conv(CHANNELS, (3, 3), strides=(2, 2))(x))  # signed activations
        y = tap(self, feats, "down", nn.relu(pre))
        v = tap(self, feats, "vec", y.mean(axis=(1, 2)))
        return nn.Dense(N_CLASSES)(v), feats


@pytest.fixture(scope="module")
def pool_net():
    module = PoolNet()
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    rng = np.random.default_rng(4)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0.2, 0.5, s.shape), s.dtype), shapes["params"])
    return Model("pool_net", module, {"params": params}, (8, 8), (0.0,), (1.0,),
                 tuple(f"c{i}" for i in range(N_CLASSES)), ("pre", "down", "vec"))


@pytest.fixture(scope="module")
def tiny():
    return tiny_model((8, 8), 4)


@pytest.fixture(scope="module")
def x():
    return jnp.asarray(np.random.default_rng(1).normal(size=(3, 8, 8, 3)), jnp.float32)


def _head(model, acts):
    """PoolNet's logits from its "down" activations [h,w,K], by hand: mean, then the dense layer."""
    dense = model.variables["params"]["Dense_0"]
    return np.asarray(acts).mean(axis=(0, 1)) @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"])


def _acts_and_grads(model, x, target, layer):
    """(A [h,w,K], dS_target/dA) by jax.grad through the layer's perturbation, written out here."""
    acts = model.features(x[None])[layer][0]

    def score(p):
        return model.module.apply({**model.variables, "perturbations": {layer: p}}, x[None])[0][0, target]

    return np.asarray(acts), np.asarray(jax.grad(score)(jnp.zeros((1, *acts.shape)))[0])


def _upsample(cam, size=(8, 8)):
    return np.asarray(jax.image.resize(jnp.asarray(cam, jnp.float32), size, method="bilinear"))


def _run(model, x, targets, method, **options):
    return np.asarray(saliency_jax.attribute(model, x, targets, method=method, **options))[..., 0]


# ---- Grad-CAM++: the exponential-form closed form is the paper's formula where it is exact --------------
def test_gradcam_plus_plus_weights_equal_the_general_formula_on_exp_of_a_linear_head(pool_net, x):
    """S = exp(Y_c), Y_c linear in A: a_ij = S''/(2 S'' + sum_ab A_ab S''') with true derivatives (autodiff)."""
    for i, c in enumerate([0, 2, 1]):
        acts, grads = _acts_and_grads(pool_net, x[i], c, "down")

        def along(e):  # S(A + t e) as a function of t
            return lambda t: jnp.exp(jnp.asarray(_head_jnp(pool_net, acts + t * e))[c])

        basis = np.eye(acts.size, dtype=np.float32).reshape(-1, *acts.shape)
        d2 = np.asarray(jax.vmap(lambda e: jax.grad(jax.grad(along(e)))(0.0))(basis)).reshape(acts.shape)
        d3 = np.asarray(jax.vmap(lambda e: jax.grad(jax.grad(jax.grad(along(e))))(0.0))(basis)).reshape(acts.shape)
        s = float(along(np.zeros_like(acts))(0.0))  # S itself: pytorch-grad-cam's eps is added to S''/S's denominator
        alphas = np.where(d2 != 0, d2 / (2 * d2 + acts.sum(axis=(0, 1)) * d3 + PLUS_PLUS_EPS * s), 0.0)
        expected = (alphas * np.maximum(grads, 0)).sum(axis=(0, 1))
        np.testing.assert_allclose(gradcam_plus_plus_weights(acts, grads), expected, rtol=1e-4, atol=1e-7)
        assert np.abs(expected).max() > 1e-3


def _head_jnp(model, acts):
    dense = model.variables["params"]["Dense_0"]
    return acts.mean(axis=(0, 1)) @ dense["kernel"] + dense["bias"]


def test_gradcam_plus_plus_map_is_its_weights_times_the_activations(pool_net, x):
    out = _run(pool_net, x, [0, 1, 2], "gradcam_plus_plus", layer="down")
    for i, c in enumerate([0, 1, 2]):
        acts, grads = _acts_and_grads(pool_net, x[i], c, "down")
        cam = np.maximum(acts @ np.asarray(gradcam_plus_plus_weights(acts, grads)), 0)
        np.testing.assert_allclose(out[i], _upsample(cam), rtol=1e-5, atol=1e-6)


# ---- XGrad-CAM, LayerCAM, HiResCAM, Grad-CAM against NumPy ---------------------------------------------
NUMPY_CAMS = {
    "xgradcam": lambda a, g: a @ ((a * g).sum(axis=(0, 1)) / (a.sum(axis=(0, 1)) + 1e-7)),
    "layercam": lambda a, g: (np.maximum(g, 0) * a).sum(axis=-1),
    "hirescam": lambda a, g: (g * a).sum(axis=-1),
    "gradcam": lambda a, g: a @ g.mean(axis=(0, 1)),
}


@pytest.mark.parametrize("name", sorted(NUMPY_CAMS))
@pytest.mark.parametrize("net,layer", [("tiny", "conv"), ("pool_net", "down")])
def test_gradient_cams_match_numpy(request, x, name, net, layer):
    model = request.getfixturevalue(net)
    targets = [1, 0, 2]
    for relu in (True, False):
        out = _run(model, x, targets, name, layer=layer, relu=relu)
        for i, c in enumerate(targets):
            cam = NUMPY_CAMS[name](*_acts_and_grads(model, x[i], c, layer))
            cam = _upsample(np.maximum(cam, 0) if relu else cam)
            np.testing.assert_allclose(out[i], cam, rtol=1e-4, atol=1e-6, err_msg=f"{name} relu={relu}")
    assert name == "layercam" or (out < 0).any(), "relu=False keeps the sign"  # LayerCAM: >= 0 on ReLU layers


def test_hirescam_differs_from_gradcam_where_gradients_vary_over_positions(tiny, x):
    assert not np.allclose(_run(tiny, x, [1, 0, 2], "hirescam", layer="conv"),
                           _run(tiny, x, [1, 0, 2], "gradcam", layer="conv"), atol=1e-4)


def test_gradcam_on_a_vector_layer_is_a_constant_1x1_map(pool_net, x):
    out = _run(pool_net, x, [2, 0, 1], "gradcam", layer="vec", relu=False)
    for i, c in enumerate([2, 0, 1]):
        acts, grads = _acts_and_grads(pool_net, x[i], c, "vec")
        np.testing.assert_allclose(out[i], np.full((8, 8), acts @ grads), rtol=1e-5, atol=1e-7)


# ---- Eigen-CAM against np.linalg.svd ----------------------------------------------------------------
def _eigencam_numpy(acts):
    flat = acts.reshape(-1, acts.shape[-1]).astype(np.float64)
    centred = flat - flat.mean(axis=0)
    vt0 = np.linalg.svd(centred, full_matrices=False)[2][0]
    lapack_sign_negative = vt0.sum() < 0
    return (centred @ (-vt0 if lapack_sign_negative else vt0)).reshape(acts.shape[:2]), lapack_sign_negative


def test_eigencam_is_the_first_principal_component_with_a_positive_channel_sum(tiny, pool_net):
    images = jnp.asarray(np.random.default_rng(7).normal(size=(8, 8, 8, 3)), jnp.float32)
    flipped = 0
    for model, layer in ((tiny, "conv"), (pool_net, "down")):
        out = _run(model, images, 0, "eigencam", layer=layer, relu=False)
        for i in range(len(images)):
            expected, negative = _eigencam_numpy(np.asarray(model.features(images[i : i + 1])[layer][0]))
            flipped += negative
            np.testing.assert_allclose(out[i], _upsample(expected), rtol=1e-4, atol=1e-4)
    assert flipped > 0, "some images need the sign convention (LAPACK's sign is negative there)"


def test_eigencam_ignores_the_target(tiny, x):
    np.testing.assert_array_equal(_run(tiny, x, 0, "eigencam", layer="conv"),
                                  _run(tiny, x, 3, "eigencam", layer="conv"))


# ---- Score-CAM and Ablation-CAM against a Python loop over channels ----------------------------------
def _interp(act, size, align_corners):
    if not align_corners:
        return _upsample(act, size)
    rows = np.array([np.interp(np.linspace(0, act.shape[1] - 1, size[1]), np.arange(act.shape[1]), r) for r in act])
    return np.array([np.interp(np.linspace(0, act.shape[0] - 1, size[0]), np.arange(act.shape[0]), c)
                     for c in rows.T]).T


def _softmax(s):
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _scorecam_loop(model, x, c, layer, score, align_corners):
    acts = np.asarray(model.features(x[None])[layer][0])
    logits = lambda z: np.asarray(model.logits(jnp.asarray(z[None], jnp.float32))[0])
    scores = []
    for k in range(acts.shape[-1]):
        up = _interp(acts[..., k], x.shape[:2], align_corners)
        mask = (up - up.min()) / (up.max() - up.min() + 1e-8)
        scores.append(logits(np.asarray(x) * mask[..., None]))
    scores, zero = np.array(scores), logits(np.zeros(x.shape))
    if score == "softmax":
        weights = _softmax(scores[:, c])
    elif score == "logit":
        weights = scores[:, c] - zero[c]
    else:
        weights = _softmax(scores)[:, c] - _softmax(zero)[c]
    return np.maximum(acts @ weights, 0)


@pytest.mark.parametrize("score", ["softmax", "logit", "probability"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_scorecam_matches_a_loop_over_channels(pool_net, tiny, x, score, align_corners):
    for model, layer in ((pool_net, "down"), (pool_net, "pre"), (tiny, "conv")):  # "pre": masks with min < 0
        out = _run(model, x, [0, 2, 1], "scorecam", layer=layer, score=score, align_corners=align_corners)
        for i, c in enumerate([0, 2, 1]):
            expected = _upsample(_scorecam_loop(model, x[i], c, layer, score, align_corners))
            np.testing.assert_allclose(out[i], expected, rtol=1e-4, atol=1e-6, err_msg=f"{model.name} {score}")


def test_align_corners_matrix_maps_corners_to_corners():
    m = align_corners_matrix(8, 4)
    np.testing.assert_allclose(m @ np.arange(4.0), np.linspace(0, 3, 8), atol=1e-6)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-6)


def test_ablationcam_matches_zeroing_each_channel_by_hand(pool_net, x):
    out = _run(pool_net, x, [1, 2, 0], "ablationcam", layer="down")
    for i, c in enumerate([1, 2, 0]):
        acts = np.asarray(pool_net.features(x[i : i + 1])["down"][0])
        original = _head(pool_net, acts)[c]
        dropped = []
        for k in range(CHANNELS):
            ablated = acts.copy()
            ablated[..., k] = 0
            dropped.append((original - _head(pool_net, ablated)[c]) / original)
        np.testing.assert_allclose(out[i], _upsample(np.maximum(acts @ np.array(dropped), 0)), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["scorecam", "ablationcam"])
def test_channel_scores_do_not_depend_on_the_chunk_size(tiny, x, name):
    full = _run(tiny, x, [0, 1, 2], name, layer="conv", chunk_size=8)
    for chunk in (1, 3, 5):
        np.testing.assert_allclose(_run(tiny, x, [0, 1, 2], name, layer="conv", chunk_size=chunk), full,
                                   rtol=1e-5, atol=1e-6)


def test_the_default_chunk_keeps_about_32_images_in_flight(tiny):
    assert methods.ScoreCAM().prepare(tiny, (8, 8, 3), images_per_call=16).chunk_size == 2  # 8 channels: 2+2+2+2
    assert methods.ScoreCAM().prepare(tiny, (8, 8, 3), images_per_call=1).chunk_size == 8
    assert methods.ScoreCAM().prepare(tiny, (8, 8, 3), images_per_call=1).layer == "conv"


# ---- bad input: one line, naming the method ---------------------------------------------------------
@pytest.mark.parametrize("options,message", [
    (dict(method="xgradcam", layer="vec"), r"^XGrad-CAM needs a spatial layer \[h,w,K\]; 'vec' has shape \(4,\)$"),
    (dict(method="scorecam", layer="vec"), r"^Score-CAM needs a spatial layer \[h,w,K\]; 'vec' has shape \(4,\)$"),
    (dict(method="gradcam_plus_plus", layer="vec"), r"^Grad-CAM\+\+ needs a spatial layer"),
    (dict(method="eigencam", layer="vec"), r"^Eigen-CAM needs a spatial layer"),
    (dict(method="ablationcam", layer="nope"), r"^unknown layer 'nope'; choose one of pre, down, vec$"),
    (dict(method="scorecam", score="rank"),
     r"^unknown Score-CAM score 'rank'; choose one of softmax, logit, probability$"),
    (dict(method="scorecam", chunk_size=0), r"^ScoreCAM: chunk_size must be an integer in \[1, 100000\], got 0$"),
    (dict(method="layercam", relu=1), r"^LayerCAM: relu must be True or False, got 1$"),
])
def test_bad_cam_options_are_one_line_errors(pool_net, x, options, message):
    with pytest.raises(ValueError, match=message):
        saliency_jax.attribute(pool_net, x, 0, **options)


def test_cams_need_a_model_with_layers(x):
    with pytest.raises(ValueError, match="method 'scorecam' needs a Model with named layers"):
        saliency_jax.attribute(lambda image: jnp.sum(image) * jnp.ones(3), x, 0, method="scorecam")


def _with_dead_channels(model, dead=(0, 3, 5)):
    """The tiny net with the "conv" channels `dead` all zero for any input (bias -100 before the ReLU)."""
    params = jax.tree.map(lambda v: v, model.variables["params"])
    bias = np.asarray(params["Conv_0"]["bias"]).copy()
    bias[list(dead)] = -100.0
    params["Conv_0"] = {**params["Conv_0"], "bias": jnp.asarray(bias)}
    return dataclasses.replace(model, variables={**model.variables, "params": params})


def test_all_zero_channels_skip_their_forward_pass_with_the_same_maps(tiny, x):
    model = _with_dead_channels(tiny)
    acts = model.features(x)["conv"]
    live = np.asarray(jax.vmap(active_channels)(acts))
    assert not live[:, [0, 3, 5]].any() and live[:, [1, 2, 4, 6, 7]].all()
    for score in ("softmax", "logit"):
        out = _run(model, x, [0, 2, 1], "scorecam", layer="conv", score=score, chunk_size=2)
        for i, c in enumerate([0, 2, 1]):
            expected = _upsample(_scorecam_loop(model, x[i], c, "conv", score, False))
            np.testing.assert_allclose(out[i], expected, rtol=1e-4, atol=1e-6)
    # Ablation-CAM: zeroing a dead channel changes nothing (weight 0); same map for any chunk
    full = _run(model, x, [0, 1, 2], "ablationcam", layer="conv", chunk_size=8)
    np.testing.assert_allclose(_run(model, x, [0, 1, 2], "ablationcam", layer="conv", chunk_size=1), full,
                               rtol=1e-5, atol=1e-6)


def test_channel_scores_evaluate_live_channels_and_fill_the_rest():
    live = jnp.array([False, True, True, False, True])
    scores = channel_scores(lambda k: 10.0 * k + 1.0, 5, chunk_size=2, live=live, fill=-7.0)
    np.testing.assert_array_equal(scores, [-7.0, 11.0, 21.0, -7.0, 41.0])
    calls = []
    jax.jit(lambda: channel_scores(lambda k: jax.debug.callback(calls.append, k) or 1.0 * k, 6, chunk_size=2,
                                   live=jnp.array([True, False, False, False, False, True]), fill=0.0))()
    jax.effects_barrier()
    assert len(calls) == 2  # the two live channels fill one chunk; the two dead chunks never run
