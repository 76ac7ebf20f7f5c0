"""Class models and activation maximisation: analytic optima, constraints, batching, keys, compilation, errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from saliency_jax.maximize import objectives as obj
from saliency_jax.maximize import optimize, parameterizations, presets
from saliency_jax.maximize.fingerprint import fingerprint
from saliency_jax.maximize import transforms as tr
from saliency_jax.filters import gaussian_filter
from saliency_jax.models.model import Model

H, W, C, K = 5, 6, 3, 4
SHAPE = (H, W, C)


def _linear(seed=0):
    w = jnp.asarray(np.random.default_rng(seed).normal(size=(K, H, W, C)), jnp.float32)
    return w, (lambda x: jnp.einsum("khwc,hwc->k", w, x))


class TinyNet(nn.Module):
    """A small ReLU ConvNet with named features: a spatial "conv" layer and a pooled vector."""

    @nn.compact
    def __call__(self, x):
        y = nn.relu(nn.Conv(8, (3, 3))(x))
        feats = {"conv": y}
        y = jnp.tanh(nn.Conv(6, (3, 3), strides=2)(y))
        feats["pool"] = y.mean(axis=(1, 2))
        return nn.Dense(K)(feats["pool"]), feats


@pytest.fixture(scope="module")
def tiny():
    module = TinyNet()
    variables = module.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    return Model("tiny", module, {"params": variables["params"]}, (8, 8), (127.0,), (128.0,),
                 tuple(f"class{i}" for i in range(K)), ("conv", "pool"))


SGD = optax.sgd(0.5)
ADAM = optax.adam(0.05)


# ---- analytic optima -----------------------------------------------------------------------
def test_linear_score_with_l2_penalty_reaches_w_over_2_lambda():
    """argmax_x w.x - lam ||x||^2 = w / (2 lam), from the zero image (Sec. 2 of the paper)."""
    w, f = _linear()
    lam = 0.5
    res = optimize.visualize(f, obj.class_score([0, 1, 2, 3]) - lam * obj.l2(), key=jax.random.key(0),
                             num_steps=40, optimizer=SGD, image_shape=SHAPE)
    np.testing.assert_allclose(res.image, w / (2 * lam), atol=1e-5)
    optimum = jnp.sum(w * w, axis=(1, 2, 3)) / (4 * lam)
    np.testing.assert_allclose(res.values[:, -1], optimum, rtol=1e-5)


def test_single_target_maximize_is_pure_and_jittable():
    w, f = _linear()
    run = jax.jit(lambda c: optimize.maximize(f, obj.class_score(0) - 0.25 * obj.l2(), key=jax.random.key(0),
                                              num_steps=60, optimizer=optax.sgd(1.0), image_shape=SHAPE).image)
    np.testing.assert_allclose(run(0), w[0] / 0.5, atol=1e-5)


@pytest.mark.parametrize("constraint", ["sphere", "ball"])
def test_norm_constraint_reaches_rho_w_over_norm_w_and_holds_every_step(constraint):
    """With ||x|| = rho (or <= rho, active), the optimum of w.x is rho w / ||w||."""
    w, f = _linear()
    rho = 3.0
    res = optimize.visualize(f, obj.class_score([0, 1, 2, 3]), key=jax.random.key(0), num_steps=100,
                             optimizer=optax.sgd(0.1), image_shape=SHAPE, radius=rho, constraint=constraint,
                             parameterization=parameterizations.Pixels(init_scale=0.1))
    expected = rho * w / jnp.linalg.norm(w.reshape(K, -1), axis=1)[:, None, None, None]
    np.testing.assert_allclose(res.image, expected, atol=1e-5)
    if constraint == "sphere":
        np.testing.assert_allclose(res.norms / rho, 1.0, atol=1e-5)  # after every step
    else:
        assert np.all(res.norms <= rho * (1 + 1e-6))


def test_ball_inactive_when_unconstrained_optimum_is_inside():
    w, f = _linear()
    lam = 0.5
    rho = 2.0 * float(jnp.linalg.norm(w[1])) / (2 * lam)
    res = optimize.visualize(f, obj.class_score(1) - lam * obj.l2(), key=jax.random.key(0), num_steps=40,
                             optimizer=SGD, image_shape=SHAPE, radius=rho, constraint="ball")
    np.testing.assert_allclose(res.image[0], w[1] / (2 * lam), atol=1e-5)


def test_box_constraint_gives_the_box_corner_for_a_linear_score():
    w, f = _linear()
    res = optimize.visualize(f, obj.class_score(2), key=jax.random.key(0), num_steps=3,
                             optimizer=optax.sgd(1e4), image_shape=SHAPE, box=(-1.0, 0.5))
    np.testing.assert_array_equal(res.image[0], np.where(w[2] > 0, 0.5, -1.0))


# ---- objectives ----------------------------------------------------------------------------
def test_objectives_compose_as_weighted_sums(tiny):
    x = jnp.asarray(np.random.default_rng(1).normal(size=(8, 8, 3)), jnp.float32)
    logits, feats = optimize.forward_fn(tiny)(x)
    combo = 2.0 * obj.class_score(1) - obj.channel("conv", 3) + 0.5 * obj.channel("conv", 2, position=(1, 4)) \
        - 0.1 * obj.l2() - 0.01 * obj.l1() - 0.2 * obj.total_variation()
    expected = (2 * logits[1] - feats["conv"][..., 3].mean() + 0.5 * feats["conv"][1, 4, 2]
                - 0.1 * jnp.sum(x * x) - 0.01 * jnp.sum(jnp.abs(x))
                - 0.2 * (jnp.abs(jnp.diff(x, axis=0)).sum() + jnp.abs(jnp.diff(x, axis=1)).sum()))
    np.testing.assert_allclose(combo(x, feats, logits), expected, rtol=1e-5)
    assert obj.channel("conv", 0, position="center")(x, feats, logits) == feats["conv"][4, 4, 0]
    assert obj.channel("pool", 5)(x, feats, logits) == feats["pool"][5]
    assert combo.layers() == {"conv"}


def test_channel_reduction_is_named_with_units_vocabulary(tiny):
    x = jnp.asarray(np.random.default_rng(1).normal(size=(8, 8, 3)), jnp.float32)
    logits, feats = optimize.forward_fn(tiny)(x)
    act = feats["conv"][..., 3]
    assert obj.channel("conv", 3).reduce == "mean"  # the objective's default; unit() defaults to "sum"
    for reduce, expected in [("mean", act.mean()), ("sum", act.sum()), ("max", act.max())]:
        np.testing.assert_allclose(obj.channel("conv", 3, reduce=reduce)(x, feats, logits), expected, rtol=1e-6)
    batched = obj.channel("conv", [1, 3], reduce="sum")
    values = jax.vmap(lambda o: o(x, feats, logits), in_axes=(obj.target_axes(batched),))(batched)
    np.testing.assert_allclose(values, feats["conv"][..., [1, 3]].sum(axis=(0, 1)), rtol=1e-6)
    with pytest.raises(ValueError, match="channel: reduce must be one of sum, max, mean, got 'median'"):
        obj.channel("conv", 3, reduce="median")


def test_blur_penalty_gradient_moves_towards_the_blurred_image():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(9, 7, 3)), jnp.float32)
    g = jax.grad(lambda x: obj.blur(1.0)(x, {}, None))(x)
    np.testing.assert_allclose(g, x - gaussian_filter(x, 1.0, axes=(0, 1)), atol=1e-6)


def test_custom_objective_with_per_target_params_batches(tiny):
    w, f = _linear()
    fn = lambda image, feats, logits, v: jnp.vdot(v, image) - jnp.sum(image * image)
    vs = jnp.stack([w[0], w[3]])
    res = optimize.visualize(f, obj.objective(fn, vs), key=jax.random.key(0), num_steps=40, optimizer=SGD,
                             image_shape=SHAPE)
    np.testing.assert_allclose(res.image, vs / 2, atol=1e-5)


# ---- batching, keys, compilation -------------------------------------------------------------
LUCID = dict(parameterization=parameterizations.LucidImage((-1.0,), (1.0,)),
             transforms=(tr.Pad(2), tr.Jitter(2), tr.RandomRotate((-10.0, 5.0))))


@pytest.mark.parametrize("setting", ["pixels", "lucid"])
def test_batched_targets_equal_one_at_a_time(tiny, setting):
    kw = dict(key=jax.random.key(3), num_steps=6, optimizer=ADAM)
    if setting == "lucid":
        kw.update(LUCID)
    objective = obj.class_score([0, 3, 1]) - 1e-3 * obj.l2()
    batched = optimize.visualize(tiny, objective, **kw)
    single = jax.jit(lambda c: optimize.maximize(tiny, obj.class_score(c) - 1e-3 * obj.l2(), **kw))
    for i, c in enumerate([0, 3, 1]):
        one = single(c)
        np.testing.assert_allclose(batched.image[i], one.image, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(batched.values[i], one.values, rtol=1e-5, atol=1e-6)
    if setting == "pixels":  # chunks of targets (the last one padded) and of steps change nothing
        chunked = optimize.visualize(tiny, objective, chunk_size=2, steps_per_call=3, **kw)
        np.testing.assert_allclose(chunked.image, batched.image, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(chunked.values, batched.values, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("target", ["class", "channel", "position"])
def test_objective_increases(tiny, target):
    objective = {"class": obj.class_score([0, 2]), "channel": obj.channel("conv", [1, 7]),
                 "position": obj.channel("conv", [1, 7], position=(3, 3))}[target]
    res = optimize.visualize(tiny, objective - 1e-3 * obj.l2(), key=jax.random.key(0), num_steps=25,
                             optimizer=ADAM, parameterization=parameterizations.Pixels(0.1))
    assert np.all(res.values[:, -1] > res.values[:, 0] + 0.1)


def test_progress_reports_zero_after_the_checks_then_every_call(tiny):
    calls = []
    optimize.visualize(tiny, obj.class_score([0, 1, 2]), key=jax.random.key(0), num_steps=4, optimizer=ADAM,
                       chunk_size=2, steps_per_call=2, progress=calls.append)
    assert calls == [0, 4, 4, 2, 2]  # chunks of 2 targets (the last padded, counted as 1) x 2 steps
    calls.clear()
    with pytest.raises(ValueError, match="class index 9 out of range"):
        optimize.visualize(tiny, obj.class_score([9]), key=jax.random.key(0), num_steps=4, optimizer=ADAM,
                           progress=calls.append)
    assert calls == []


def test_same_key_same_image_other_key_other_image(tiny):
    kw = dict(num_steps=5, optimizer=ADAM, **LUCID)
    a = optimize.visualize(tiny, obj.class_score([1, 2]), key=jax.random.key(7), **kw)
    b = optimize.visualize(tiny, obj.class_score([1, 2]), key=jax.random.key(7), **kw)
    c = optimize.visualize(tiny, obj.class_score([1, 2]), key=jax.random.key(8), **kw)
    np.testing.assert_array_equal(a.image, b.image)
    assert np.abs(a.image - c.image).max() > 1e-3


def test_repeat_call_does_not_recompile(tiny):
    kw = dict(key=jax.random.key(0), num_steps=3, optimizer=ADAM, radius=10.0,
              parameterization=parameterizations.Pixels(0.1))
    optimize.visualize(tiny, obj.class_score([0, 1]) - 1e-3 * obj.l2(), **kw)
    before = optimize._run_many._cache_size(), optimize._init_many._cache_size()
    # other targets, other weights, other radius, other key: data, not static options
    kw.update(radius=5.0, key=jax.random.key(1))
    optimize.visualize(tiny, obj.class_score([3, 2]) - 0.5 * obj.l2(), **kw)
    assert (optimize._run_many._cache_size(), optimize._init_many._cache_size()) == before


def test_equal_optimizers_built_twice_compile_once_and_the_learning_rate_counts(tiny):
    def call(optimizer):
        return optimize.visualize(tiny, obj.class_score([0, 1]), key=jax.random.key(0), num_steps=3,
                                  optimizer=optimizer, parameterization=parameterizations.Pixels(0.1))

    first = call(optax.adam(0.03))
    before = optimize._run_many._cache_size(), optimize._init_many._cache_size()
    again = call(optax.adam(0.03))  # a new, equal object: same code, same hyperparameters
    assert (optimize._run_many._cache_size(), optimize._init_many._cache_size()) == before
    np.testing.assert_array_equal(again.image, first.image)
    other = call(optax.adam(0.3))  # another learning rate: another program, and Adam's steps 10x longer
    assert optimize._run_many._cache_size() == before[0] + 1
    assert np.abs(other.image - first.image).max() > 0.3


def test_fingerprint_sees_hyperparameters_schedules_and_chains():
    sgd = lambda lr, m=0.9: optax.sgd(lr, momentum=m)  # noqa: E731
    decay = lambda rate: optax.adam(optax.exponential_decay(0.1, 10, rate))  # noqa: E731
    chained = lambda clip: optax.chain(optax.clip_by_global_norm(clip), optax.adam(0.1))  # noqa: E731
    for build, same, other in [(sgd, (0.1,), (0.1, 0.8)), (decay, (0.5,), (0.6,)), (chained, (1.0,), (2.0,))]:
        assert fingerprint(build(*same)) == fingerprint(build(*same))
        assert hash(fingerprint(build(*same))) == hash(fingerprint(build(*same)))
        assert fingerprint(build(*same)) != fingerprint(build(*other))
    assert fingerprint(optax.adam(0.1)) != fingerprint(optax.sgd(0.1))
    assert fingerprint(1) != fingerprint(True) and fingerprint(1.0) != fingerprint(1)
    opaque = {"a": [object()]}  # nothing to look into: equal only to itself
    assert fingerprint(opaque) == fingerprint(opaque) != fingerprint({"a": [object()]})


def test_lucid_image_stays_in_the_pixel_box(tiny):
    low, high = parameterizations.pixel_box(tiny)
    assert low == (-127 / 128,) and high == (1.0,)
    p = parameterizations.LucidImage(low, high)
    params = p.init(jax.random.key(0), (8, 8, 3))
    assert params.shape == (2, 3, 8, 5)
    image = p(100.0 * params)
    assert image.shape == (8, 8, 3) and float(image.min()) >= low[0] and float(image.max()) <= high[0]


def test_lucid_fourier_coefficient_is_a_scaled_cosine():
    # One real coefficient at frequency (ky, kx) of an orthonormal inverse real FFT is, with its
    # Hermitian twin, 2a/sqrt(HW) cos(2 pi (ky y/H + kx x/W)); Lucid scales it by 1/|f| and divides by 4.
    h, w, ky, kx, a = 8, 12, 1, 2, 0.3
    p = parameterizations.LucidImage((0.0,), (1.0,), decorrelate=False)
    params = np.zeros((2, 3, h, w // 2 + 1), np.float32)
    params[0, 1, ky, kx] = a
    image = np.asarray(p(jnp.asarray(params)), np.float64)
    pre = np.log(image / (1 - image))  # undo the sigmoid into (0, 1)
    y, x = np.mgrid[:h, :w]
    freq = np.hypot(ky / h, kx / w)
    expected = 2 * a / np.sqrt(h * w) / freq / 4 * np.cos(2 * np.pi * (ky * y / h + kx * x / w))
    np.testing.assert_allclose(pre[..., 1], expected, atol=1e-5)
    np.testing.assert_allclose(pre[..., [0, 2]], 0.0, atol=1e-6)
    # decorrelated colour mixes that plane into every channel by the (normalised) matrix's column 1
    mixed = parameterizations.LucidImage((0.0,), (1.0,))(jnp.asarray(params))
    mixed = np.log(np.asarray(mixed, np.float64) / (1 - np.asarray(mixed, np.float64)))
    column = parameterizations._COLOR_CORRELATION[:, 1]
    np.testing.assert_allclose(mixed, expected[..., None] * column, atol=1e-5)


def test_lucid_pixels_without_fft_and_per_channel_box():
    p = parameterizations.LucidImage((0.0, -1.0, 2.0), (1.0, 1.0, 3.0), fft=False, decorrelate=False)
    params = p.init(jax.random.key(0), (4, 6, 3))
    assert params.shape == (4, 6, 3)
    image = np.asarray(p(params))
    expected = np.array([0.0, -1.0, 2.0]) + np.array([1.0, 2.0, 1.0]) / (1 + np.exp(-np.asarray(params)))
    np.testing.assert_allclose(image, expected, atol=1e-6)


@pytest.mark.parametrize("setting", ["pixels", "lucid"])
def test_norms_are_the_image_norms_after_every_step(tiny, setting):
    kw = dict(key=jax.random.key(2), optimizer=ADAM, parameterization=parameterizations.Pixels(0.1))
    if setting == "lucid":
        kw.update(LUCID)
    objective = obj.class_score([0, 3])
    full = optimize.visualize(tiny, objective, num_steps=4, **kw)
    for k in (1, 3, 4):  # the image after k steps has the norm reported after step k
        part = optimize.visualize(tiny, objective, num_steps=k, **kw)
        norms = np.linalg.norm(part.image.reshape(2, -1), axis=1)
        np.testing.assert_allclose(full.norms[:, k - 1], norms, rtol=1e-5)
    split = optimize.visualize(tiny, objective, num_steps=4, steps_per_call=3, **kw)
    np.testing.assert_allclose(split.norms, full.norms, rtol=1e-5)


def test_transforms_shapes_and_identities():
    x = jnp.asarray(np.random.default_rng(4).normal(size=(10, 12, 3)), jnp.float32)
    key = jax.random.key(0)
    assert tr.Pad(3)(key, x).shape == (16, 18, 3)
    assert tr.apply(tr.standard(), key, x).shape == (34, 36, 3)
    np.testing.assert_allclose(tr.RandomScale((1.0,))(key, x), x, atol=1e-5)
    np.testing.assert_allclose(tr.RandomRotate((0.0,))(key, x), x, atol=1e-5)
    np.testing.assert_allclose(tr.RandomScaleRotate((1.0,), (0.0,))(key, x), x, atol=1e-5)
    np.testing.assert_array_equal(tr.Jitter(1)(key, x), x)
    np.testing.assert_allclose(tr.RandomRotate((180.0,))(key, x), x[::-1, ::-1], atol=1e-4)


def _map_coordinates_warp(image, inverse, value):
    """The reference: jax.scipy's bilinear map_coordinates at centre + inverse @ (p - centre)."""
    from jax.scipy import ndimage

    h, w, _ = image.shape
    centre = jnp.array([(h - 1) / 2, (w - 1) / 2])
    grid = jnp.stack(jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                                  indexing="ij"), axis=-1)
    coords = jnp.einsum("ij,hwj->ihw", inverse, grid - centre) + centre[:, None, None]
    sample = lambda ch: ndimage.map_coordinates(ch, list(coords), order=1, mode="constant", cval=value)
    return jax.vmap(sample, in_axes=-1, out_axes=-1)(image)


