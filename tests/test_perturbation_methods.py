"""The perturbation family on analytic models: exact values on additive models, Shapley values by
enumeration, LIME's closed form, Captum's occlusion positions, XRAI's greedy order, chunk and key
independence, per-image segment maps, and the one-line errors."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saliency_jax
from saliency_jax import methods
from saliency_jax.methods.kernel_shap import kernel_plan
from saliency_jax.methods.lime import lime_coalition
from saliency_jax.methods.rise import rise_mask
from saliency_jax.methods.xrai import top_region, xrai_regions
from saliency_jax.segments import grid_segments

H, W, C = 6, 7, 3
KEY = jax.random.key(0)
RNG = np.random.default_rng(0)
WEIGHTS = jnp.asarray(RNG.normal(size=(2, H, W, C)), jnp.float32)
X = jnp.asarray(RNG.normal(size=(2, H, W, C)), jnp.float32)
BASE = jnp.asarray(RNG.normal(size=(H, W, C)), jnp.float32)
SEGMENTS = np.asarray(grid_segments(H, W, 9))  # 3x3 cells of a 6x7 image: 9 features


def linear(image):
    """An additive model: logits_k = sum(W_k * x)."""
    return jnp.einsum("khwc,hwc->k", WEIGHTS, image)


def contributions(x, baseline=0.0):
    """Per-pixel terms W_0 (x - b) [H,W] of class 0 (summed over channels)."""
    return np.asarray(jnp.sum(WEIGHTS[0] * (x - baseline), axis=-1))


def per_segment(values, segments=SEGMENTS):
    return np.array([values[segments == k].sum() for k in range(segments.max() + 1)])


def attribute(method, x=X, targets=(0, 0), **kw):
    return np.asarray(saliency_jax.attribute(linear, x, list(targets), method=method, key=KEY, **kw))


# ---- exact on an additive model ------------------------------------------------------------
def captum_occlusion(terms, window: int, stride: int) -> np.ndarray:
    """Captum's occlusion positions and per-pixel average, written out with loops for a linear model."""
    total, counts = np.zeros_like(terms), np.zeros_like(terms)
    rows = math.ceil((H - window) / stride) + 1
    cols = math.ceil((W - window) / stride) + 1
    for r, c in itertools.product(range(rows), range(cols)):
        sl = np.s_[r * stride: r * stride + window, c * stride: c * stride + window]
        total[sl] += terms[sl].sum()
        counts[sl] += 1
    return total / counts


@pytest.mark.parametrize("window,stride", [(3, 2), (2, 2), (4, 3), (6, 1)])
def test_occlusion_is_captums_average_on_a_linear_model(window, stride):
    out = attribute(methods.Occlusion(window=window, stride=stride, baseline=BASE))
    for b in range(2):
        expected = captum_occlusion(contributions(X[b], BASE), window, stride)
        np.testing.assert_allclose(out[b, ..., 0], expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(out[b, ..., 0], out[b, ..., 2])


@pytest.mark.parametrize("method", [
    methods.FeatureAblation(segments=SEGMENTS, baseline=BASE),
    methods.ShapleySampling(segments=SEGMENTS, baseline=BASE, num_permutations=1),
    methods.KernelSHAP(segments=SEGMENTS, baseline=BASE, num_samples=40),
    methods.LIME(segments=SEGMENTS, baseline=BASE, num_samples=60, alpha=0.0),
], ids=["feature_ablation", "shapley_sampling", "kernel_shap", "lime"])
def test_segment_methods_are_exact_on_an_additive_model(method):
    out = attribute(method)
    for b in range(2):
        expected = per_segment(contributions(X[b], BASE))
        got = np.array([out[b][SEGMENTS == k][0, 0] for k in range(9)])
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)


def test_blur_baseline_is_the_gaussian_blurred_image():
    from saliency_jax.filters import gaussian_filter

    out = attribute(methods.FeatureAblation(segments=SEGMENTS, blur_sigma=1.5))
    expected = per_segment(contributions(X[0], gaussian_filter(X[0], 1.5)))
    np.testing.assert_allclose([out[0][SEGMENTS == k][0, 0] for k in range(9)], expected, rtol=1e-3, atol=1e-3)


# ---- Shapley values by enumeration ---------------------------------------------------------
# A 6x10 image in 2 x 5 cells of 3x2 pixels: 10 features. With x = 1 and baseline 0 a perturbed
# image's cell means are exactly the coalition z, so the game below is a function of z alone.
M10 = np.arange(10).reshape(2, 5).repeat(3, 0).repeat(2, 1)
ONES, ZEROS = jnp.ones((1, 6, 10, C)), jnp.zeros((6, 10, C))


