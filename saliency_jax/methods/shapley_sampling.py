"""Shapley value sampling (Castro et al. 2009; Strumbelj & Kononenko 2010), Captum's `ShapleyValueSampling`.

For P random permutations of the M segments, features are added to the
baseline image one at a time in the permutation's order, and each feature is
credited with the score change its addition makes; the mean over permutations
is an unbiased estimate of its Shapley value (exact, for any P, on an additive
model). With `antithetic=True` (default) every odd permutation is the reverse
of the one before (antithetic sampling: lower variance for the same cost).

Each evaluation is independent of the others: prefix j of permutation p
(j = 1..M features present) scores s, and since the marginal contributions
telescope it adds +s to feature perm[j-1] and -s to feature perm[j] (j < M);
the empty prefix, S_c(baseline), adds -S_c(baseline) to perm[0]. So the
P * M evaluations go `chunk_size` at a time with no sequential dependency.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from saliency_jax.methods.base import register
from saliency_jax.methods.perturbation import SegmentPerturbation, coalition_mask, perturbation_sum, spread
from saliency_jax.validate import positive_int

DEFAULT_NUM_PERMUTATIONS = 25


def permutation(key, p, num_features: int, antithetic: bool):
    """Permutation p of range(M) from `key` (odd p: the reverse of p - 1 when antithetic)."""
    base = jax.random.permutation(jax.random.fold_in(key, p // 2 if antithetic else p), num_features)
    return jnp.where((p % 2 == 1) & antithetic, base[::-1], base)


def shapley_sampling(score, x, baseline, segments, key, *, num_features: int, num_permutations: int,
                     antithetic: bool = True, chunk_size: int | None = None):
    """Shapley value estimates [M] of the M features of `segments` [H,W] for `score` (image -> scalar)."""
    m = num_features

    def prefix(i):
        order = permutation(key, i // m, m, antithetic)
        rank = jnp.argsort(order)  # rank[k]: position of feature k in the permutation
        return (rank < i % m + 1).astype(jnp.float32), order

    def keep_of(i):
        return coalition_mask(prefix(i)[0], segments)

    def credit(i, keep, s):
        order, j = prefix(i)[1], i % m + 1
        added = jax.nn.one_hot(order[j - 1], m)
        nxt = jnp.where(j < m, jax.nn.one_hot(order[jnp.minimum(j, m - 1)], m), 0.0)
        empty = jnp.where(j == 1, jax.nn.one_hot(order[0], m), 0.0)  # -S(baseline) to the first feature
        return s * (added - nxt), empty

    totals, firsts = perturbation_sum(score, x, baseline, keep_of, credit, num_permutations * m,
                                      chunk_size=chunk_size)
    return (totals - score(baseline) * firsts) / num_permutations


@register("shapley_sampling")
@dataclasses.dataclass(frozen=True)
class ShapleySampling(SegmentPerturbation):
    """Shapley value sampling over the segments with `num_permutations` permutations (random; static counts).

    Costs num_permutations x M forward passes (+1); the map paints each
    segment's estimate on its pixels, equal across channels.
    """

    num_permutations: int = DEFAULT_NUM_PERMUTATIONS
    antithetic: bool = True

    def __post_init__(self):
        super().__post_init__()
        positive_int("shapley_sampling: num_permutations", self.num_permutations)
        if not isinstance(self.antithetic, bool):
            raise ValueError(f"shapley_sampling: antithetic must be True or False, got {self.antithetic!r}")

    @property
    def needs_key(self) -> bool:
        return True

    def num_evaluations(self, image_shape):
        return self.num_permutations * self.num_features

    def explain(self, model, x, target, *, key=None):
        if key is None:
            raise ValueError("shapley_sampling is random: pass key=jax.random.key(seed)")
        score, target = self.scorer(model, x, target)
        segments = self.segment_map(x)
        values = shapley_sampling(score, x, self.baseline_image(x), segments, key, num_features=self.num_features,
                                  num_permutations=self.num_permutations, antithetic=self.antithetic,
                                  chunk_size=self.chunk_size)
        return spread(values, segments, x.shape[-1])