@pytest.mark.parametrize("scale,angle", [(1.0, 0.0), (1.1, 10.0), (0.9, -7.0), (0.5, 0.0), (2.0, 0.0),
                                         (1.0, 45.0), (1.3, 180.0), (0.7, -100.0)])
def test_affine_warp_and_its_gather_adjoint_match_map_coordinates(scale, angle):
    # The warp's backward pass is our own gather (not autodiff's scatter): values and input
    # gradients must equal map_coordinates' for zooms, shrinks and any rotation.
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(2, 13, 18, 3)), jnp.float32)  # two images: vmapped like targets
    g = jnp.asarray(rng.normal(size=(2, 13, 18, 3)), jnp.float32)
    a = np.deg2rad(angle)
    inverse = jnp.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]], jnp.float32) / scale
    t = tr.RandomScaleRotate((scale,), (angle,), 0.25)
    ours = lambda x: jnp.vdot(jax.vmap(lambda im: t(jax.random.key(0), im))(x), g)  # noqa: E731
    ref = lambda x: jnp.vdot(jax.vmap(lambda im: _map_coordinates_warp(im, inverse, 0.25))(x), g)  # noqa: E731
    np.testing.assert_allclose(jax.vmap(lambda im: t(jax.random.key(0), im))(x),
                               jax.vmap(lambda im: _map_coordinates_warp(im, inverse, 0.25))(x), atol=1e-5)
    np.testing.assert_allclose(jax.jit(jax.grad(ours))(x), jax.grad(ref)(x), atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_jitter_and_its_adjoint_match_pad_and_slice(seed):
    # Jitter's backward pass is our own shift (not autodiff's scatter): it must be the exact adjoint.
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(2, 7, 9, 3)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(2, 7, 9, 3)), jnp.float32)
    key, d = jax.random.key(seed), 4
    dy, dx = (int(v) for v in jax.random.randint(key, (2,), 0, d))

    def ref(im):
        padded = jnp.pad(im, ((d, d), (d, d), (0, 0)), constant_values=0.5)
        return padded[d - dy:d - dy + 7, d - dx:d - dx + 9]

    ours = jax.vmap(lambda im: tr.Jitter(d, 0.5)(key, im))
    np.testing.assert_array_equal(ours(x), jax.vmap(ref)(x))
    np.testing.assert_array_equal(jax.grad(lambda x: jnp.vdot(ours(x), g))(x),
                                  jax.grad(lambda x: jnp.vdot(jax.vmap(ref)(x), g))(x))


