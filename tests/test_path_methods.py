"""The path family on analytic functions: Guided IG on PAIR saliency's test functions (guided_ig_test.py)
and its completeness, Blur IG against PAIR's loop with scipy's blur and its completeness, Expected
Gradients' completeness in expectation, key and chunk semantics, and the one-line errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

import saliency_jax
from saliency_jax import methods
from saliency_jax.attribution.gradients import class_gradient
from saliency_jax.methods.blur_ig import blur, blur_path_tables
from saliency_jax.methods.expected_gradients import expected_gradients
from saliency_jax.methods.guided_ig import guided_integrated_gradients, kth_smallest
from tiny_models import tiny_model


@pytest.fixture(scope="module")
def tiny():
    return tiny_model((8, 8), 4)


@pytest.fixture(scope="module")
def x():
    return jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 8, 3)), jnp.float32)


def _point(*values):
    """A two-feature "image" [1,1,2]."""
    return jnp.asarray(values, jnp.float32).reshape(1, 1, -1)


# PAIR's three analytic functions, as logit functions [1,1,2] -> [1].
LINEAR = lambda z: jnp.stack([2 * z[0, 0, 0] + z[0, 0, 1]])  # noqa: E731
QUADRATIC_INDEPENDENT = lambda z: jnp.stack([2 * z[0, 0, 0] ** 2 + z[0, 0, 1] ** 2])  # noqa: E731
QUADRATIC_DEPENDENT = lambda z: jnp.stack([(2 * z[0, 0, 0] + z[0, 0, 1]) ** 2])  # noqa: E731


def _gig(fn, x, baseline=None, **options):
    return np.asarray(jax.jit(lambda x: guided_integrated_gradients(fn, x, 0, baseline=baseline, **options))(x)).ravel()


# ---- Guided IG: PAIR's guided_ig_test.py ------------------------------------------------------------
@pytest.mark.parametrize("fn,x,baseline,options,expected,rtol", [
    (LINEAR, (10.0, 5.0), (-1.0, -3.0), dict(num_steps=10, fraction=0.1, max_dist=0.5), [22.0, 8.0], 1e-6),
    (LINEAR, (10.0, 5.0), None, dict(num_steps=10, fraction=0.1, max_dist=0.5), [20.0, 5.0], 1e-6),
    (QUADRATIC_INDEPENDENT, (3.0, 3.0), None, dict(num_steps=1000, fraction=0.1, max_dist=0.4), [18.0, 9.0], 0.01),
    (QUADRATIC_INDEPENDENT, (0.0, 0.0), (3.0, 3.0), dict(num_steps=1000, fraction=0.1, max_dist=0.4),
     [-18.0, -9.0], 0.01),
    (QUADRATIC_DEPENDENT, (3.0, 3.0), None, dict(num_steps=1000, fraction=0.1, max_dist=0.0), [54.0, 27.0], 0.01),
    (QUADRATIC_DEPENDENT, (3.0, 3.0), None, dict(num_steps=1000, fraction=1.0, max_dist=0.5), [54.0, 27.0], 0.01),
    (QUADRATIC_DEPENDENT, (3.0, 3.0), None, dict(num_steps=1000, fraction=0.1, max_dist=1.0), [72.0, 9.0], 0.01),
])
def test_guided_ig_on_pairs_analytic_functions(fn, x, baseline, options, expected, rtol):
    mask = _gig(fn, _point(*x), None if baseline is None else _point(*baseline), **options)
    np.testing.assert_allclose(mask, expected, rtol=rtol)


def test_bounded_guided_ig_lies_between_ig_and_unbounded_and_is_complete():
    mask = _gig(QUADRATIC_DEPENDENT, _point(3.0, 3.0), num_steps=1000, fraction=0.1, max_dist=0.2)
    assert abs(mask.sum() - 81.0) < 0.1
    assert 55.0 < mask[0] < 71.0 and 10.0 < mask[1] < 26.0


def test_guided_ig_with_max_dist_0_is_ig_with_the_left_rule(tiny, x):
    gig = saliency_jax.attribute(tiny, x, [1, 3], method="guided_ig", num_steps=16, max_dist=0.0)
    ig = saliency_jax.attribute(tiny, x, [1, 3], method="ig", num_steps=16, quadrature="left")
    np.testing.assert_allclose(gig, ig, rtol=1e-4, atol=1e-6)


def _smooth_net(seed=2):
    """A smooth two-layer logit function on [8,8,3] images (tanh hidden layer, 3 classes)."""
    rng = np.random.default_rng(seed)
    w1 = jnp.asarray(rng.normal(0, 0.2, (192, 16)), jnp.float32)
    w2 = jnp.asarray(rng.normal(0, 1.0, (16, 3)), jnp.float32)
    return lambda z: jnp.tanh(z.reshape(-1) @ w1) @ w2


def test_guided_ig_is_complete_on_a_smooth_network(x):
    fn = _smooth_net()
    out = saliency_jax.attribute(fn, x, [0, 2], method="guided_ig", num_steps=200, fraction=0.25, max_dist=0.1)
    for i, c in enumerate([0, 2]):
        gap = fn(x[i])[c] - fn(jnp.zeros_like(x[i]))[c]
        np.testing.assert_allclose(float(out[i].sum()), float(gap), rtol=0.02)  # a left rule: O(1/num_steps)
    plain = saliency_jax.attribute(fn, x, [0, 2], method="ig", num_steps=200)
    assert not np.allclose(out, plain, atol=1e-3), "the guided path leaves the straight line"


def _pair_guided_ig(grad_fn, x, steps, fraction, max_dist):
    """PAIR saliency 0.2.1's guided_ig_impl (zero baseline), float64 NumPy, condensed."""
    x = np.asarray(x, np.float64)
    point, attr, l1_total = np.zeros_like(x), np.zeros_like(x), np.abs(x).sum()
    for step in range(steps):
        grad_actual = grad_fn(point)
        grad = grad_actual.copy()
        alpha = (step + 1.0) / steps
        x_min, x_max = x * max(alpha - max_dist, 0.0), x * min(alpha + max_dist, 1.0)
        l1_target = l1_total * (1 - (step + 1) / steps)
        gamma = np.inf
        while gamma > 1.0:
            old = point.copy()
            with np.errstate(divide="ignore", invalid="ignore"):
                x_alpha = np.where(x != 0, point / x, np.nan)
            x_alpha[np.isnan(x_alpha)] = min(alpha + max_dist, 1.0)
            behind = x_alpha < max(alpha - max_dist, 0.0)
            point[behind] = x_min[behind]
            l1_current = np.abs(point - x).sum()
            if np.isclose(l1_target, l1_current, rtol=1e-9, atol=1e-9):
                attr += (point - old) * grad_actual
                break
            grad[point == x_max] = np.inf
            threshold = np.quantile(np.abs(grad), fraction, method="lower")
            s = np.logical_and(np.abs(grad) <= threshold, grad != np.inf)
            l1_s = (np.abs(point - x_max) * s).sum()
            gamma = (l1_current - l1_target) / l1_s if l1_s > 0 else np.inf
            point[s] = x_max[s] if gamma > 1.0 else (point + (x_max - point) * gamma)[s]
            attr += (point - old) * grad_actual
    return attr


