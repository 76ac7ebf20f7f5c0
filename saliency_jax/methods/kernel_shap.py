"""KernelSHAP (Lundberg & Lee 2017): Shapley values as a weighted least-squares fit over coalitions.

With M features and v(z) the score of the image keeping the features in z,
the Shapley values are the solution of

    min_phi  sum_z pi(z) (v(z) - v(0) - z . phi)^2   subject to  sum_k phi_k = v(1) - v(0),
    pi(z) = (M - 1) / (C(M, |z|) |z| (M - |z|)),

the Shapley kernel. As shap's KernelExplainer does, the coalition sizes that
carry most of the kernel's mass are enumerated rather than sampled: pairs of
sizes (1, M-1), (2, M-2), ... are taken whole, each coalition at its weight
pi(z), while the budget covers them (`kernel_plan`: while kernel sampling would
be expected to draw each of their coalitions at least once). The sizes left in
the middle are sampled from the kernel itself (a size with probability
proportional to its mass, then a uniform subset of that size), each sample
weighing the middle's mass / their number; with `paired=True` (default) every
odd sample is the complement of the one before (paired sampling, Covert & Lee
2021). With num_samples >= 2^M - 2 every coalition is enumerated and the
result is exact. Each coalition adds pi z z^T and pi z (v(z) - v(0)) to the
sufficient statistics G [M,M], c [M] on the device (`chunk_size` at a time),
and the constrained problem is one (M+1) x (M+1) KKT solve,
[[G, 1], [1^T, 0]] [phi; lam] = [c; v(1) - v(0)]. It needs num_samples >= M + 1.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.methods.base import register
from saliency_jax.methods.perturbation import SegmentPerturbation, coalition_mask, perturbation_sum, spread
from saliency_jax.validate import positive_int

DEFAULT_NUM_SAMPLES = 1000
RIDGE = 1e-6


def size_mass(num_features: int) -> np.ndarray:
    """The Shapley kernel's total weight on each coalition size s = 1..M-1: (M-1) / (s (M-s)), [M-1]."""
    sizes = np.arange(1, num_features, dtype=np.float64)
    return (num_features - 1) / (sizes * (num_features - sizes))


class KernelPlan(NamedTuple):
    """Which coalitions are enumerated and how the rest are sampled (static NumPy, from M and num_samples).

    Fields:
      table: [E,M] float32, every coalition of the enumerated sizes.
      weights: [E] float32, their kernel weights (size mass / C(M,s)).
      num_sampled: samples drawn from the kernel over the remaining sizes.
      low: the smallest sampled size (sizes low..M-low are sampled).
      sampled_weight: the weight of each sampled coalition (the remaining mass / num_sampled).
    """

    table: np.ndarray
    weights: np.ndarray
    num_sampled: int
    low: int
    sampled_weight: float


@functools.lru_cache(maxsize=64)
def kernel_plan(num_features: int, num_samples: int) -> KernelPlan:
    """shap's KernelExplainer plan: enumerate sizes (s, M-s) from the outside in while the budget covers them.

    A pair of sizes is enumerated when the samples kernel sampling would give it
    (its share of the remaining mass x the remaining budget) reach its number of
    coalitions; the first pair that falls short and everything inside it are sampled.
    """
    m = num_features
    mass = size_mass(m)
    rows, weights, left, low = [], [], num_samples, 1
    while low <= m - low:
        pair = sorted({low, m - low})
        count = sum(math.comb(m, s) for s in pair)
        share = mass[[s - 1 for s in pair]].sum() / mass[low - 1:m - low].sum()
        if left * share < count - 1e-8:
            break
        for s in pair:
            for members in itertools.combinations(range(m), s):
                z = np.zeros(m, np.float32)
                z[list(members)] = 1.0
                rows.append(z)
                weights.append(mass[s - 1] / math.comb(m, s))
        left -= count
        low += 1
    sampled = left if low <= m - low else 0
    rest = mass[low - 1:m - low].sum() if sampled else 0.0
    table = np.stack(rows) if rows else np.zeros((0, m), np.float32)
    return KernelPlan(table, np.asarray(weights, np.float32), sampled, low, rest / max(sampled, 1))


def kernel_coalition(key, i, num_features: int, paired: bool, low: int = 1):
    """Coalition i [M] in {0,1} drawn from the Shapley kernel over sizes low..M-low (odd i: the complement
    of i - 1 when paired)."""
    m = num_features
    draw = jax.random.fold_in(key, i // 2 if paired else i)
    size_key, subset_key = jax.random.split(draw)
    size = low + jax.random.categorical(size_key, jnp.log(jnp.asarray(size_mass(m)[low - 1:m - low], jnp.float32)))
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
    plan = kernel_plan(num_features, num_samples)
    num_enumerated = len(plan.weights)
    table, weights = jnp.asarray(plan.table), jnp.asarray(plan.weights)

    def coalition(i):  # (z [M], its weight): the enumerated table first, then the kernel samples
        if not plan.num_sampled:
            return table[i], weights[i]
        z = kernel_coalition(key, i - num_enumerated, num_features, paired, plan.low)
        if not num_enumerated:
            return z, jnp.float32(plan.sampled_weight)
        row = jnp.minimum(i, num_enumerated - 1)
        enumerated = i < num_enumerated
        return jnp.where(enumerated, table[row], z), jnp.where(enumerated, weights[row], plan.sampled_weight)

    def keep_of(i):
        return coalition_mask(coalition(i)[0], segments)

    def statistics(i, keep, s):
        z, w = coalition(i)
        return w * jnp.outer(z, z), w * z * (s - empty)

    num = num_enumerated + plan.num_sampled
    gram, cross = perturbation_sum(score, x, baseline, keep_of, statistics, num, chunk_size=chunk_size)
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
        plan = kernel_plan(self.num_features, self.num_samples)
        return len(plan.weights) + plan.num_sampled

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
