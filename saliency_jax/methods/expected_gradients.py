"""Expected Gradients (Erion et al. 2021), Captum's GradientSHAP: IG averaged over baselines and path points.

Sample i draws, from `jax.random.fold_in(key, i)`, a baseline b_i uniformly
from `baselines` [N,H,W,C], a path point a_i ~ U[0,1] and, with
`noise_scale > 0`, a noisy input x_i = x + N(0, sigma^2) with
sigma = noise_scale * (max(x) - min(x)) (SmoothGrad's convention; Captum's
`stdevs` is sigma itself); then

    EG(x) = 1/n sum_i (x_i - b_i) * dS_c/dx (b_i + a_i (x_i - b_i)),

whose expectation sums to S_c(x) - E_b S_c(b) without noise (completeness in
expectation). The same key gives the same map, whatever the chunk size.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.attribution.gradients import class_gradient, resolve_target
from saliency_jax.attribution.sampling import sample_sum
from saliency_jax.methods.base import Method, logit_fn_of, register
from saliency_jax.validate import optional_positive_int, positive_int, real

DEFAULT_NUM_SAMPLES = 25


def expected_gradients(logit_fn, x, target, *, key, baselines=None, num_samples: int = DEFAULT_NUM_SAMPLES,
                       noise_scale=0.0, chunk_size: int | None = None):
    """Expected Gradients for one image (the functional form of `ExpectedGradients`): x [H,W,C] -> [H,W,C].

    Args:
      logit_fn: `[H,W,C] -> [K]` unnormalised scores.
      x: one image [H,W,C] in model space.
      target: int32 class index, or `TOP1` (-1; resolved on the clean image).
      key: a `jax.random` key.
      baselines: [N,H,W,C] reference images (e.g. training images); None = one all-zero image.
      num_samples: (baseline, path point) draws (static).
      noise_scale: input noise std as a fraction of x's value range (0: none).
      chunk_size: draws evaluated at once (static); None = all.
    """
    baselines = jnp.zeros((1, *x.shape), x.dtype) if baselines is None else jnp.asarray(baselines, x.dtype)
    target = resolve_target(logit_fn, x, target)
    sigma = noise_scale * (jnp.max(x) - jnp.min(x))

    def sample(i):
        pick, point, noise = jax.random.split(jax.random.fold_in(key, i), 3)
        baseline = baselines[jax.random.randint(pick, (), 0, baselines.shape[0])]
        noisy = x + sigma * jax.random.normal(noise, x.shape, x.dtype)
        alpha = jax.random.uniform(point, (), x.dtype)
        return (noisy - baseline) * class_gradient(logit_fn, baseline + alpha * (noisy - baseline), target)

    return sample_sum(sample, num_samples, chunk_size=chunk_size) / num_samples


@register("expected_gradients")
@dataclasses.dataclass(frozen=True)
class ExpectedGradients(Method):
    """Expected Gradients / GradientSHAP over `baselines` [N,H,W,C] (random: needs a key).

    `baselines` and `noise_scale` are traced (a new set of the same shape does
    not recompile); `num_samples` and `chunk_size` are static.
    """

    num_samples: int = DEFAULT_NUM_SAMPLES
    noise_scale: float = 0.0
    baselines: object = None
    chunk_size: int | None = None

    traced = ("noise_scale", "baselines")
    inner = "num_samples"

    def __post_init__(self):
        positive_int("ExpectedGradients: num_samples", self.num_samples)
        real("ExpectedGradients: noise_scale", self.noise_scale, low=0.0, high=1e3)
        optional_positive_int("ExpectedGradients: chunk_size", self.chunk_size)

    @property
    def needs_key(self) -> bool:
        return True

    def check(self, model, image_shape):
        super().check(model, image_shape)
        shape = np.shape(self.baselines) if self.baselines is not None else None
        if shape is not None and (len(shape) != 4 or shape[0] < 1 or tuple(shape[1:]) != tuple(image_shape)):
            raise ValueError(f"ExpectedGradients: baselines must be [N,H,W,C] with [H,W,C] the image shape "
                             f"{tuple(image_shape)}; got shape {tuple(shape)}")

    def explain(self, model, x, target, *, key=None):
        if key is None:
            raise ValueError("ExpectedGradients is random: pass key=jax.random.key(seed)")
        return expected_gradients(logit_fn_of(model), x, target, key=key, baselines=self.baselines,
                                  num_samples=self.num_samples, noise_scale=self.noise_scale,
                                  chunk_size=self.chunk_size)