def test_guided_ig_follows_pairs_loop_on_a_smooth_network(x):
    fn = _smooth_net()
    grad = jax.jit(lambda z: class_gradient(fn, z, 1))
    ours = saliency_jax.attribute(fn, x[:1], 1, method="guided_ig", num_steps=32, fraction=0.25, max_dist=0.05)
    pair = _pair_guided_ig(lambda z: np.asarray(grad(jnp.asarray(z, jnp.float32)), np.float64), x[0], 32, 0.25, 0.05)
    np.testing.assert_allclose(ours[0], pair, rtol=1e-3, atol=1e-3 * np.abs(pair).max())


def test_max_dist_is_traced_and_num_steps_static(tiny, x):
    saliency_jax.attribute(tiny, x, 0, method="guided_ig", num_steps=4, max_dist=0.1)
    before = methods.attribute_batch._cache_size()
    saliency_jax.attribute(tiny, x, 0, method="guided_ig", num_steps=4, max_dist=0.3)
    assert methods.attribute_batch._cache_size() == before


def test_kth_smallest_is_numpys_lower_quantile():
    rng = np.random.default_rng(0)
    values = np.abs(rng.normal(size=1001)).astype(np.float32)
    values[rng.integers(0, 1001, 300)] = np.inf
    values[:50] = values[50]  # ties
    for k in (0, 1, 49, 500, 700, 1000):
        assert float(kth_smallest(jnp.asarray(values), k)) == np.sort(values)[k]
        q = k / 1000
        assert float(kth_smallest(jnp.asarray(values), k)) == np.quantile(values, q, method="lower")


