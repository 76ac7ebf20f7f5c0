"""Convolution primitives written for speed on XLA:CPU and exact on every backend.

XLA's CPU backend runs a grouped (depthwise) `conv_general_dilated` about 20x
slower than the same arithmetic written as k*k shifted multiply-adds, and
autodiff of the shift-add turns each strided slice into a pad-and-scatter.
So on CPU the depthwise convolution is a shift-add whose input cotangent is
itself a shift-add (the transposed correlation), under a `jax.custom_vjp`.
On GPU/TPU the native grouped convolution is used (`lax.platform_dependent`
picks per backend at lowering time). 1x1 convolutions are matrix products, and
dense convolutions with few input channels (the stem) are im2col + a matrix
product on CPU.

All functions take NHWC activations and TensorFlow "SAME" padding.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (low, high) for one spatial axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x, kernel: int, stride: int):
    """Zero-pads [B,H,W,C] for a "SAME" k x k convolution with the given stride."""
    ph = same_padding(x.shape[1], kernel, stride)
    pw = same_padding(x.shape[2], kernel, stride)
    return jnp.pad(x, ((0, 0), ph, pw, (0, 0))), ph, pw


def _window(xp, i: int, j: int, out_h: int, out_w: int, stride: int):
    """The strided window of `xp` that meets kernel tap (i, j): [B,out_h,out_w,C]."""
    return lax.slice(
        xp,
        (0, i, j, 0),
        (xp.shape[0], i + stride * (out_h - 1) + 1, j + stride * (out_w - 1) + 1, xp.shape[3]),
        (1, stride, stride, 1),
    )


def _shift_add(xp, w, stride: int, out_h: int, out_w: int):
    """sum_ij window(xp, i, j) * w[i, j]: a depthwise correlation, [B,out_h,out_w,C]."""
    k = w.shape[0]
    out = None
    for i in range(k):
        for j in range(k):
            term = _window(xp, i, j, out_h, out_w, stride) * w[i, j]
            out = term if out is None else out + term
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise_shift_add(x, w, stride: int):
    xp, _, _ = _pad_same(x, w.shape[0], stride)
    return _shift_add(xp, w, stride, -(-x.shape[1] // stride), -(-x.shape[2] // stride))


def _depthwise_fwd(x, w, stride):
    return _depthwise_shift_add(x, w, stride), (x, w)


def _depthwise_bwd(stride, residuals, g):
    x, w = residuals
    k = w.shape[0]
    xp, ph, pw = _pad_same(x, k, stride)
    out_h, out_w = g.shape[1], g.shape[2]
    # Input cotangent: scatter g through every tap == correlate the stride-dilated g
    # (padded by k-1) with the flipped kernel, then crop back to x's padded frame.
    gd = lax.pad(
        g,
        jnp.array(0, g.dtype),
        (
            (0, 0, 0),
            (k - 1, xp.shape[1] - (stride * (out_h - 1) + 1), stride - 1),
            (k - 1, xp.shape[2] - (stride * (out_w - 1) + 1), stride - 1),
            (0, 0, 0),
        ),
    )
    dxp = _shift_add(gd, w[::-1, ::-1], 1, xp.shape[1], xp.shape[2])
    dx = dxp[:, ph[0] : ph[0] + x.shape[1], pw[0] : pw[0] + x.shape[2], :]
    # Kernel cotangent: each tap's window of x against g, summed over batch and space.
    dw = jnp.stack(
        [
            jnp.stack(
                [jnp.sum(_window(xp, i, j, out_h, out_w, stride) * g, axis=(0, 1, 2)) for j in range(k)]
            )
            for i in range(k)
        ]
    )
    return dx, dw.astype(w.dtype)


_depthwise_shift_add.defvjp(_depthwise_fwd, _depthwise_bwd)

# Backward functions of the `custom_vjp` operations here that are linear in their first operand (the
# activations) for fixed weights: relevance rules (saliency_jax.attribution.relevance) treat such an
# operation as one convolution layer, re-evaluating it with rule-modified inputs and weights.
LINEAR_VJP_BACKWARDS = (_depthwise_bwd,)


def _depthwise_native(x, w, stride: int):
    """Depthwise convolution as XLA's grouped convolution (fast on GPU/TPU)."""
    k, c = w.shape[0], w.shape[-1]
    return _conv_native(x, w.reshape(k, k, 1, c), stride, groups=c)


