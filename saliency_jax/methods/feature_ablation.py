"""Feature ablation: replace one segment at a time by the baseline and record the score drop (Captum's).

For a segment map with M segments, feature k's attribution is
S_c(x) - S_c(x with segment k shown as the baseline), painted on every pixel of
the segment: Captum's `FeatureAblation` with `feature_mask=segments` (one
segment per forward pass). M forward passes, `chunk_size` at a time.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from saliency_jax.methods.base import register
from saliency_jax.methods.perturbation import SegmentPerturbation, perturbation_sum, spread


@register("feature_ablation")
@dataclasses.dataclass(frozen=True)
class FeatureAblation(SegmentPerturbation):
    """Ablate each of the M segments in turn (`segments`: a map, "grid", "slic" or "felzenszwalb").

    Returns [H,W,C]: S_c(x) - S_c(x without the pixel's segment), equal across channels.
    """

    def num_evaluations(self, image_shape):
        return self.num_features

    def explain(self, model, x, target, *, key=None):
        score, target = self.scorer(model, x, target)
        segments, m = self.segment_map(x), self.num_features
        full = score(x)

        def ablated(k):
            return (segments != k).astype(jnp.float32)

        def drop(k, keep, s):
            return (full - s) * jax.nn.one_hot(k, m)

        values = perturbation_sum(score, x, self.baseline_image(x), ablated, drop, m, chunk_size=self.chunk_size)
        return spread(values, segments, x.shape[-1])