def test_scale_and_rotate_alone_match_the_combined_warp():
    x = jnp.asarray(np.random.default_rng(6).normal(size=(9, 10, 3)), jnp.float32)
    key = jax.random.key(0)
    np.testing.assert_allclose(tr.RandomScale((1.2,))(key, x), tr.RandomScaleRotate((1.2,), (0.0,))(key, x),
                               atol=1e-6)
    np.testing.assert_allclose(tr.RandomRotate((30.0,))(key, x), tr.RandomScaleRotate((1.0,), (30.0,))(key, x),
                               atol=1e-6)
    for t in (tr.RandomScale((0.8, 1.2)), tr.RandomRotate((-60.0, 60.0))):
        grad = jax.grad(lambda x: jnp.sum(t(key, x) ** 2))(x)
        assert grad.shape == x.shape and bool(jnp.all(jnp.isfinite(grad)))


@pytest.mark.parametrize("scales", [(), (1.0, 0.0), (-1.0,)])
def test_scales_must_be_positive(scales):
    with pytest.raises(ValueError, match="scales must be positive numbers"):
        tr.RandomScale(scales)
    with pytest.raises(ValueError, match="scales must be positive numbers"):
        tr.RandomScaleRotate(scales, (0.0,))


# ---- presets --------------------------------------------------------------------------------
def test_paper_preset_starts_from_the_training_mean(tiny):
    vis = presets.class_model(tiny, [0, 1], num_steps=1, learning_rate=1e-6)
    assert vis.pixels.dtype == np.uint8 and vis.pixels.shape == (2, 8, 8, 3)
    assert np.all(vis.pixels == 127)  # the zero image of model space is uint8 127
    assert np.all(vis.norms < 1e-3)