def interactions(p, xp):
    """A game dominated by interactions of order 2 to 4, a max of three features and a min of two."""
    return (p @ xp.arange(1.0, 11.0) / 5 + 6 * p[0] * p[1] * p[2] * p[3] - 5 * p[1] * p[5] * p[7] * p[9]
            + 4 * xp.maximum(xp.maximum(p[4], p[5]), p[6]) + 3 * xp.minimum(p[0], p[7])
            + 2 * p[8] * xp.maximum(p[2], p[9]))


def interaction_model(image):
    cells = jnp.asarray(M10)[..., None] == jnp.arange(10)
    p = jnp.sum(jnp.where(cells, image[..., :1], 0.0), axis=(0, 1)) / cells.sum(axis=(0, 1))
    s = interactions(p, jnp)
    return jnp.stack([s, -s])


def exact_shapley(game, m):
    """phi_k = sum_{S not containing k} |S|! (m-|S|-1)! / m! (v(S + k) - v(S)), enumerated in float64 NumPy."""
    coalitions = np.array(list(itertools.product((0, 1), repeat=m)), np.float64)  # row r: the bits of r
    values = np.array([game(z, np) for z in coalitions])
    phi = np.zeros(m)
    for r, z in enumerate(coalitions.astype(int)):
        s = z.sum()
        for k in np.flatnonzero(z == 0):
            weight = math.factorial(s) * math.factorial(m - s - 1) / math.factorial(m)
            phi[k] += weight * (values[r + 2 ** (m - 1 - k)] - values[r])
    return phi


def cell_values(method, key=jax.random.key(1)):
    out = np.asarray(saliency_jax.attribute(interaction_model, ONES, 0, method=method, key=key))[0]
    return np.array([out[M10 == k][0, 0] for k in range(10)])


def relative_error(got, exact):
    return np.linalg.norm(got - exact) / np.linalg.norm(exact)


# The documented sample counts that reach 5% relative L2 error here (README, module docstrings).
# KernelSHAP's default 1000 samples enumerate the sizes 1-4 and 6-9 (770 coalitions) and sample
# size 5; with the Shapley kernel's weights it is within 2% over seeds, with uniform weights
# (Banzhaf's) 21% off and with uniform size weights 8% off (checked by breaking kernel_shap.py).
@pytest.mark.parametrize("method", [
    methods.ShapleySampling(segments=M10, baseline=ZEROS, num_permutations=500),
    methods.KernelSHAP(segments=M10, baseline=ZEROS),
], ids=["shapley_sampling", "kernel_shap"])
def test_shapley_estimates_converge_to_the_enumerated_values(method):
    exact = exact_shapley(interactions, 10)
    got = cell_values(method)
    assert relative_error(got, exact) < 0.05
    np.testing.assert_allclose(got.sum(), exact.sum(), rtol=1e-3)  # efficiency: sum = S(x) - S(baseline)


def test_kernel_shap_is_exact_when_every_coalition_is_enumerated():
    exact = exact_shapley(interactions, 10)
    got = cell_values(methods.KernelSHAP(segments=M10, baseline=ZEROS, num_samples=2**10 - 2))
    np.testing.assert_allclose(got, exact, rtol=1e-4, atol=1e-4)


def test_kernel_plan_enumerates_the_outer_sizes_at_their_kernel_weights():
    plan = kernel_plan(10, 1000)
    sizes = plan.table.sum(axis=1).astype(int)
    assert sorted(set(sizes)) == [1, 2, 3, 4, 6, 7, 8, 9] and len(np.unique(plan.table, axis=0)) == len(sizes) == 770
    kernel = 9 / np.array([math.comb(10, s) * s * (10 - s) for s in sizes])  # pi(z)
    np.testing.assert_allclose(plan.weights, kernel, rtol=1e-6)
    assert (plan.low, plan.num_sampled) == (5, 230)
    middle = 9 / 25  # the kernel mass of the sampled size 5, shared evenly
    np.testing.assert_allclose(plan.sampled_weight * plan.num_sampled, middle, rtol=1e-6)
    assert kernel_plan(10, 5000).num_sampled == 0 and len(kernel_plan(10, 5000).weights) == 1022


