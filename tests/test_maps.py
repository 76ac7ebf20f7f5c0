"""saliency_jax.maps: channel reductions on hand-made gradients, per-map normalisation, jit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saliency_jax import maps

# One pixel row [1,2,3] with chosen signs: pixel 0 = (1, -3, 2), pixel 1 = (-4, 0, 1), ...
GRADS = np.array(
    [[[1.0, -3.0, 2.0], [-4.0, 0.0, 1.0]], [[0.0, 0.0, 0.0], [-1.0, -2.0, -2.0]]],
    np.float32,
)  # [H=2, W=2, C=3]

EXPECTED = {
    "max_abs": [[3, 4], [0, 2]],
    "sum_abs": [[6, 5], [0, 5]],
    "l2": [[np.sqrt(14), np.sqrt(17)], [0, 3]],
    "sum": [[0, -3], [0, -5]],
    "max": [[2, 1], [0, -1]],
    "abs_sum": [[0, 3], [0, 5]],
}


def test_every_reduction_is_tested():
    assert set(EXPECTED) == set(maps.REDUCTIONS)


@pytest.mark.parametrize("reduce", list(EXPECTED))
def test_reduce_channels_known_values(reduce):
    out = maps.reduce_channels(GRADS, reduce=reduce)
    np.testing.assert_allclose(out, EXPECTED[reduce], rtol=1e-6)
    # the same on a batch, each element on its own
    batch = maps.reduce_channels(np.stack([GRADS, -2 * GRADS]), reduce=reduce)
    assert batch.shape == (2, 2, 2)
    np.testing.assert_allclose(batch[0], EXPECTED[reduce], rtol=1e-6)


def test_reduce_channels_integer_input_becomes_float():
    out = maps.reduce_channels(GRADS.astype(np.int32), reduce="sum_abs")
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, EXPECTED["sum_abs"])


def test_saliency_map_of_linear_model_is_normalised_abs_weights():
    w = np.zeros((4, 5, 3), np.float32)
    w[1, 2] = (0.0, -8.0, 3.0)  # strongest pixel: max |w| = 8
    w[3, 0] = (2.0, 0.0, -1.0)  # max |w| = 2
    w[0, 4] = (0.0, 0.0, -4.0)  # max |w| = 4
    logit = lambda x: jnp.sum(jnp.asarray(w) * x)  # noqa: E731 - gradient is w everywhere
    grads = jax.grad(logit)(jnp.ones((4, 5, 3)))

    out = maps.saliency_map(grads, clip_percentile=None)
    expected = np.zeros((4, 5), np.float32)
    expected[1, 2], expected[3, 0], expected[0, 4] = 1.0, 0.25, 0.5
    assert out.shape == (4, 5)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    # a batch of one gives the same map
    np.testing.assert_allclose(maps.saliency_map(grads[None], clip_percentile=None)[0], expected)


def test_saliency_map_signed_reduction_keeps_sign():
    out = maps.saliency_map(GRADS, reduce="sum", clip_percentile=None)
    np.testing.assert_allclose(out, np.array([[0, -3], [0, -5]]) / 5, rtol=1e-6)


def test_saliency_map_unnormalised_is_the_reduction():
    out = maps.saliency_map(GRADS, reduce="l2", normalize=False)
    np.testing.assert_allclose(out, EXPECTED["l2"], rtol=1e-6)


def test_normalize_is_per_batch_element():
    rng = np.random.default_rng(0)
    small = rng.uniform(0, 1, (6, 7)).astype(np.float32)
    big = 1000.0 * rng.uniform(0, 1, (6, 7)).astype(np.float32)
    out = maps.normalize(np.stack([small, big]))
    np.testing.assert_allclose(out.max(axis=(1, 2)), [1.0, 1.0])
    np.testing.assert_allclose(out[0], small / small.max(), rtol=1e-6)
    np.testing.assert_allclose(out[1], big / big.max(), rtol=1e-6)


def test_percentile_clipping_rescues_map_with_outlier():
    m = np.ones((20, 20), np.float32)
    m[3, 4] = 1000.0
    plain = maps.normalize(m)
    assert np.isclose(plain[0, 0], 1e-3)  # the outlier squashes the rest
    clipped = maps.normalize(m, clip_percentile=99.0)
    # 99th percentile of 400 values with linear interpolation: index 395.01 -> 1.0
    assert np.isclose(np.percentile(m, 99), 1.0)
    np.testing.assert_allclose(clipped, np.ones((20, 20)))  # outlier saturates at 1


def test_percentile_matches_numpy():
    m = np.arange(1, 101, dtype=np.float32).reshape(10, 10)
    out = maps.normalize(m, clip_percentile=90.0)
    np.testing.assert_allclose(out, np.clip(m / np.percentile(m, 90.0), 0, 1), rtol=1e-6)


def test_sparse_map_falls_back_to_max_when_percentile_is_zero():
    m = np.zeros((20, 20), np.float32)
    m[5, 5] = 3.0
    out = maps.normalize(m, clip_percentile=99.0)
    assert out[5, 5] == 1.0 and out.sum() == 1.0


def test_signed_normalize():
    m = np.array([[-2.0, 1.0], [0.0, 0.5]], np.float32)
    np.testing.assert_allclose(maps.normalize(m, signed=True), [[-1, 0.5], [0, 0.25]])
    # unsigned: negative values are clipped to 0
    np.testing.assert_allclose(maps.normalize(m), [[0, 1], [0, 0.5]])


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("clip", [None, 99.0])
def test_zero_map_gives_zeros_not_nan(signed, clip):
    out = maps.normalize(jnp.zeros((2, 5, 5)), clip_percentile=clip, signed=signed)
    assert np.isfinite(out).all() and not np.asarray(out).any()
    assert not np.asarray(maps.saliency_map(jnp.zeros((5, 5, 3)))).any()


def test_non_finite_propagates_and_check_finite_raises():
    m = np.ones((2, 4, 4), np.float32)
    m[1, 0, 0] = np.nan
    out = maps.normalize(m, clip_percentile=99.0)
    assert np.isfinite(out[0]).all()  # the other map of the batch is unaffected
    assert np.isnan(out[1]).any()
    with pytest.raises(ValueError, match=r"saliency map contains NaN or Inf values \(1 NaN, 0 Inf of 32"):
        maps.check_finite(m)
    with pytest.raises(ValueError, match="NaN or Inf"):
        maps.check_finite(jnp.array([1.0, jnp.inf]))
    ok = np.ones(3)
    assert maps.check_finite(ok) is ok


def test_jit_does_not_recompile_and_matches_eager():
    fast = jax.jit(maps.saliency_map, static_argnames=("reduce", "normalize", "clip_percentile"))
    g1 = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 8, 3)), jnp.float32)
    g2 = 3.0 * g1 + 1.0
    np.testing.assert_allclose(fast(g1), maps.saliency_map(g1), rtol=1e-6)
    fast(g2)
    assert fast._cache_size() == 1

    norm = jax.jit(functools.partial(maps.normalize, clip_percentile=95.0, signed=True))
    norm(g1[..., 0])
    norm(g2[..., 0])
    assert norm._cache_size() == 1


def test_vmap_over_single_image_equals_batched():
    g = jnp.asarray(np.random.default_rng(2).normal(size=(3, 6, 5, 3)), jnp.float32)
    np.testing.assert_allclose(jax.vmap(maps.saliency_map)(g), maps.saliency_map(g), rtol=1e-6)


def test_bad_inputs_have_clear_messages():
    with pytest.raises(ValueError, match=r"unknown reduce='mean'.*max_abs, sum_abs, l2, sum, max, abs_sum"):
        maps.reduce_channels(GRADS, reduce="mean")
    with pytest.raises(ValueError, match=r"unknown reduce"):
        maps.saliency_map(GRADS, reduce=None)
    with pytest.raises(ValueError, match=r"expected gradients \[H,W,C\] or \[B,H,W,C\], got shape \(4, 5\)"):
        maps.saliency_map(np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"got shape \(1, 2, 4, 5, 3\)"):
        maps.saliency_map(np.zeros((1, 2, 4, 5, 3)))
    with pytest.raises(ValueError, match=r"expected gradients \[\.\.\.,H,W,C\]"):
        maps.reduce_channels(np.zeros((4, 3)))
    for q in (0, 0.0, 101.0, -5, True, "99"):
        with pytest.raises(ValueError, match=r"clip_percentile must be None or a number in \(0, 100\]"):
            maps.normalize(np.ones((3, 3)), clip_percentile=q)
    with pytest.raises(ValueError, match=r"expected non-empty maps \[\.\.\.,H,W\], got shape \(5,\)"):
        maps.normalize(np.ones(5))
    with pytest.raises(ValueError, match="expected real values"):
        maps.reduce_channels(np.ones((2, 2, 3), np.complex64))


def test_relative_saliency_map_subtracts_each_maps_floor():
    floor = np.array([[[5.0], [6.0]], [[7.0], [5.0]]], np.float32)  # [2,2,1]: a map with a floor of 5
    out = maps.saliency_map(np.stack([floor, 2 * floor]), clip_percentile=None, relative=True)
    np.testing.assert_allclose(out, np.array([[[0, 0.5], [1, 0]]] * 2), rtol=1e-6)
    with pytest.raises(ValueError, match="relative=True needs an unsigned reduction"):
        maps.saliency_map(floor, reduce="sum", relative=True)
    from saliency_jax import methods

    assert methods.get("rise").display_relative and not methods.get("occlusion").display_relative