def test_sphere_preset_holds_the_radius(tiny):
    vis = presets.neuron_model(tiny, "conv", [0, 5], key=jax.random.key(0), num_steps=5, radius=4.0)
    np.testing.assert_allclose(vis.norms / 4.0, 1.0, atol=1e-5)


# ---- bad input ------------------------------------------------------------------------------
def _call(tiny, objective=None, **kw):
    args = dict(key=jax.random.key(0), num_steps=2, optimizer=ADAM)
    args.update(kw)
    return optimize.visualize(tiny, obj.class_score(0) if objective is None else objective, **args)


@pytest.mark.parametrize(
    "objective,kw,message",
    [
        (obj.channel("nope", 0), {}, r"unknown layer 'nope'; choose one of conv, pool"),
        (obj.channel("conv", 8), {}, r"channel 8 out of range for layer 'conv' with 8 channels"),
        (obj.channel("conv", [1, -1]), {}, r"channel -1 out of range"),
        (obj.channel("conv", 0, position=(8, 0)), {}, r"position \[8, 0\] out of range for layer 'conv' of size 8x8"),
        (obj.channel("pool", 0, position="center"), {}, r"layer 'pool' has no spatial positions"),
        (obj.class_score(4), {}, r"class index 4 out of range \[0, 4\)"),
        (obj.class_score([0, 1]) + obj.channel("conv", [1, 2, 3]), {}, r"different numbers of targets: \[2, 3\]"),
        (None, dict(num_steps=0), r"num_steps must be a positive int, got 0"),
        (None, dict(num_steps=2.5), r"num_steps must be a positive int, got 2.5"),
        (None, dict(radius=0.0, parameterization=parameterizations.Pixels(0.1)), r"radius must be a positive number, got 0.0"),
        (None, dict(radius=-2), r"radius must be a positive number, got -2"),
        (None, dict(radius=1.0), r"the sphere constraint needs a non-zero start"),
        (None, dict(constraint="cube", radius=1.0), r"constraint must be one of sphere, ball, got 'cube'"),
        (None, dict(box=(1.0, -1.0)), r"box must be \(low, high\) with low < high"),
        (None, dict(chunk_size=0), r"chunk_size must be a positive int, got 0"),
        (None, dict(key=None), r"pass key=jax.random.key\(seed\)"),
    ],
)
def test_bad_input_is_a_clear_error(tiny, objective, kw, message):
    with pytest.raises(ValueError, match=message):
        _call(tiny, objective, **kw)