# ---- LIME's surrogate is the closed-form weighted ridge ------------------------------------
def test_lime_equals_the_closed_form_weighted_ridge_on_its_samples():
    method = methods.LIME(segments=SEGMENTS, num_samples=50, kernel_width=0.5, alpha=2.0, chunk_size=7)
    key = jax.random.key(5)
    def squashed(image):
        return jnp.tanh(linear(image))

    out = np.asarray(saliency_jax.attribute(squashed, X[:1], 1, method=method, key=key))[0]
    z = np.stack([np.asarray(lime_coalition(key, i, 9)) for i in range(50)])
    v = np.array([float(squashed(zi[SEGMENTS][..., None] * X[0])[1]) for zi in z])
    pi = np.exp(-((1 - np.sqrt(z.sum(axis=1) / 9)) ** 2) / 0.5**2)  # lime_image's kernel on cosine distance
    design = np.hstack([np.ones((50, 1)), z])
    penalty = np.diag([0.0] + [2.0] * 9)  # unpenalised intercept
    beta = np.linalg.solve(design.T @ (pi[:, None] * design) + penalty, design.T @ (pi * v))[1:]
    got = np.array([out[SEGMENTS == k][0, 0] for k in range(9)])
    np.testing.assert_allclose(got, beta, rtol=1e-3, atol=1e-4)
    assert z[0].all() and 0.3 < z[1:].mean() < 0.7


# ---- RISE ----------------------------------------------------------------------------------
def test_rise_masks_are_smooth_shifted_grids_with_the_keep_rate():
    masks = np.stack([np.asarray(rise_mask(jax.random.fold_in(KEY, i), 24, 24, 4, 0.5)) for i in range(200)])
    assert masks.shape == (200, 24, 24) and masks.min() >= 0 and masks.max() <= 1
    assert abs(masks.mean() - 0.5) < 0.05
    assert len(np.unique(masks[0])) > 2  # bilinear: smooth, not binary


def test_rise_peaks_where_the_score_looks():
    def pixel(image):  # the score is pixel (2, 5): RISE(p) = E[M_q M_p] / p_keep, largest at p = q
        return jnp.stack([image[2, 5, 0], -image[2, 5, 0]])

    out = np.asarray(saliency_jax.attribute(pixel, jnp.ones((1, 12, 12, 3)), 0, method="rise", num_masks=500,
                                            cell=4, score="logit", key=KEY))[0, ..., 0]
    far = np.hypot(*np.mgrid[-2:10, -5:7]) >= 6
    assert out[2, 5] > 1.3 * out[far].mean() and out[2, 5] >= np.quantile(out, 0.9)


# ---- XRAI ----------------------------------------------------------------------------------
def test_xrai_picks_regions_by_density_of_the_new_pixels():
    attr = np.zeros((4, 8), np.float32)
    attr[:, :2], attr[:, 2:4], attr[:, 4:] = 3.0, 2.0, 1.0
    masks = np.zeros((3, 4, 8), bool)
    masks[0, :, :4] = True  # density 2.5, but after mask 2 its new columns 2..3 have density 2
    masks[1, :, 2:] = True  # density 1.33 after mask 2; after mask 0 its new columns 4..7: 1
    masks[2, :, :2] = True  # density 3: chosen first
    out = np.asarray(xrai_regions(jnp.asarray(attr), jnp.asarray(masks), min_pixel_diff=1))
    expected = np.array([3.0, 3, 2, 2, 1, 1, 1, 1])[None].repeat(4, 0)
    np.testing.assert_allclose(out, expected)
    assert top_region(out, 0.5).sum() == 16 and top_region(out, 0.5)[:, :4].all()


def test_xrai_fills_what_no_mask_covers_and_honours_min_pixel_diff():
    attr = jnp.arange(16.0).reshape(4, 4)
    masks = jnp.zeros((2, 4, 4), bool).at[0, :2].set(True).at[1, 3, 3].set(True)
    out = np.asarray(xrai_regions(attr, masks, min_pixel_diff=2))  # mask 1 adds 1 pixel: dropped
    np.testing.assert_allclose(out[:2], np.full((2, 4), 3.5))
    np.testing.assert_allclose(out[2:], np.full((2, 4), np.arange(8.0, 16.0).mean()))


def test_xrai_with_any_base_method():
    out = attribute(methods.XRAI(base=methods.Vanilla(), segments="grid", num_segments=3, min_pixel_diff=1))
    assert out.shape == X.shape and np.isfinite(out).all()


# ---- chunks, keys, batches, no recompilation -------------------------------------------------
CHUNKED = [
    methods.Occlusion(window=3, stride=2),
    methods.FeatureAblation(segments=SEGMENTS),
    methods.RISE(num_masks=10, cell=3),
    methods.ShapleySampling(segments=SEGMENTS, num_permutations=2),
    methods.KernelSHAP(segments=SEGMENTS, num_samples=20),
    methods.LIME(segments=SEGMENTS, num_samples=20),
]


