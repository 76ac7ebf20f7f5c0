"""Random image transforms applied before each forward pass (Lucid's "transformation robustness").

Each transform is a frozen (hashable) dataclass called as

    transform(key, image[H,W,C]) -> image[H',W',C]

with output shapes that depend only on input shapes (static under `jit`), all
randomness from the explicit `key`. A tuple of transforms is applied in order
by `apply(transforms, key, image)`, each with its own split of the key.

Fill values are in the model's input space: 0.0 is the training mean (grey).
`standard()` is Lucid's default chain: pad 12, jitter 8, random scale 0.9..1.1 and
rotation -10..10 degrees (one resampling), jitter 4.

Jitter and the bilinear warp carry their own exact adjoints (a shift back, and a gather
over the few outputs that read each input pixel): autodiff's transposes of their
vmapped gathers are scatters, which XLA:CPU runs on one thread. Tests pin both
against autodiff of the plain formulation (`jax.scipy.ndimage.map_coordinates`).
Being `jax.custom_vjp` functions, they support reverse-mode differentiation (what
gradient ascent uses) but not forward mode (`jax.jvp`, `jax.jacfwd`).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["Pad", "Jitter", "RandomScale", "RandomRotate", "RandomScaleRotate", "CenterCrop", "apply", "standard",
           "check_transforms"]


@dataclasses.dataclass(frozen=True)
class Pad:
    """Pads `width` pixels on every side with the constant `value` (output H+2w, W+2w)."""

    width: int
    value: float = 0.0

    def __call__(self, key, image):
        w = self.width
        return jnp.pad(image, ((w, w), (w, w), (0, 0)), constant_values=self.value)


@dataclasses.dataclass(frozen=True)
class Jitter:
    """Random translation by (dy, dx), each uniform in {0, ..., d-1} (Lucent); same size, filled."""

    d: int
    value: float = 0.0

    def __call__(self, key, image):
        shift = jax.random.randint(key, (2,), 0, self.d)
        return _shift(image, shift, self.d, self.value)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _shift(image, shift, d, value):
    """out[p] = image[p - shift] where that is inside the image, else `value`; 0 <= shift < d."""
    h, w, c = image.shape
    padded = jnp.pad(image, ((d, d), (d, d), (0, 0)), constant_values=value)
    return lax.dynamic_slice(padded, (d - shift[0], d - shift[1], 0), (h, w, c))


def _shift_fwd(image, shift, d, value):
    return _shift(image, shift, d, value), shift


def _shift_bwd(d, value, shift, g):
    """The adjoint shifts back: grad[j] = g[j + shift] (0 outside). Autodiff's own transpose of the
    vmapped slice is a scatter that XLA:CPU turns into an in-place update on one thread, and fuses
    the producers of `g` (the warp's adjoint, the stem's) into that loop: with this adjoint a lucid
    step of 32 targets at 248^2 takes 836 instead of 916 ms on the reference CPU."""
    h, w, c = g.shape
    padded = jnp.pad(g, ((d, d), (d, d), (0, 0)))
    no_grad = np.zeros(shift.shape, jax.dtypes.float0)  # the integer shift has no cotangent
    return lax.dynamic_slice(padded, (d + shift[0], d + shift[1], 0), (h, w, c)), no_grad


_shift.defvjp(_shift_fwd, _shift_bwd)


@dataclasses.dataclass(frozen=True)
class RandomScale:
    """Zoom about the centre by a factor drawn from `scales`; same size (bilinear, filled)."""

    scales: tuple[float, ...]
    value: float = 0.0

    def __post_init__(self):
        _check_scales(self.scales)

    def __call__(self, key, image):
        s = jax.random.choice(key, jnp.asarray(self.scales, jnp.float32))
        return _affine(image, jnp.eye(2) / s, self.value, reach=max(self.scales))


@dataclasses.dataclass(frozen=True)
class RandomRotate:
    """Rotation about the centre by an angle (degrees) drawn from `angles`; same size."""

    angles: tuple[float, ...]
    value: float = 0.0

    def __call__(self, key, image):
        a = jnp.deg2rad(jax.random.choice(key, jnp.asarray(self.angles, jnp.float32)))
        cos, sin = jnp.cos(a), jnp.sin(a)
        return _affine(image, jnp.array([[cos, -sin], [sin, cos]]), self.value, reach=_rotation_reach(self.angles))


@dataclasses.dataclass(frozen=True)
class RandomScaleRotate:
    """`RandomScale` then `RandomRotate` in one bilinear resampling (one interpolation, not two)."""

    scales: tuple[float, ...]
    angles: tuple[float, ...]
    value: float = 0.0

    def __post_init__(self):
        _check_scales(self.scales)

    def __call__(self, key, image):
        scale_key, angle_key = jax.random.split(key)
        s = jax.random.choice(scale_key, jnp.asarray(self.scales, jnp.float32))
        a = jnp.deg2rad(jax.random.choice(angle_key, jnp.asarray(self.angles, jnp.float32)))
        cos, sin = jnp.cos(a), jnp.sin(a)
        reach = max(self.scales) * _rotation_reach(self.angles)
        return _affine(image, jnp.array([[cos, -sin], [sin, cos]]) / s, self.value, reach=reach)


def _check_scales(scales):
    if not scales or not all(s > 0 for s in scales):
        raise ValueError(f"scales must be positive numbers, got {scales!r}")


def _rotation_reach(angles) -> float:
    """max |cos a| + |sin a| over the angles (degrees): the row-sum norm of their rotations."""
    return max(abs(math.cos(math.radians(a))) + abs(math.sin(math.radians(a))) for a in angles)


# ---- bilinear affine resampling, with a gather-based adjoint ------------------------------------
def _affine(image, inverse, value, *, reach: float):
    """Output pixel p samples `image` [H,W,C] at centre + inverse @ (p - centre), bilinearly; corners
    outside the image read `value` (as `jax.scipy.ndimage.map_coordinates(order=1, mode="constant")`).

    `reach` (static) bounds the row-sum norm of inverse^-1, i.e. how far apart, in output pixels,
    two outputs can be that read the same input pixel. The transform's parameters are random draws
    and are not differentiated (stop_gradient).
    """
    return _bilinear(image, lax.stop_gradient(inverse), value, float(reach))


def _positions(shape, matrix):
    """[2,H,W]: centre + matrix @ (p - centre) for every pixel p of an H x W grid."""
    h, w = shape
    centre = jnp.array([(h - 1) / 2, (w - 1) / 2], jnp.float32)
    grid = jnp.stack(jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                                  indexing="ij"))
    return jnp.einsum("ij,jhw->ihw", matrix, grid - centre[:, None, None]) + centre[:, None, None]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _bilinear(image, inverse, value, reach):
    h, w, _ = image.shape
    qy, qx = _positions((h, w), inverse)
    y0, x0 = jnp.floor(qy), jnp.floor(qx)
    fy, fx = qy - y0, qx - x0
    y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
    out = jnp.zeros_like(image)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            y, x = y0 + dy, x0 + dx
            inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
            corner = image[jnp.clip(y, 0, h - 1), jnp.clip(x, 0, w - 1)]
            out = out + (wy * wx)[..., None] * jnp.where(inside[..., None], corner, value)
    return out


def _bilinear_fwd(image, inverse, value, reach):
    return _bilinear(image, inverse, value, reach), inverse


def _bilinear_bwd(value, reach, inverse, g):
    """The exact adjoint as a gather: input pixel j collects g[p] * tent(q(p) - j) from the outputs
    p near inverse^-1 (j - centre) + centre, an n x n window (n = floor(2 reach) + 1) that holds every
    p with |q(p) - j| < 1. Autodiff's transpose of the gathers would be a scatter-add, which XLA:CPU
    runs on one thread: 32 images of 248^2, 30 -> 14 ms."""
    h, w, _ = g.shape
    qy, qx = _positions((h, w), inverse)
    (a, b), (c, d) = inverse
    forward = jnp.array([[d, -b], [-c, a]]) / (a * d - b * c)
    centre_y, centre_x = _positions((h, w), forward)
    jy, jx = jnp.arange(h, dtype=jnp.float32)[:, None], jnp.arange(w, dtype=jnp.float32)[None, :]
    top, left = jnp.ceil(centre_y - reach).astype(jnp.int32), jnp.ceil(centre_x - reach).astype(jnp.int32)
    n = math.floor(2 * reach) + 1
    grad = jnp.zeros_like(g)
    for dy in range(n):
        for dx in range(n):
            y, x = top + dy, left + dx
            inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
            y, x = jnp.clip(y, 0, h - 1), jnp.clip(x, 0, w - 1)
            tent = jnp.maximum(0.0, 1 - jnp.abs(qy[y, x] - jy)) * jnp.maximum(0.0, 1 - jnp.abs(qx[y, x] - jx))
            grad = grad + jnp.where(inside, tent, 0.0)[..., None] * g[y, x]
    return grad, jnp.zeros_like(inverse)


_bilinear.defvjp(_bilinear_fwd, _bilinear_bwd)


@dataclasses.dataclass(frozen=True)
class CenterCrop:
    """The central `height` x `width` pixels (output [height,width,C]): brings a padded, transformed
    image back to the one size a fixed-size model (flatten + dense) runs at."""

    height: int
    width: int

    def __call__(self, key, image):
        h, w = image.shape[:2]
        if h < self.height or w < self.width:
            raise ValueError(f"CenterCrop({self.height}, {self.width}) of a smaller image {h}x{w}")
        top, left = (h - self.height) // 2, (w - self.width) // 2
        return image[top:top + self.height, left:left + self.width]


def apply(transforms, key, image):
    """Applies a tuple of transforms in order, transform i with `fold_in(key, i)`."""
    for i, transform in enumerate(transforms):
        image = transform(jax.random.fold_in(key, i), image)
    return image


def standard(value: float = 0.0) -> tuple:
    """Lucid's `standard_transforms`, filling with `value` (model space).

    Pad 12, jitter 8, scale by one of 0.9, 0.92, ..., 1.1 and rotate by one of -10..10
    degrees (0 weighted 6x), jitter 4. Scale and rotation share one resampling
    (`RandomScaleRotate`); the output is 24 pixels larger than the input each way.
    """
    return (
        Pad(12, value),
        Jitter(8, value),
        RandomScaleRotate(tuple(1 + (i - 5) / 50 for i in range(11)),
                          tuple(float(a) for a in list(range(-10, 11)) + 5 * [0]), value),
        Jitter(4, value),
    )


def check_transforms(transforms) -> tuple:
    """The transforms as a tuple of callables; ValueError otherwise."""
    transforms = tuple(transforms)
    for t in transforms:
        if not callable(t):
            raise ValueError(f"transforms must be callables (key, image) -> image, got {t!r}")
        try:
            hash(t)
        except TypeError:
            raise ValueError(f"transforms must be hashable (static under jit), got {t!r}") from None
    return transforms

