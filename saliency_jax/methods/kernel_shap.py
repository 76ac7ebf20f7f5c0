"""KernelSHAP (Lundberg & Lee 2017): Shapley values as a weighted least-squares fit over coalitions.

With M features and v(z) the score of the image keeping the features in z,
the Shapley values are the solution of

    min_phi  sum_z pi(z) (v(z) - v(0) - z . phi)^2   subject to  sum_k phi_k = v(1) - v(0),
    pi(z) = (M - 1) / (C(M, |z|) |z| (M - |z|)),

the Shapley kernel. Coalitions are sampled from the kernel itself (a size s in
1..M-1 with probability proportional to (M-1) / (s (M-s)), then a uniform
subset of that size), so every sample has weight 1; with `paired=True`
(default) every odd sample is the complement of the one before (paired
sampling, Covert & Lee 2021). Each sample adds z z^T and z (v(z) - v(0)) to
the sufficient statistics G [M,M], c [M] on the device (`chunk_size` at a
time), and the constrained problem is one (M+1) x (M+1) KKT solve,
[[G, 1], [1^T, 0]] [phi; lam] = [c; v(1) - v(0)]. It needs num_samples >= M + 1.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from saliency_jax.methods.base import register
from saliency_jax.methods.perturbation import SegmentPerturbation, coalition_mask, perturbation_sum, spread
from saliency_jax.validate import positive_int

DEFAULT_NUM_SAMPLES = 1000
RIDGE = 1e-6


def kernel_coalition(key, i, num_features: int, paired: bool):
    """Coalition i [M] in {0,1} drawn from the Shapley kernel (odd i: the complement of i - 1 when paired)."""
    m = num_features
    draw = jax.random.fold_in(key, i // 2 if paired else i)
    size_key, subset_key = jax.random.split(draw)
    sizes = jnp.arange(1, m, dtype=jnp.float32)
    size = 1 + jax.random.categorical(size_key, jnp.log((m - 1) / (sizes * (m - sizes))))
    rank = jnp.argsort(jax.random.uniform(subset_key, (m,)))
    z = (jnp.argsort(rank) < size).astype(jnp.float32)
    return jnp.where((i % 2 == 1) & paired, 1.0 - z, z)


def constrained_least_squares(gram, cross, total):
    """argmin phi^T G phi - 2 c^T phi subject to sum(phi) = total: [M] from G [M,M], c [M] (one KKT solve).

    A ridge of RIDGE x the mean diagonal keeps the system solvable when G is singular (too few
    distinct coalitions, a segment empty in this image); it changes nothing measurable otherwise.
    """
    m = gram.shape[0]
    gram = gram + RIDGE * jnp.trace(gram) / m * jnp.eye(m)
    kkt = jnp.block([[gram, jnp.ones((m, 1))], [jnp.ones((1, m)), jnp.zeros((1, 1))]])
    return jnp.linalg.solve(kkt, jnp.concatenate([cross, total[None]]))[:m]


def kernel_shap(score, x, baseline, segments, key, *, num_features: int, num_samples: int, paired: bool = True,
                chunk_size: int | None = None):
    """KernelSHAP estimates [M] of the M features of `segments` [H,W] for `score` (image -> scalar)."""
    empty, full = score(baseline), score(x)

    def keep_of(i):
        return coalition_mask(kernel_coalition(key, i, num_features, paired), segments)

    def statistics(i, keep, s):
        z = kernel_coalition(key, i, num_features, paired)
        return jnp.outer(z, z), z * (s - empty)

    gram, cross = perturbation_sum(score, x, baseline, keep_of, statistics, num_samples, chunk_size=chunk_size)
    return constrained_least_squares(gram, cross, full - empty)


@register("kernel_shap")
@dataclasses.dataclass(frozen=True)
class KernelSHAP(SegmentPerturbation):
    """KernelSHAP over the segments from `num_samples` kernel-sampled coalitions (random; static counts).

    The map paints each segment's Shapley estimate on its pixels, equal across
    channels; they sum to S_c(x) - S_c(baseline).
    """

    num_samples: int = DEFAULT_NUM_SAMPLES
    paired: bool = True

    def __post_init__(self):
        super().__post_init__()
        positive_int("kernel_shap: num_samples", self.num_samples)
        if not isinstance(self.paired, bool):
            raise ValueError(f"kernel_shap: paired must be True or False, got {self.paired!r}")

    @property
    def needs_key(self) -> bool:
        return True

    def num_evaluations(self, image_shape):
        return self.num_samples

    def check(self, model, image_shape):
        super().check(model, image_shape)
        m = self.num_features
        if m is not None and m < 2:
            raise ValueError(f"kernel_shap needs at least 2 segments, got {m}")
        if m is not None and self.num_samples < m + 1:
            raise ValueError(f"kernel_shap: num_samples {self.num_samples} is below what the least-squares "
                             f"solve needs for {m} segments (at least {m + 1})")

    def explain(self, model, x, target, *, key=None):
        if key is None:
            raise ValueError("kernel_shap is random: pass key=jax.random.key(seed)")
        score, target = self.scorer(model, x, target)
        segments = self.segment_map(x)
        values = kernel_shap(score, x, self.baseline_image(x), segments, key, num_features=self.num_features,
                             num_samples=self.num_samples, paired=self.paired, chunk_size=self.chunk_size)
        return spread(values, segments, x.shape[-1])
