"""Random image transforms applied before each forward pass (Lucid's "transformation robustness").

Each transform is a frozen (hashable) dataclass called as

    transform(key, image[H,W,C]) -> image[H',W',C]

with output shapes that depend only on input shapes (static under `jit`), all
randomness from the explicit `key`. A tuple of transforms is applied in order
by `apply(transforms, key, image)`, each with its own split of the key.

Fill values are in the model's input space: 0.0 is the training mean (grey).
`standard()` is Lucid's default chain: pad 12, jitter 8, random scale 0.9..1.1 and
rotation -10..10 degrees (one resampling), jitter 4.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.scipy import ndimage

__all__ = ["Pad", "Jitter", "RandomScale", "RandomRotate", "RandomScaleRotate", "apply", "standard", "check_transforms"]


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
        h, w, c = image.shape
        d = self.d
        shift = jax.random.randint(key, (2,), 0, d)
        padded = jnp.pad(image, ((d, d), (d, d), (0, 0)), constant_values=self.value)
        return jax.lax.dynamic_slice(padded, (d - shift[0], d - shift[1], 0), (h, w, c))


@dataclasses.dataclass(frozen=True)
class RandomScale:
    """Zoom about the centre by a factor drawn from `scales`; same size (bilinear, filled)."""

    scales: tuple[float, ...]
    value: float = 0.0

    def __call__(self, key, image):
        s = jax.random.choice(key, jnp.asarray(self.scales, jnp.float32))
        return _affine(image, jnp.eye(2) / s, self.value)


@dataclasses.dataclass(frozen=True)
class RandomRotate:
    """Rotation about the centre by an angle (degrees) drawn from `angles`; same size."""

    angles: tuple[float, ...]
    value: float = 0.0

    def __call__(self, key, image):
        a = jnp.deg2rad(jax.random.choice(key, jnp.asarray(self.angles, jnp.float32)))
        cos, sin = jnp.cos(a), jnp.sin(a)
        return _affine(image, jnp.array([[cos, -sin], [sin, cos]]), self.value)


@dataclasses.dataclass(frozen=True)
class RandomScaleRotate:
    """`RandomScale` then `RandomRotate` in one bilinear resampling (one interpolation, not two)."""

    scales: tuple[float, ...]
    angles: tuple[float, ...]
    value: float = 0.0

    def __call__(self, key, image):
        scale_key, angle_key = jax.random.split(key)
        s = jax.random.choice(scale_key, jnp.asarray(self.scales, jnp.float32))
        a = jnp.deg2rad(jax.random.choice(angle_key, jnp.asarray(self.angles, jnp.float32)))
        cos, sin = jnp.cos(a), jnp.sin(a)
        return _affine(image, jnp.array([[cos, -sin], [sin, cos]]) / s, self.value)


def _affine(image, inverse, value):
    """Samples image at centre + inverse @ (p - centre) for each output pixel p (bilinear)."""
    h, w, _ = image.shape
    centre = jnp.array([(h - 1) / 2, (w - 1) / 2], jnp.float32)
    grid = jnp.stack(jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                                  indexing="ij"), axis=-1)
    coords = jnp.einsum("ij,hwj->ihw", inverse, grid - centre) + centre[:, None, None]
    sample = lambda channel: ndimage.map_coordinates(channel, list(coords), order=1, mode="constant", cval=value)
    return jax.vmap(sample, in_axes=-1, out_axes=-1)(image)


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