def test_bad_input_elsewhere(tiny):
    w, f = _linear()
    with pytest.raises(ValueError, match="a bare logit function has no named features: pass a Model"):
        optimize.visualize(f, obj.channel("conv", 0), key=jax.random.key(0), num_steps=1, optimizer=ADAM,
                           image_shape=SHAPE)
    with pytest.raises(ValueError, match=r"a bare logit function needs image_shape=\(H, W, C\)"):
        optimize.visualize(f, obj.class_score(0), key=jax.random.key(0), num_steps=1, optimizer=ADAM)
    with pytest.raises(ValueError, match=r"class_score: classes must be an int or a sequence of ints"):
        obj.class_score("cat")
    with pytest.raises(ValueError, match="unknown preset 'dream'; choose one of paper, sphere, lucid"):
        presets.class_model(tiny, 0, preset="dream")
    with pytest.raises(ValueError, match="preset 'lucid' is random: pass key"):
        presets.class_model(tiny, 0, preset="lucid")
    with pytest.raises(ValueError, match="class index 1000 out of range"):
        presets.class_model(tiny, 1000)
    with pytest.raises(ValueError, match="unknown option.* lr"):
        presets.class_model(tiny, 0, lr=0.1)
    with pytest.raises(TypeError, match="optimizer must be an optax.GradientTransformation"):
        _call(tiny, optimizer="adam")


