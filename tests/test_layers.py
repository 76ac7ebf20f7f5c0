"""The fast convolution formulations agree with XLA's native ops and with their true gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from saliency_jax.models import layers


@pytest.mark.parametrize(
    "size,kernel,stride,expected",
    [(224, 3, 2, (0, 1)), (7, 5, 1, (2, 2)), (112, 3, 1, (1, 1)), (28, 5, 2, (1, 2)), (1, 3, 2, (1, 1))],
)
def test_same_padding_matches_tensorflow(size, kernel, stride, expected):
    assert layers.same_padding(size, kernel, stride) == expected
    lo, hi = expected
    assert (size + lo + hi - kernel) // stride + 1 == -(-size // stride)


def _numpy_depthwise(x, w, stride):
    """Direct loop definition of a "SAME" depthwise correlation (reference)."""
    k = w.shape[0]
    ph, pw = layers.same_padding(x.shape[1], k, stride), layers.same_padding(x.shape[2], k, stride)
    xp = np.pad(x, ((0, 0), ph, pw, (0, 0)))
    oh, ow = -(-x.shape[1] // stride), -(-x.shape[2] // stride)
    out = np.zeros((x.shape[0], oh, ow, x.shape[3]), np.float64)
    for a in range(oh):
        for b in range(ow):
            patch = xp[:, a * stride : a * stride + k, b * stride : b * stride + k, :]
            out[:, a, b, :] = np.einsum("bijc,ijc->bc", patch, w)
    return out


CASES = [(k, s, h) for k in (3, 5) for s in (1, 2) for h in (7, 8)]


@pytest.mark.parametrize("kernel,stride,size", CASES)
@pytest.mark.parametrize("impl", ["shift_add", "native", "auto"])
def test_depthwise_forward_matches_reference(kernel, stride, size, impl):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, size, size + 1, 4))
    w = rng.normal(size=(kernel, kernel, 4))
    got = layers.depthwise_conv(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32), stride=stride, impl=impl)
    np.testing.assert_allclose(got, _numpy_depthwise(x, w, stride), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel,stride,size", CASES)
def test_depthwise_custom_vjp_equals_autodiff_of_native(kernel, stride, size):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, size, size, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, 3)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(2, -(-size // stride), -(-size // stride), 3)), jnp.float32)

    def vjp(impl):
        _, pullback = jax.vjp(lambda x, w: layers.depthwise_conv(x, w, stride=stride, impl=impl), x, w)
        return pullback(g)

    (dx, dw), (dx_ref, dw_ref) = vjp("shift_add"), vjp("native")
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel,stride", [(3, 1), (3, 2), (5, 2)])
def test_depthwise_gradients_are_true_gradients(kernel, stride):
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        x = jnp.asarray(rng.normal(size=(1, 6, 5, 2)))
        w = jnp.asarray(rng.normal(size=(kernel, kernel, 2)))
        f = lambda x, w: layers.depthwise_conv(x, w, stride=stride, impl="shift_add")
        check_grads(f, (x, w), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_depthwise_under_jit_and_vmap():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(5, 1, 9, 9, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 3)), jnp.float32)
    f = lambda x: jnp.sum(layers.depthwise_conv(x, w, stride=2, impl="shift_add") ** 2)
    batched = jax.jit(jax.vmap(jax.grad(f)))(x)
    looped = np.stack([jax.grad(f)(xi) for xi in x])
    np.testing.assert_allclose(batched, looped, rtol=1e-5, atol=1e-5)


def test_depthwise_rejects_unknown_impl():
    with pytest.raises(ValueError, match="impl must be"):
        layers.depthwise_conv(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2)), impl="fast")


def test_pointwise_is_a_one_by_one_conv():
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(2, 5, 6, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 7)), jnp.float32)
    np.testing.assert_allclose(layers.pointwise_conv(x, w), layers.conv(x, w[None, None], impl="native"),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k,stride,size", [(3, 2, 224), (3, 2, 9), (3, 1, 8), (5, 2, 11), (1, 1, 5)])
def test_im2col_conv_equals_native_conv_and_its_gradients(k, stride, size):
    rng = np.random.default_rng(k * 100 + stride * 10 + size)
    batch = 2 if size > 100 else 3
    x = jnp.asarray(rng.normal(size=(batch, size, size + 1, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, 3, 4)), jnp.float32)
    native = layers.conv(x, w, stride=stride, impl="native")
    im2col = layers.conv(x, w, stride=stride, impl="im2col")
    assert im2col.shape == native.shape == (batch, -(-size // stride), -(-(size + 1) // stride), 4)
    np.testing.assert_allclose(im2col, native, rtol=1e-5, atol=1e-4)
    g = jnp.asarray(rng.normal(size=native.shape), jnp.float32)
    cotangents = {impl: jax.vjp(functools.partial(layers.conv, stride=stride, impl=impl), x, w)[1](g)
                  for impl in ("native", "im2col")}
    np.testing.assert_allclose(cotangents["im2col"][0], cotangents["native"][0], rtol=1e-5, atol=1e-4)  # d/dx
    np.testing.assert_allclose(cotangents["im2col"][1], cotangents["native"][1], rtol=1e-5, atol=1e-3)  # d/dw
    np.testing.assert_allclose(layers.conv(x, w, stride=stride), native, rtol=1e-5, atol=1e-4)  # "auto"


def test_conv_rejects_unknown_impl():
    with pytest.raises(ValueError, match="impl must be 'auto', 'im2col' or 'native'"):
        layers.conv(jnp.zeros((1, 4, 4, 3)), jnp.zeros((3, 3, 3, 2)), impl="winograd")