# ---- Blur IG -------------------------------------------------------------------------------------
def test_blur_path_is_scipys_constant_edge_gaussian(x):
    taps_h, taps_w, _ = blur_path_tables(3.0, 4, 0.01, x.shape[1:])
    image = np.asarray(x[0])
    for i, sigma in enumerate([0.0, 0.75, 1.5, 2.25]):
        expected = image if sigma == 0 else ndimage.gaussian_filter(image, [sigma, sigma, 0], mode="constant")
        np.testing.assert_allclose(blur(x[0], taps_h[0, i], taps_w[0, i]), expected, rtol=1e-5, atol=1e-6)
        shifted = ndimage.gaussian_filter(image, [sigma + 0.01] * 2 + [0], mode="constant")
        np.testing.assert_allclose(blur(x[0], taps_h[1, i], taps_w[1, i]), shifted, rtol=1e-5, atol=1e-6)


def _pair_blur_ig(logit_fn, image, target, max_sigma, steps, grad_step):
    """PAIR saliency 0.2.1's BlurIG.GetMask loop (batch_size 1), with scipy's blur."""
    sigmas = [i * max_sigma / steps for i in range(steps + 1)]
    gauss = lambda s: image if s == 0 else ndimage.gaussian_filter(image, [s, s, 0], mode="constant")  # noqa: E731
    total = np.zeros_like(image, dtype=np.float64)
    for i in range(steps):
        point = gauss(sigmas[i])
        direction = (gauss(sigmas[i] + grad_step) - point) / grad_step
        grad = np.asarray(class_gradient(logit_fn, jnp.asarray(point, jnp.float32), target))
        total += (sigmas[i + 1] - sigmas[i]) * direction * grad
    return -total


def test_blur_ig_matches_pairs_loop(tiny, x):
    out = saliency_jax.attribute(tiny, x, [2, 1], method="blur_ig", max_sigma=4.0, num_steps=6, chunk_size=4)
    for i, c in enumerate([2, 1]):
        expected = _pair_blur_ig(tiny.logit_fn, np.asarray(x[i], np.float64), c, 4.0, 6, 0.01)
        np.testing.assert_allclose(out[i], expected, rtol=2e-3, atol=2e-5)


def test_blur_ig_sums_to_the_score_gap_to_the_blurred_image(tiny, x):
    out = saliency_jax.attribute(tiny, x, [0, 3], method="blur_ig", max_sigma=3.0, num_steps=400, grad_step=0.001)
    for i, c in enumerate([0, 3]):
        blurred = ndimage.gaussian_filter(np.asarray(x[i]), [3.0, 3.0, 0], mode="constant")
        gap = tiny.logit_fn(x[i])[c] - tiny.logit_fn(jnp.asarray(blurred))[c]
        np.testing.assert_allclose(float(out[i].sum()), float(gap), rtol=0.03, atol=2e-3)


def test_blur_ig_does_not_depend_on_the_chunk_size(tiny, x):
    full = saliency_jax.attribute(tiny, x, 1, method="blur_ig", num_steps=5, chunk_size=5)
    for chunk in (1, 2):
        np.testing.assert_allclose(saliency_jax.attribute(tiny, x, 1, method="blur_ig", num_steps=5, chunk_size=chunk),
                                   full, rtol=1e-4, atol=1e-6)  # float summation order only


