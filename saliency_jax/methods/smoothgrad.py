"""SmoothGrad (Smilkov et al. 2017), its squared variant, and VarGrad (Adebayo et al. 2018).

Average a base attribution over noisy copies of the image,
x + N(0, sigma^2) with sigma = noise_scale * (max(x) - min(x)):
  "mean":    E[g]      (SmoothGrad)
  "squared": E[g^2]    (SmoothGrad-squared)
  "var":     E[g^2] - E[g]^2   (VarGrad)
The base is any method value (Captum's NoiseTunnel): the gradient by default,
`SmoothGrad(base=GuidedBackprop())`, `SmoothGrad(base=IntegratedGradients(num_steps=8))`.
Noise sample i is drawn from `jax.random.fold_in(key, i)`: the same key gives
the same map, whatever the chunk size or the batch the image sits in.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from saliency_jax.attribution.gradients import class_gradient, resolve_target
from saliency_jax.attribution.sampling import sample_sum
from saliency_jax.methods.backprop_rules import GuidedBackprop
from saliency_jax.methods.base import Method, logit_fn_of, register
from saliency_jax.methods.gradient import Vanilla
from saliency_jax.validate import one_of, optional_positive_int, positive_int, real

VARIANTS = ("mean", "squared", "var")
DEFAULT_NUM_SAMPLES = 25


def noise_average(attribution, x, key, *, num_samples: int, noise_scale, variant: str, chunk_size=None):
    """The `variant` statistic of `attribution(x + noise_i, i)` over i < num_samples noisy copies: [H,W,C]."""
    sigma = noise_scale * (jnp.max(x) - jnp.min(x))

    def sample(i):
        noise = sigma * jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
        g = attribution(x + noise, i)
        return g, g * g

    total, total_sq = sample_sum(sample, num_samples, chunk_size=chunk_size)
    mean, mean_sq = total / num_samples, total_sq / num_samples
    if variant == "mean":
        return mean
    if variant == "squared":
        return mean_sq
    return jnp.maximum(mean_sq - mean * mean, 0.0)


def smoothgrad(logit_fn, x, target, *, key, num_samples: int = DEFAULT_NUM_SAMPLES, noise_scale: float = 0.15,
               variant: str = "mean", chunk_size: int | None = None, gradient_fn=class_gradient):
    """SmoothGrad of `gradient_fn` for one image (the functional form of `SmoothGrad`).

    Args:
      logit_fn: `[H,W,C] -> [K]` unnormalised scores.
      x: one image [H,W,C] in model space.
      target: int32 class index, or `TOP1` (-1; resolved on the clean image).
      key: a `jax.random` key.
      num_samples: noisy copies (static).
      noise_scale: noise std as a fraction of the image's value range (PAIR's stdev_spread).
      variant: "mean" | "squared" | "var".
      chunk_size: noisy copies evaluated at once (static); None = all.
      gradient_fn: `(logit_fn, x, target) -> [H,W,C]`, e.g. a guided-backprop gradient.

    Returns:
      [H,W,C] attribution.
    """
    one_of("SmoothGrad variant", variant, VARIANTS)
    target = resolve_target(logit_fn, x, target)
    return noise_average(lambda xi, i: gradient_fn(logit_fn, xi, target), x, key, num_samples=num_samples,
                         noise_scale=noise_scale, variant=variant, chunk_size=chunk_size)


@register("smoothgrad")
@dataclasses.dataclass(frozen=True)
class SmoothGrad(Method):
    """The `variant` of `base` over `num_samples` noisy copies (random: needs a key).

    `noise_scale` is traced (changing it does not recompile); `num_samples`,
    `variant`, `chunk_size` and the base are static.
    """

    num_samples: int = DEFAULT_NUM_SAMPLES
    noise_scale: float = 0.15
    variant: str = "mean"
    base: Method = Vanilla()
    chunk_size: int | None = None

    traced = ("noise_scale",)
    inner = "num_samples"

    def __post_init__(self):
        positive_int("SmoothGrad: num_samples", self.num_samples)
        real("SmoothGrad: noise_scale", self.noise_scale, low=0.0, high=1e3)
        one_of("SmoothGrad variant", self.variant, VARIANTS)
        optional_positive_int("SmoothGrad: chunk_size", self.chunk_size)
        if not isinstance(self.base, Method):
            raise ValueError(f"SmoothGrad: base must be a method value (e.g. Vanilla()), got {type(self.base).__name__}")

    @property
    def needs_key(self) -> bool:
        return True

    @property
    def needs_layers(self) -> bool:
        return self.base.needs_layers

    @property
    def class_only(self) -> bool:
        return self.base.class_only

    def check(self, model, image_shape):
        super().check(model, image_shape)
        self.base.check(model, image_shape)

    def prepare(self, model, image_shape, *, images_per_call):
        base = self.base.prepare(model, image_shape, images_per_call=images_per_call)
        return super(SmoothGrad, dataclasses.replace(self, base=base)).prepare(
            model, image_shape, images_per_call=images_per_call)

    def images_per_sample(self) -> int:
        return getattr(self.base, "chunk_size", None) or 1

    def explain(self, model, x, target, *, key=None):
        if key is None:
            raise ValueError("SmoothGrad is random: pass key=jax.random.key(seed)")
        target = resolve_target(logit_fn_of(model), x, target)

        def attribution(xi, i):
            return self.base.explain(model, xi, target, key=jax.random.fold_in(jax.random.fold_in(key, i), 1))

        return noise_average(attribution, x, key, num_samples=self.num_samples, noise_scale=self.noise_scale,
                             variant=self.variant, chunk_size=self.chunk_size)


register("smoothgrad_squared", SmoothGrad, variant="squared")
register("vargrad", SmoothGrad, variant="var")
register("guided_smoothgrad", SmoothGrad, base=GuidedBackprop())
