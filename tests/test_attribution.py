"""Attribution methods: axioms on analytic models, finite differences, batching, chunking, keys, errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saliency_jax
from saliency_jax import methods
from saliency_jax.attribution.sampling import default_chunk
from saliency_jax.attribution.gradients import vanilla_gradient
from saliency_jax.methods.integrated_gradients import integrated_gradients, path_points
from saliency_jax.attribution.sampling import sample_sum
from saliency_jax.methods.smoothgrad import smoothgrad
from saliency_jax.models.model import Model
from method_options import cheap_options
from tiny_models import tiny_model

H, W, C, K = 6, 5, 3, 4


def _linear(seed=0):
    rng = np.random.default_rng(seed)
    w = jnp.asarray(rng.normal(size=(K, H, W, C)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(K,)), jnp.float32)
    return w, (lambda x: jnp.einsum("khwc,hwc->k", w, x) + b)


@pytest.fixture(scope="module")
def tiny():
    return tiny_model((8, 8), K)


@pytest.fixture(scope="module")
def tiny_x():
    return jnp.asarray(np.random.default_rng(1).normal(size=(3, 8, 8, 3)), jnp.float32)


# ---- the paper's saliency ---------------------------------------------------------------
def test_linear_model_saliency_is_abs_weight():
    """Sec. 3: for S_c(I) = w_c^T I + b_c the saliency is w_c, and the map is max_channel |w_c|."""
    w, f = _linear()
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, H, W, C)), jnp.float32)
    grads = methods.attribute(f, x, jnp.array([1, 3]))
    np.testing.assert_array_equal(grads[0], w[1])
    np.testing.assert_array_equal(grads[1], w[3])
    np.testing.assert_array_equal(jnp.max(jnp.abs(grads), -1)[1], jnp.max(jnp.abs(w[3]), -1))


def test_top1_uses_each_images_own_argmax(tiny, tiny_x):
    logits = tiny(tiny_x)
    top = np.asarray(jnp.argmax(logits, -1))
    np.testing.assert_allclose(methods.attribute(tiny, tiny_x, "top1"), methods.attribute(tiny, tiny_x, top), atol=1e-6)


def test_vanilla_matches_finite_differences_on_a_convnet(tiny):
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tiny.variables)
        f = lambda x: tiny.module.apply(params, x[None])[0][0]
        x = jnp.asarray(np.random.default_rng(3).normal(size=(8, 8, 3)))
        g = vanilla_gradient(f, x, 2)
        eps = 1e-6
        for pixel in [(0, 0, 0), (3, 4, 1), (7, 7, 2), (5, 2, 0)]:
            e = jnp.zeros_like(x).at[pixel].set(eps)
            fd = (f(x + e)[2] - f(x - e)[2]) / (2 * eps)
            np.testing.assert_allclose(g[pixel], fd, rtol=1e-5, atol=1e-8)


@pytest.mark.slow
def test_vanilla_matches_finite_differences_on_pretrained_model(skimage_images):
    with jax.enable_x64(True):
        model = saliency_jax.load_model(dtype=jnp.float64)
        x = jnp.asarray(model.preprocess(skimage_images["chelsea"])[0], jnp.float64)
        f = jax.jit(lambda x: model.logit_fn(x)[285])
        g = jax.jit(jax.grad(f))(x)
        eps = 1e-5
        for pixel in [(112, 112, 0), (60, 150, 1), (200, 30, 2)]:
            e = jnp.zeros_like(x).at[pixel].set(eps)
            fd = (f(x + e) - f(x - e)) / (2 * eps)
            np.testing.assert_allclose(g[pixel], fd, rtol=1e-4, atol=1e-9)


# ---- Integrated Gradients ------------------------------------------------------------------
def test_ig_completeness_on_analytic_function():
    """f = [5x, y^2, sin z] (PAIR's axiom test): sum(IG) = f(x) - f(0) per output."""
    f = lambda v: jnp.stack([5 * v[..., 0].sum(), (v[..., 1] ** 2).sum(), jnp.sin(v[..., 2]).sum()])
    x = jnp.asarray(np.random.default_rng(4).uniform(-2, 2, size=(1, 2, 2, 3)), jnp.float32)
    for c in range(3):
        ig = integrated_gradients(lambda v: f(v[None]), x[0], c, num_steps=200)
        expected = f(x)[c] - f(jnp.zeros_like(x))[c]
        np.testing.assert_allclose(ig.sum(), expected, rtol=1e-3)
    # 5x is linear: IG is exactly x * 5 in that channel.
    np.testing.assert_allclose(integrated_gradients(lambda v: f(v[None]), x[0], 0, num_steps=7)[..., 0],
                               5 * x[0, ..., 0], rtol=1e-6)


@pytest.mark.parametrize("rule", ["midpoint", "trapezoid"])
def test_ig_completeness_on_convnet_within_one_percent(tiny, tiny_x, rule):
    baseline = jnp.zeros_like(tiny_x[0])
    ig = methods.attribute(tiny, tiny_x[:1], jnp.array([1]), method="ig", num_steps=512, quadrature=rule)
    delta = tiny.logit_fn(tiny_x[0])[1] - tiny.logit_fn(baseline)[1]
    assert abs(float(ig.sum()) - float(delta)) <= 0.01 * abs(float(delta))


def test_ig_with_baseline_equals_shifted_function(tiny, tiny_x):
    base = jnp.full(tiny_x.shape[1:], 0.3)
    a = methods.attribute(tiny, tiny_x, 2, method="ig", baseline=base, num_steps=16)
    shifted = lambda v: tiny.logit_fn(v + base)
    b = methods.attribute(shifted, tiny_x - base, 2, method="ig", num_steps=16)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_path_points_rules():
    a, w = path_points(4, "midpoint")
    np.testing.assert_allclose(a, [0.125, 0.375, 0.625, 0.875])
    a, w = path_points(3, "trapezoid")
    np.testing.assert_allclose(a, [0, 0.5, 1])
    np.testing.assert_allclose(w, [0.25, 0.5, 0.25])
    np.testing.assert_allclose(path_points(2, "right")[0], [0.5, 1.0])
    with pytest.raises(ValueError, match="unknown integration rule 'simpson'"):
        path_points(4, "simpson")


# ---- SmoothGrad ------------------------------------------------------------------------
def test_smoothgrad_with_zero_noise_is_vanilla(tiny, tiny_x):
    sg = methods.attribute(tiny, tiny_x, "top1", method="smoothgrad", key=jax.random.key(0), noise_scale=0.0,
                       num_samples=4)
    np.testing.assert_allclose(sg, methods.attribute(tiny, tiny_x, "top1"), rtol=1e-5, atol=1e-7)


def test_smoothgrad_keys_are_deterministic(tiny, tiny_x):
    run = lambda key: methods.attribute(tiny, tiny_x, 1, method="smoothgrad", key=key, num_samples=5)
    np.testing.assert_array_equal(run(jax.random.key(7)), run(jax.random.key(7)))
    assert not np.allclose(run(jax.random.key(7)), run(jax.random.key(8)))


@pytest.mark.parametrize("method", ["smoothgrad", "smoothgrad_squared", "vargrad", "ig"])
def test_chunking_does_not_change_the_result(tiny, tiny_x, method):
    kw = {"num_samples": 7} if method != "ig" else {"num_steps": 7}
    key = jax.random.key(3) if method != "ig" else None
    full = methods.attribute(tiny, tiny_x, 0, method=method, key=key, **kw)
    for chunk in (1, 3, 7):
        chunked = methods.attribute(tiny, tiny_x, 0, method=method, key=key, chunk_size=chunk, **kw)
        np.testing.assert_allclose(chunked, full, rtol=1e-5, atol=1e-6)


def test_vargrad_is_variance_of_squared_minus_mean(tiny, tiny_x):
    key = jax.random.key(4)
    f, x = tiny.logit_fn, tiny_x[0]
    mean = smoothgrad(f, x, 1, key=key, num_samples=6, variant="mean")
    sq = smoothgrad(f, x, 1, key=key, num_samples=6, variant="squared")
    var = smoothgrad(f, x, 1, key=key, num_samples=6, variant="var")
    np.testing.assert_allclose(var, jnp.maximum(sq - mean**2, 0), rtol=1e-5, atol=1e-7)
    assert float(var.min()) >= 0


def test_sample_sum_counts_every_sample_once():
    for chunk in (None, 1, 2, 4, 5, 9):
        assert int(sample_sum(lambda i: i + 1, 9, chunk_size=chunk)) == 45
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        sample_sum(lambda i: i, 0)


# ---- Grad-CAM ----------------------------------------------------------------------------
class _LinearCam(nn.Module):
    """logits_k = mean_{h,w} sum_j A[h,w,j] V[j,k] with A = x: dS/dA = V[:,k]/(h*w)."""

    @nn.compact
    def __call__(self, x):
        a = self.perturb("feat", x)
        v = self.param("v", lambda *_: jnp.array([[1.0, -1.0], [2.0, 0.5], [-1.0, 1.0]]))
        return jnp.einsum("bhwj,jk->bk", a, v) / (x.shape[1] * x.shape[2]), {"feat": a}


def test_gradcam_known_value():
    module = _LinearCam()
    variables = module.init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))
    model = Model("lin", module, {"params": variables["params"]}, (4, 4), (0.0,), (1.0,), ("a", "b"), ("feat",))
    x = jnp.asarray(np.random.default_rng(5).normal(size=(1, 4, 4, 3)), jnp.float32)
    cam = methods.attribute(model, x, 0, method="gradcam", layer="feat")
    v = np.array([1.0, 2.0, -1.0]) / 16
    expected = np.maximum(np.einsum("hwj,j->hw", np.asarray(x[0]), v), 0)
    np.testing.assert_allclose(cam[0, ..., 0], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(cam[0, ..., 2], cam[0, ..., 0])


def test_gradcam_on_pretrained_model_points_at_the_cat(model, skimage_images):
    x = model.preprocess(skimage_images["chelsea"])
    cam = np.asarray(methods.attribute(model, x, 285, method="gradcam", layer="head"))[0, ..., 0]
    assert cam.shape == (224, 224) and cam.min() >= 0 and cam.max() > 0
    # The cat fills the centre-left of the frame; its face is there, not in the top-right corner.
    assert cam[60:170, 40:170].mean() > 2 * cam[:50, 180:].mean()


# ---- every method: shape, finiteness, batch == single, no recompilation -------------------
ALL = sorted(methods.available_methods())


@pytest.mark.parametrize("method", ALL)
def test_every_method_batches_like_single_images_and_compiles_once(tiny, tiny_x, method):
    kw = {"key": jax.random.key(1)} if methods.get(method).needs_key else {}
    kw.update(cheap_options(method, layer="conv"))
    targets = jnp.array([0, 3, 1])
    out = methods.attribute(tiny, tiny_x, targets, method=method, **kw)
    assert out.shape == tiny_x.shape and bool(jnp.all(jnp.isfinite(out)))
    for i in range(len(tiny_x)):
        single = methods.attribute(tiny, tiny_x[i : i + 1], targets[i : i + 1], method=method, **kw)
        np.testing.assert_allclose(single[0], out[i], rtol=1e-5, atol=1e-6)
    before = methods.attribute_batch._cache_size()
    methods.attribute(tiny, tiny_x + 0.5, targets[::-1], method=method, **kw)
    assert methods.attribute_batch._cache_size() == before


# ---- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(x=np.zeros((8, 8, 3), np.float32)), r"x must be a batch of images \[B,H,W,C\]; got shape \(8, 8, 3\)"),
        (dict(x=np.zeros((1, 8, 8, 4), np.float32)), "expects 3 colour channels"),
        (dict(x=np.zeros((1, 8, 8, 3), np.uint8)), "x must be float"),
        (dict(x=np.full((2, 8, 8, 3), np.nan, np.float32)), r"NaN or Inf values \(batch indices \[0, 1\]\)"),
        (dict(targets=4), r"targets must lie in \[0, 4\); got 4..4"),
        (dict(targets=[-2, 0]), r"targets must lie in \[0, 4\)"),
        (dict(targets=[0, 1, 2]), r"targets must have shape \[2\]"),
        (dict(targets="top5"), "targets must be 'top1'"),
        (dict(method="lrp_z"), "unknown method 'lrp_z'; choose one of vanilla"),
        (dict(method="smoothgrad"), "is random: pass key=jax.random.key"),
        (dict(method="ig", num_samples=3), r"unknown option\(s\) num_samples; valid options: num_steps"),
        (dict(method="gradcam", layer="fc9"), "unknown layer 'fc9'; choose one of conv, pool"),
        (dict(method="gradcam_plus_plus", layer="pool"), r"Grad-CAM\+\+ needs a spatial layer"),  # gradcam: 1x1
        (dict(method="vanilla", baseline=0.0),
         r"baseline is only used by methods with a baseline \(ig, [a-z_, ]+\), not 'vanilla'"),
    ],
)
def test_bad_input_gives_a_clear_error(tiny, kwargs, message):
    kwargs = {"x": np.zeros((2, 8, 8, 3), np.float32), "targets": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        methods.attribute(tiny, kwargs.pop("x"), kwargs.pop("targets"), **kwargs)


def test_gradcam_needs_a_model():
    _, f = _linear()
    with pytest.raises(ValueError, match="needs a Model with named layers"):
        methods.attribute(f, np.zeros((1, H, W, C), np.float32), 0, method="gradcam")


@pytest.mark.parametrize("n,limit,expected", [(50, 32, 25), (25, 4, 4), (25, 32, 25), (7, 3, 3), (6, 4, 3), (1, 8, 1)])
def test_balanced_chunk_minimises_padding(n, limit, expected):
    chunk = default_chunk(n, 1, in_flight=limit)
    assert chunk == expected and chunk <= max(limit, 1)
    assert -(-n // chunk) == -(-n // limit)