# ---- Expected Gradients / GradientSHAP ---------------------------------------------------------------
def test_expected_gradients_is_complete_in_expectation():
    """f = sum a x^2: on the path b + t (x - b) the attribution's sum averages to f(x) - mean_b f(b)."""
    rng = np.random.default_rng(3)
    a = jnp.asarray(rng.normal(size=(4, 4, 3)), jnp.float32)
    fn = lambda z: jnp.stack([jnp.sum(a * z * z)])  # noqa: E731
    x = jnp.asarray(rng.normal(size=(4, 4, 3)), jnp.float32)
    baselines = jnp.asarray(rng.normal(size=(5, 4, 4, 3)), jnp.float32)
    one = lambda key: jnp.sum(expected_gradients(fn, x, 0, key=key, baselines=baselines, num_samples=1))  # noqa
    sums = np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(0), 4000)))
    expected = float(fn(x)[0] - jnp.mean(jax.vmap(fn)(baselines)))
    assert abs(sums.mean() - expected) < 4 * sums.std() / np.sqrt(len(sums))
    assert sums.std() > 0.1 * abs(expected), "a real Monte-Carlo spread: the check above is not vacuous"
    many = saliency_jax.attribute(fn, x[None], 0, method="expected_gradients", baselines=baselines,
                                  num_samples=4000, key=jax.random.key(1))
    assert abs(float(many.sum()) - expected) < 4 * sums.std() / np.sqrt(len(sums))


def test_expected_gradients_with_one_baseline_on_a_linear_function_is_exact(x):
    w = jnp.asarray(np.random.default_rng(5).normal(size=(8, 8, 3)), jnp.float32)
    fn = lambda z: jnp.stack([jnp.sum(w * z)])  # noqa: E731
    baseline = jnp.full((1, 8, 8, 3), 0.5)
    out = saliency_jax.attribute(fn, x, 0, method="expected_gradients", baselines=baseline, num_samples=3,
                                 key=jax.random.key(0))
    np.testing.assert_allclose(out, w * (x - 0.5), rtol=1e-5, atol=1e-6)


def test_expected_gradients_key_chunk_and_traced_baselines(tiny, x):
    run = lambda **o: saliency_jax.attribute(tiny, x, [0, 1], method="expected_gradients", num_samples=6,  # noqa
                                             key=jax.random.key(4), **{"noise_scale": 0.1, **o})
    full = run(chunk_size=6)
    np.testing.assert_allclose(run(chunk_size=1), full, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(run(chunk_size=6), full)
    assert not np.allclose(run(chunk_size=6, noise_scale=0.0), full)
    first = run(baselines=np.zeros((3, 8, 8, 3), np.float32))
    before = methods.attribute_batch._cache_size()
    second = run(baselines=np.ones((3, 8, 8, 3), np.float32))
    assert methods.attribute_batch._cache_size() == before and not np.allclose(first, second)


# ---- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("options,message", [
    (dict(method="guided_ig", fraction=0.0), r"^GuidedIG: fraction must lie in \(0, 1\], got 0$"),
    (dict(method="guided_ig", fraction=1.5), r"^GuidedIG: fraction must lie in \(0, 1\], got 1.5$"),
    (dict(method="guided_ig", max_dist=-0.1), r"^GuidedIG: max_dist must lie in \[0, 1\], got -0.1$"),
    (dict(method="guided_ig", baseline=np.zeros((3, 3, 3))), r"^baseline of shape \(3, 3, 3\) does not broadcast"),
    (dict(method="blur_ig", max_sigma=0.0), r"^BlurIG: max_sigma must lie in \(0, 10000\], got 0$"),
    (dict(method="blur_ig", grad_step=-1.0), r"^BlurIG: grad_step must lie in \(0, 1000\], got -1$"),
    (dict(method="expected_gradients", baselines=np.zeros((8, 8, 3))),
     r"^ExpectedGradients: baselines must be \[N,H,W,C\] with \[H,W,C\] the image shape \(8, 8, 3\); "
     r"got shape \(8, 8, 3\)$"),
    (dict(method="expected_gradients", baselines=np.zeros((2, 4, 4, 3))), r"got shape \(2, 4, 4, 3\)$"),
    (dict(method="expected_gradients", num_samples=0), r"^ExpectedGradients: num_samples must be an integer"),
])
def test_bad_path_options_are_one_line_errors(tiny, x, options, message):
    with pytest.raises(ValueError, match=message):
        saliency_jax.attribute(tiny, x, 0, key=jax.random.key(0), **options)


def test_expected_gradients_needs_a_key(tiny, x):
    with pytest.raises(ValueError, match="method 'expected_gradients' is random: pass key"):
        saliency_jax.attribute(tiny, x, 0, method="expected_gradients")