# ---- the real model: the paper's target ------------------------------------------------------
@pytest.mark.slow
def test_paper_class_models_are_top1_with_high_confidence(model):
    """Sec. 2 on EfficientNet-Lite0: each class model is its class's top-1 with softmax >= 0.9."""
    classes = [130, 967]  # flamingo, espresso
    vis = presets.class_model(model, classes, num_steps=30)
    for probs, c in zip((model.predict(list(vis.pixels), top=1)), classes):
        assert probs[0][0] == c and probs[0][2] >= 0.9, probs
    assert np.all(vis.values[:, -1] > vis.values[:, 0] + 10)


@pytest.mark.slow
def test_lucid_class_models_are_top1(model):
    """The lucid preset end to end (Fourier image, transforms with their own adjoints, Adam) on
    EfficientNet-Lite0: the classes win on their images, seen without the random transforms."""
    classes = [130, 967]  # flamingo, espresso
    vis = presets.class_model(model, classes, preset="lucid", key=jax.random.key(0), num_steps=40)
    for probs, c in zip((model.predict(list(vis.pixels), top=1)), classes):
        assert probs[0][0] == c and probs[0][2] >= 0.5, probs
    assert np.all(vis.values[:, -10:].mean(axis=1) > vis.values[:, :10].mean(axis=1) + 5)