def depthwise_conv(x, w, *, stride: int = 1, impl: str = "auto"):
    """Depthwise k x k convolution with "SAME" padding.

    Args:
      x: activations [B,H,W,C].
      w: kernel [k,k,C].
      stride: spatial stride.
      impl: "shift_add" (fast on CPU), "native" (grouped conv), or "auto"
        (shift-add on CPU, native elsewhere, chosen when lowering).

    Returns:
      [B, ceil(H/stride), ceil(W/stride), C]. Both implementations agree to
      float rounding, and both differentiate w.r.t. `x` and `w`.
    """
    return _by_impl(impl, "shift_add", _depthwise_shift_add, _depthwise_native, x, w, stride)


def pointwise_conv(x, w):
    """1x1 convolution as a matrix product: [B,H,W,Cin] x [Cin,Cout] -> [B,H,W,Cout]."""
    return jnp.einsum("bhwc,cd->bhwd", x, w)


# Dense convolutions with at most this many input columns (k*k*Cin) run as im2col + one matrix
# product on CPU: the EfficientNet stem (3x3x3 = 27) takes 20 ms instead of 38 ms forward and
# 16 ms instead of 21 ms for its input cotangent at batch 32 (XLA:CPU's direct convolution is
# slow for 3 input channels). Wider convolutions keep the native one (im2col copies k*k times).
IM2COL_MAX_COLUMNS = 32


def _conv_native(x, w, stride: int, groups: int = 1):
    k = w.shape[0]
    return lax.conv_general_dilated(
        x,
        w,
        window_strides=(stride, stride),
        padding=(same_padding(x.shape[1], k, stride), same_padding(x.shape[2], k, stride)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


def _conv_im2col(x, w, stride: int):
    """The k*k strided windows side by side [B,H',W',k*k*Cin], times the kernel [k*k*Cin,Cout]."""
    k = w.shape[0]
    xp, _, _ = _pad_same(x, k, stride)
    out_h, out_w = -(-x.shape[1] // stride), -(-x.shape[2] // stride)
    cols = jnp.concatenate([_window(xp, i, j, out_h, out_w, stride) for i in range(k) for j in range(k)], axis=-1)
    return jnp.einsum("bhwk,kd->bhwd", cols, w.reshape(-1, w.shape[-1]))


def conv(x, w, *, stride: int = 1, impl: str = "auto"):
    """Dense k x k convolution with "SAME" padding: [B,H,W,Cin] x [k,k,Cin,Cout] -> [B,H',W',Cout].

    impl: "native" (XLA's convolution), "im2col" (windows + one matrix product), or
    "auto": im2col on CPU when k*k*Cin <= IM2COL_MAX_COLUMNS, native otherwise.
    """
    if impl == "auto" and w.shape[0] * w.shape[1] * w.shape[2] > IM2COL_MAX_COLUMNS:
        impl = "native"
    return _by_impl(impl, "im2col", _conv_im2col, _conv_native, x, w, stride)


def _by_impl(impl: str, cpu_name: str, cpu_fn, native_fn, x, w, stride: int):
    """impl `cpu_name` -> cpu_fn, "native" -> native_fn, "auto" -> cpu_fn on CPU and native_fn
    elsewhere (`lax.platform_dependent`, decided when lowering)."""
    if impl == cpu_name:
        return cpu_fn(x, w, stride)
    if impl == "native":
        return native_fn(x, w, stride)
    if impl != "auto":
        raise ValueError(f"impl must be 'auto', '{cpu_name}' or 'native', got {impl!r}")
    return lax.platform_dependent(
        x, w, cpu=lambda x, w: cpu_fn(x, w, stride), default=lambda x, w: native_fn(x, w, stride)
    )