@pytest.mark.parametrize("method", CHUNKED, ids=lambda m: m.label)
def test_result_does_not_depend_on_the_chunk_size(method):
    fn = lambda im: jnp.tanh(linear(im))  # nonlinear: LIME/KernelSHAP are not exact here
    full = np.asarray(saliency_jax.attribute(fn, X, 1, method=method, key=KEY))
    for chunk in (3,):
        out = np.asarray(saliency_jax.attribute(fn, X, 1, method=method.with_values(chunk_size=chunk), key=KEY))
        np.testing.assert_allclose(out, full, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("method", CHUNKED[2:], ids=lambda m: m.label)
def test_same_key_same_result_another_key_another(method):
    fn = lambda im: jnp.tanh(linear(im))
    run = lambda key: np.asarray(saliency_jax.attribute(fn, X, 1, method=method, key=key))
    np.testing.assert_array_equal(run(jax.random.key(3)), run(jax.random.key(3)))
    assert not np.allclose(run(jax.random.key(3)), run(jax.random.key(4)))


def test_per_image_segment_maps_and_targets_match_single_images():
    maps = np.stack([SEGMENTS, np.asarray(grid_segments(H, W, 4))])  # 9 and 4 segments
    out = attribute(methods.FeatureAblation(segments=maps), targets=(0, 1))
    for b in range(2):
        single = attribute(methods.FeatureAblation(segments=maps[b]), X[b:b + 1], targets=(b,))
        np.testing.assert_allclose(out[b], single[0], rtol=1e-5, atol=1e-6)


def test_a_new_baseline_or_segment_map_does_not_recompile():
    attribute(methods.FeatureAblation(segments=SEGMENTS, baseline=BASE))
    before = methods.attribute_batch._cache_size()
    attribute(methods.FeatureAblation(segments=SEGMENTS[::-1].copy(), baseline=2 * BASE))
    attribute(methods.Occlusion(window=3, stride=2, baseline=1.0))
    after_first_occlusion = methods.attribute_batch._cache_size()
    attribute(methods.Occlusion(window=3, stride=2, baseline=BASE))
    assert methods.attribute_batch._cache_size() == after_first_occlusion == before + 1


# ---- bad input: one line ---------------------------------------------------------------------
@pytest.mark.parametrize("method,message", [
    (dict(method="occlusion", window=8), r"occlusion: window 8 is larger than the image \(6x7\)"),
    (dict(method="occlusion", stride=0), r"occlusion: stride must be an integer in \[1, 100000\], got 0"),
    (dict(method="occlusion", window=2, stride=3), "stride 3 is larger than the window 2"),
    (dict(method=methods.FeatureAblation(segments=np.zeros((5, 5), int))),
     r"segments of shape \(5, 5\) do not fit images \(2, 6, 7, 3\)"),
    (dict(method=methods.FeatureAblation(segments=np.zeros((3, H, W), int))),
     r"segments of shape \(3, 6, 7\) do not fit images"),
    (dict(method="kernel_shap", segments=SEGMENTS, num_samples=5),
     r"kernel_shap: num_samples 5 is below what the least-squares solve needs for 9 segments \(at least 10\)"),
    (dict(method="kernel_shap", segments=np.zeros((H, W), int)), "kernel_shap needs at least 2 segments, got 1"),
    (dict(method="rise", cell=9), r"RISE: cell 9 \(grid cells per side\) is more than the image's 6 pixels"),
    (dict(method="rise", p_keep=0.0), r"RISE: p_keep must lie in \(0, 1\], got 0"),
    (dict(method="lime", num_segments=100), "LIME: a 10x10 grid does not fit an image of 6x7 pixels"),
    (dict(method="lime", segments="watershed"), "unknown LIME segments 'watershed'; choose one of grid"),
    (dict(method="occlusion", score="softmax"), "unknown Occlusion score 'softmax'; choose one of logit"),
    (dict(method="occlusion", window=3, stride=2, baseline=np.zeros((2, 2, 3))), r"baseline of shape \(2, 2, 3\) does not broadcast"),
    (dict(method="xrai", segments="slic"), "unknown xrai segments 'slic'"),
])
def test_bad_input_is_a_one_line_error(method, message):
    with pytest.raises(ValueError, match=message) as err:
        saliency_jax.attribute(linear, X, 0, key=KEY, **method)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("segments,message", [
    (-np.ones((H, W), int), r"segment ids must be >= 0 \(every pixel in a segment\); got -1"),
    (np.zeros((0, 0), int), "a segment map has no pixels"),
    (np.zeros((H, W)), "a segment map must hold integer ids, got dtype float64"),
    (np.zeros((1, 1, H, W), int), r"segments must be an int map \[H,W\] or per image \[B,H,W\]"),
])
def test_bad_segment_maps_are_refused_when_the_value_is_built(segments, message):
    with pytest.raises(ValueError, match=message):
        methods.FeatureAblation(segments=segments)


def test_host_segmentations_need_the_images():
    method = methods.KernelSHAP(segments="slic").prepare
    with pytest.raises(ValueError, match=r"segments='slic' are computed from the images: call attribute"):
        method(linear, (H, W, C), images_per_call=1)
