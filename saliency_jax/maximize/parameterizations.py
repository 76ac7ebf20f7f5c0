"""Image parameterisations: what the optimiser actually moves, and how it becomes an image.

A parameterisation is a frozen (hashable) dataclass with two pure methods:

    params = p.init(key, shape)      # shape = (H, W, C) of the image
    image  = p(params)               # [H,W,C] in the model's input space

- `Pixels`: the image itself (the paper's setting); start from zero, which in the
  model's input space is the training mean (uint8 127 for EfficientNet-Lite).
- `LucidImage`: Lucid's parameterisation (Olah et al. 2017, "Feature Visualization"):
  a Fourier spectrum scaled by 1/frequency (`fft=True`), in a decorrelated colour
  space (`decorrelate=True`), squashed by a sigmoid into the valid pixel box
  [low, high] (per channel, model space; `pixel_box(model)` gives it).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Pixels", "LucidImage", "pixel_box"]

# Lucid's square root of the ImageNet colour correlation (columns: decorrelated -> RGB).
_COLOR_CORRELATION_SVD_SQRT = np.array(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], np.float32
)
_COLOR_CORRELATION = _COLOR_CORRELATION_SVD_SQRT / np.max(np.linalg.norm(_COLOR_CORRELATION_SVD_SQRT, axis=0))


def pixel_box(model) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(low, high) per channel: uint8 0 and 255 mapped into the model's input space."""
    mean, std = np.float32(model.mean), np.float32(model.std)
    low, high = (0.0 - mean) / std, (255.0 - mean) / std
    return tuple(map(float, np.atleast_1d(low))), tuple(map(float, np.atleast_1d(high)))


@dataclasses.dataclass(frozen=True)
class Pixels:
    """The image is the parameter.

    Attributes:
      init_scale: std of the Gaussian start (model space); 0 gives the zero image,
        the training mean (the paper's start).
    """

    init_scale: float = 0.0

    def init(self, key, shape):
        if self.init_scale == 0:
            return jnp.zeros(shape, jnp.float32)
        return self.init_scale * jax.random.normal(key, shape, jnp.float32)

    def __call__(self, params):
        return params


@dataclasses.dataclass(frozen=True)
class LucidImage:
    """Lucid's image: Fourier and/or decorrelated-colour parameters, sigmoid into [low, high].

    Attributes:
      low, high: per-channel (or one) bounds of the valid pixel range in model space.
      fft: parameterise by the 2-D real spectrum [2,H,W/2+1,C] (W even), scaled by
        1/max(f, 1/max(H,W))^decay_power.
      decorrelate: mix channels with the (normalised) ImageNet colour-correlation square root.
      decay_power: spectrum scaling exponent (Lucid: 1).
      init_scale: std of the Gaussian start of the parameters (Lucid: 0.01).
    """

    low: tuple[float, ...]
    high: tuple[float, ...]
    fft: bool = True
    decorrelate: bool = True
    decay_power: float = 1.0
    init_scale: float = 0.01

    def init(self, key, shape):
        h, w, c = shape
        if self.decorrelate and c != 3:
            raise ValueError(f"decorrelated colour needs 3 channels, got {c}")
        if self.fft:
            if w % 2:
                raise ValueError(f"the Fourier parameterisation needs an even image width, got {w}")
            return self.init_scale * jax.random.normal(key, (2, h, w // 2 + 1, c), jnp.float32)
        return self.init_scale * jax.random.normal(key, shape, jnp.float32)

    def __call__(self, params):
        if self.fft:
            h, wf, _ = params.shape[1:]
            image = self._spectrum_image(params, h, 2 * (wf - 1))
        else:
            image = params
        if self.decorrelate:
            image = image @ jnp.asarray(_COLOR_CORRELATION.T)
        low, high = jnp.asarray(self.low, jnp.float32), jnp.asarray(self.high, jnp.float32)
        return low + (high - low) * jax.nn.sigmoid(image)

    def _spectrum_image(self, params, h, w):
        freqs = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.rfftfreq(w)[None, :] ** 2)
        scale = (1.0 / np.maximum(freqs, 1.0 / max(h, w)) ** self.decay_power).astype(np.float32)
        spectrum = jax.lax.complex(params[0], params[1]) * jnp.asarray(scale)[:, :, None]
        image = jnp.fft.irfft2(spectrum, s=(h, w), axes=(0, 1), norm="ortho")
        return image / 4.0  # Lucid's "magic" normalisation
