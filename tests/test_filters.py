"""The one Gaussian kernel and separable filter: radius rule, normalisation, edges, parity with SciPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saliency_jax.filters import gaussian_filter, gaussian_kernel, gaussian_radius


@pytest.mark.parametrize("sigma,truncate,taps", [(5.0, 3.0, 31), (1.5, 3.5, 11), (0.5, 3.0, 5), (0.7, 3.0, 5),
                                                 (1.0, 3.0, 7), (0.1, 3.0, 1)])
def test_radius_is_truncate_sigma_rounded_half_up(sigma, truncate, taps):
    kernel = gaussian_kernel(sigma, truncate=truncate)
    assert len(kernel) == taps == 2 * gaussian_radius(sigma, truncate) + 1
    np.testing.assert_allclose(kernel.sum(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(kernel, kernel[::-1])
    assert kernel.argmax() == taps // 2


@pytest.mark.parametrize("sigma", [0.7, 1.5, 5.0])
def test_mirror_edges_match_scipy_reflect(sigma):
    ndimage = pytest.importorskip("scipy.ndimage")
    x = np.random.default_rng(0).normal(size=(2, 9, 12, 3)).astype(np.float32)
    expected = ndimage.gaussian_filter(x.astype(np.float64), (0, sigma, sigma, 0), mode="reflect", truncate=3.0)
    np.testing.assert_allclose(gaussian_filter(x, sigma), expected, atol=1e-5)
    np.testing.assert_allclose(gaussian_filter(x[..., 0], sigma, axes=(-2, -1)), expected[..., 0], atol=1e-5)


def test_valid_edges_are_the_interior_and_constants_stay_constant():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(20, 17)), jnp.float32)
    full = gaussian_filter(x, 1.5, axes=(0, 1), truncate=3.5)
    valid = gaussian_filter(x, 1.5, axes=(0, 1), truncate=3.5, edges="valid")
    assert valid.shape == (10, 7)
    np.testing.assert_allclose(valid, full[5:-5, 5:-5], atol=1e-6)
    np.testing.assert_allclose(gaussian_filter(jnp.full((9, 7, 3), 2.5), 1.5), 2.5, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(lambda v: gaussian_filter(v, 1.0, axes=(0, 1)))(x),
                               gaussian_filter(x, 1.0, axes=(0, 1)), atol=1e-6)


def test_bad_input():
    with pytest.raises(ValueError, match="sigma and truncate must be positive"):
        gaussian_kernel(0.0)
    with pytest.raises(ValueError, match="edges must be one of mirror, valid"):
        gaussian_filter(jnp.ones((9, 9)), 1.0, axes=(0, 1), edges="wrap")
    with pytest.raises(ValueError, match="shorter than the 11-tap kernel"):
        gaussian_filter(jnp.ones((8, 30)), 1.5, axes=(0, 1), truncate=3.5, edges="valid")
