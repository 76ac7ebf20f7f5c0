"""RISE (Petsiuk et al. 2018): the score-weighted average of random smooth masks.

Mask i: a `cell` x `cell` grid of Bernoulli(`p_keep`) cells, upsampled
bilinearly to (cell + 1) * ceil(H / cell) pixels a side and cropped to [H,W]
at a random shift in [0, ceil(H / cell)) per axis (the paper's construction:
smooth masks whose cell edges fall anywhere). The map is

    RISE(x) = 1 / (N p_keep) * sum_i S_c(x * M_i + b (1 - M_i)) M_i,

with S_c the class probability by default (the paper's; `score="logit"` for
the logit). Mask i is drawn from `fold_in(key, i)`, built on the device, and
`chunk_size` masks go through the model at once: the same key gives the same
map whatever the chunk size.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import lax

from saliency_jax.methods.base import register
from saliency_jax.methods.perturbation import Perturbation, perturbation_sum
from saliency_jax.validate import positive_int, real

DEFAULT_NUM_MASKS = 2000


def rise_mask(key, height: int, width: int, cell: int, p_keep):
    """One RISE mask float32 [H,W] in [0,1] from `key`: a cell x cell Bernoulli grid, upsampled and shifted."""
    grid_key, shift_key = jax.random.split(key)
    grid = jax.random.bernoulli(grid_key, p_keep, (cell, cell)).astype(jnp.float32)
    step_h, step_w = math.ceil(height / cell), math.ceil(width / cell)
    up = jax.image.resize(grid, ((cell + 1) * step_h, (cell + 1) * step_w), method="bilinear")
    dy = jax.random.randint(shift_key, (), 0, step_h)
    dx = jax.random.randint(jax.random.fold_in(shift_key, 1), (), 0, step_w)
    return lax.dynamic_slice(up, (dy, dx), (height, width))


@register("rise")
@dataclasses.dataclass(frozen=True)
class RISE(Perturbation):
    """RISE over `num_masks` random masks of a `cell` x `cell` grid keeping each cell with `p_keep` (random).

    `num_masks`, `cell` (grid cells per side, the paper's s) and `chunk_size` are
    static; `p_keep` and the baseline are traced.
    """

    num_masks: int = DEFAULT_NUM_MASKS
    cell: int = 7
    p_keep: float = 0.5
    score: str = "probability"

    traced = ("baseline", "p_keep")
    display_relative = True  # the map's floor is about the mean masked score (a class attribute)

    def __post_init__(self):
        super().__post_init__()
        positive_int("RISE: num_masks", self.num_masks)
        positive_int("RISE: cell", self.cell)
        real("RISE: p_keep", self.p_keep, low=0.0, high=1.0, open_low=True)

    @property
    def needs_key(self) -> bool:
        return True

    def num_evaluations(self, image_shape):
        return self.num_masks

    def check(self, model, image_shape):
        if self.cell > min(image_shape[:2]):
            raise ValueError(f"RISE: cell {self.cell} (grid cells per side) is more than the image's "
                             f"{min(image_shape[:2])} pixels")
        super().check(model, image_shape)

    def explain(self, model, x, target, *, key=None):
        if key is None:
            raise ValueError("RISE is random: pass key=jax.random.key(seed)")
        score, target = self.scorer(model, x, target)
        height, width = x.shape[:2]

        def mask(i):
            return rise_mask(jax.random.fold_in(key, i), height, width, self.cell, self.p_keep)

        total = perturbation_sum(score, x, self.baseline_image(x), mask, lambda i, keep, s: s * keep,
                                 self.num_masks, chunk_size=self.chunk_size)
        return jnp.broadcast_to((total / (self.num_masks * self.p_keep))[..., None], x.shape)
