"""LIME (Ribeiro et al. 2016): a weighted ridge surrogate fitted to random coalitions of segments.

Sample 0 keeps every segment; sample i > 0 keeps each of the M segments with
probability 1/2 (`fold_in(key, i)`). Each is weighted by the exponential
kernel on its distance to the image, pi = exp(-d^2 / kernel_width^2), with d
the cosine distance between z and the all-ones vector, 1 - sqrt(|z| / M)
(lime_image's; `distance="l2"`: ||1 - z||_2 / sqrt(M)). The surrogate
v(z) ~ b + z . beta minimises sum_i pi_i (v(z_i) - b - z_i . beta)^2 + alpha ||beta||^2
(scikit-learn's `Ridge(alpha)` with an unpenalised intercept, as lime uses),
solved in closed form from weighted sufficient statistics summed on the device:

    beta = (Zc^T Pi Zc + alpha I)^-1 Zc^T Pi vc,   Zc, vc centred by their pi-weighted means.

The attribution paints beta_k on segment k's pixels.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from saliency_jax.methods.base import register
from saliency_jax.methods.perturbation import SegmentPerturbation, coalition_mask, perturbation_sum, spread
from saliency_jax.validate import one_of, positive_int, real

DISTANCES = ("cosine", "l2")
DEFAULT_NUM_SAMPLES = 1000


def lime_coalition(key, i, num_features: int):
    """Coalition i [M]: all ones for i = 0, else independent Bernoulli(1/2) from `fold_in(key, i)`."""
    z = jax.random.bernoulli(jax.random.fold_in(key, i), 0.5, (num_features,)).astype(jnp.float32)
    return jnp.where(i == 0, 1.0, z)


def lime_weight(z, kernel_width, distance: str = "cosine"):
    """The exponential kernel exp(-d^2 / width^2) of coalition z [M]'s distance to all ones."""
    m = z.shape[0]
    if distance == "cosine":
        d = 1.0 - jnp.sqrt(jnp.sum(z) / m)
    else:
        d = jnp.sqrt(jnp.sum((1.0 - z) ** 2) / m)
    return jnp.exp(-(d**2) / kernel_width**2)


def weighted_ridge(stats, alpha):
    """beta [M] of the pi-weighted ridge fit with an unpenalised intercept, from summed statistics.

    stats: (sum pi, sum pi z [M], sum pi v, sum pi z z^T [M,M], sum pi z v [M]).
    """
    w, wz, wv, wzz, wzv = stats
    mean_z, mean_v = wz / w, wv / w
    gram = wzz - w * jnp.outer(mean_z, mean_z)
    cross = wzv - w * mean_z * mean_v
    return jnp.linalg.solve(gram + alpha * jnp.eye(gram.shape[0]), cross)


def lime(score, x, baseline, segments, key, *, num_features: int, num_samples: int, kernel_width=0.25,
         distance: str = "cosine", alpha=1.0, chunk_size: int | None = None):
    """LIME surrogate coefficients [M] of the M features of `segments` [H,W] for `score` (image -> scalar)."""
    def keep_of(i):
        return coalition_mask(lime_coalition(key, i, num_features), segments)

    def statistics(i, keep, s):
        z = lime_coalition(key, i, num_features)
        w = lime_weight(z, kernel_width, distance)
        return w, w * z, w * s, w * jnp.outer(z, z), w * z * s

    stats = perturbation_sum(score, x, baseline, keep_of, statistics, num_samples, chunk_size=chunk_size)
    return weighted_ridge(stats, alpha)


@register("lime")
@dataclasses.dataclass(frozen=True)
class LIME(SegmentPerturbation):
    """LIME over the segments from `num_samples` random coalitions (random; counts and distance static).

    `kernel_width` and `alpha` (the ridge penalty) are traced.
    """

    num_samples: int = DEFAULT_NUM_SAMPLES
    kernel_width: float = 0.25
    distance: str = "cosine"
    alpha: float = 1.0

    traced = property(lambda self: SegmentPerturbation.traced.fget(self) + ("kernel_width", "alpha"))

    def __post_init__(self):
        super().__post_init__()
        positive_int("lime: num_samples", self.num_samples)
        real("lime: kernel_width", self.kernel_width, low=0.0, high=1e3, open_low=True)
        real("lime: alpha", self.alpha, low=0.0, high=1e9)
        one_of("lime distance", self.distance, DISTANCES)

    @property
    def needs_key(self) -> bool:
        return True

    def num_evaluations(self, image_shape):
        return self.num_samples

    def explain(self, model, x, target, *, key=None):
        if key is None:
            raise ValueError("lime is random: pass key=jax.random.key(seed)")
        score, target = self.scorer(model, x, target)
        segments = self.segment_map(x)
        values = lime(score, x, self.baseline_image(x), segments, key, num_features=self.num_features,
                      num_samples=self.num_samples, kernel_width=self.kernel_width, distance=self.distance,
                      alpha=self.alpha, chunk_size=self.chunk_size)
        return spread(values, segments, x.shape[-1])
