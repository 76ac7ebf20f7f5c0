"""The perturbation family's one mechanism: masks against a baseline, one chunked forward, a device reduction.

A perturbation keeps the image where a mask is 1 and shows the baseline where
it is 0,

    x_i = b + keep_i[..., None] * (x - b)          keep_i [H,W] in [0,1],

with b a constant, a baseline image, or x blurred by a Gaussian (`blur_sigma`).
Every method of the family (occlusion, feature ablation, RISE, Shapley value
sampling, KernelSHAP, LIME) is a `keep_of(i)` that builds mask i on the device
from its index (a window position, a segment id, a `fold_in(key, i)` draw) and
a `reduce(i, keep_i, score_i)` that turns the score S_c(x_i) into the terms
summed over i. `perturbation_sum` evaluates them `chunk_size` masks at a time
(`sample_sum`: a `lax.scan` over chunks of a `vmap`), so memory is bounded by
the chunk and the result does not depend on it; no mask array [N,H,W] ever
exists. Segment methods work in feature space: a coalition z [M] in {0,1}
becomes the pixel mask z[segments].

The score is the target's logit (`score="logit"`) or its softmax probability
(`"probability"`, RISE's and LIME's original choice).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.attribution.gradients import resolve_target
from saliency_jax.attribution.sampling import default_chunk, sample_sum
from saliency_jax.filters import gaussian_filter
from saliency_jax.methods.base import Method, logit_fn_of
from saliency_jax.methods.integrated_gradients import check_baseline
from saliency_jax.segments import SEGMENTATIONS, grid_side, grid_segments, relabel_batch, segment
from saliency_jax.validate import one_of, optional_positive_int, positive_int, real

SCORES = ("logit", "probability")


def class_score(logit_fn, x, target, score: str = "logit"):
    """(image [H,W,C] -> the scalar score of the class, the int32 target with TOP1 resolved on x)."""
    target = resolve_target(logit_fn, x, target)
    if score == "probability":
        return (lambda image: jax.nn.softmax(logit_fn(image))[target]), target
    return (lambda image: logit_fn(image)[target]), target


def perturb(x, baseline, keep):
    """x where keep [H,W] is 1, the baseline where it is 0 (linear in between): [H,W,C]."""
    return baseline + keep[..., None].astype(x.dtype) * (x - baseline)


def perturbation_sum(score, x, baseline, keep_of, reduce, num: int, *, chunk_size: int | None = None):
    """sum_{i < num} reduce(i, keep_i, score(perturb(x, baseline, keep_i))), `chunk_size` masks at a time.

    Args:
      score: image [H,W,C] -> scalar (e.g. from `class_score`).
      x, baseline: [H,W,C].
      keep_of: int32 index -> keep mask [H,W] (built on the device from i alone).
      reduce: (i, keep [H,W], score scalar) -> a pytree of arrays to sum over i.
      num: static number of perturbations.
      chunk_size: perturbations evaluated at once (static); None = all.
    """
    def sample(i):
        keep = keep_of(i)
        return reduce(i, keep, score(perturb(x, baseline, keep)))

    return sample_sum(sample, num, chunk_size=chunk_size)


def coalition_mask(z, segments):
    """Pixel keep mask [H,W] of a coalition z [M] (1 = feature present) over a segment map [H,W]."""
    return z[segments]


def spread(values, segments, channels: int):
    """Per-feature values [M] painted onto their segments: [H,W,channels]."""
    return jnp.broadcast_to(values[segments][..., None], (*segments.shape, channels))


@dataclasses.dataclass(frozen=True)
class Perturbation(Method):
    """Base of the perturbation methods: the baseline, the score and the chunk size.

    Subclasses implement `num_evaluations(image_shape)` (forward passes per
    image, sizing the default chunk) and `explain`.

    Fields:
      baseline: what a removed pixel shows: a number, an image [H,W,C], or per
        image [B,H,W,C] (traced; model space).
      blur_sigma: if set, the baseline is x blurred by a Gaussian of this std
        (pixels, mirrored edges; static), and `baseline` is ignored.
      score: "logit" | "probability" (softmax) of the target class.
      chunk_size: perturbed images evaluated at once (static); None = about 32
        images (batch x chunk) in flight.
    """

    many_passes = True  # hundreds of forward passes per image (a class attribute, not a field)

    baseline: object = 0.0
    blur_sigma: float | None = None
    score: str = "logit"
    chunk_size: int | None = None

    traced = ("baseline",)
    per_image = ("baseline",)

    def __post_init__(self):
        name = type(self).__name__
        if self.blur_sigma is not None:
            real(f"{name}: blur_sigma", self.blur_sigma, low=0.0, high=1e4, open_low=True)
        one_of(f"{name} score", self.score, SCORES)
        optional_positive_int(f"{name}: chunk_size", self.chunk_size)

    def num_evaluations(self, image_shape: tuple) -> int:
        """Forward passes per image (the inner sample count)."""
        raise NotImplementedError

    def check(self, model, image_shape):
        super().check(model, image_shape)
        if self.blur_sigma is None:
            check_baseline(self.baseline, image_shape)

    def prepare(self, model, image_shape, *, images_per_call):
        self.check(model, tuple(image_shape))
        if self.chunk_size is not None:
            return self
        chunk = default_chunk(self.num_evaluations(tuple(image_shape)), images_per_call)
        return self.with_values(chunk_size=chunk)

    def baseline_image(self, x):
        """The baseline for x [H,W,C]: [H,W,C]."""
        if self.blur_sigma is not None:
            return gaussian_filter(x, self.blur_sigma)
        return jnp.broadcast_to(jnp.asarray(self.baseline, x.dtype), x.shape)

    def scorer(self, model, x, target):
        """(image -> the target's score, the resolved target), from `model` (a `Model` or a logit function)."""
        return class_score(logit_fn_of(model), x, target, self.score)


@dataclasses.dataclass(frozen=True)
class SegmentPerturbation(Perturbation):
    """A perturbation over M features, the segments of a segment map (`saliency_jax.segments`).

    Fields:
      segments: "grid" (a g x g grid, g = floor(sqrt(num_segments)), built on the
        device), "slic" / "felzenszwalb" (scikit-image on the host, from the
        images `attribute` is given), or int ids [H,W], or per image [B,H,W]
        (renumbered 0..M-1; traced). `saliency_jax.segments.segment` returns
        the maps the host segmentations use.
      num_segments: the grid's / SLIC's requested segment count (static).
      num_features: M, the number of ids (static): set from a given map, or
        from the host segmentation; None for "grid" (g*g).
    """

    segments: object = "grid"
    num_segments: int = 16
    num_features: int | None = None

    per_image = ("baseline", "segments")

    @property
    def traced(self):  # the map is traced when it is an array; a segmentation's name is static
        return ("baseline",) if isinstance(self.segments, str) else ("baseline", "segments")

    def __post_init__(self):
        super().__post_init__()
        name = type(self).__name__
        positive_int(f"{name}: num_segments", self.num_segments)
        if isinstance(self.segments, str):
            one_of(f"{name} segments", self.segments, SEGMENTATIONS)
            if self.segments == "grid":
                object.__setattr__(self, "num_features", grid_side(self.num_segments) ** 2)
        elif self.segments is not None:
            if np.ndim(self.segments) not in (2, 3):
                raise ValueError(f"{name}: segments must be an int map [H,W] or per image [B,H,W], "
                                 f"got shape {np.shape(self.segments)}")
            maps, count = relabel_batch(self.segments)
            object.__setattr__(self, "segments", maps)
            object.__setattr__(self, "num_features", count)

    def per_image_shape(self, name, image_shape):
        return tuple(image_shape[:2]) if name == "segments" else tuple(image_shape)

    def for_images(self, x):
        if isinstance(self.segments, str) and self.segments != "grid":
            maps = segment(np.asarray(x), self.segments, num_segments=self.num_segments)
            return dataclasses.replace(self, segments=maps, num_features=None)
        if not isinstance(self.segments, str) and self.segments is not None:
            shape = tuple(np.shape(self.segments))
            if shape not in (tuple(x.shape[1:3]), tuple(x.shape[:3])):
                raise ValueError(f"{type(self).__name__}: segments of shape {shape} do not fit images "
                                 f"{tuple(x.shape)}: expected [H,W] {tuple(x.shape[1:3])} or [B,H,W] "
                                 f"{tuple(x.shape[:3])}")
        return self

    def check(self, model, image_shape):
        super().check(model, image_shape)
        if isinstance(self.segments, str) and self.segments == "grid" and grid_side(self.num_segments) > min(image_shape[:2]):
            raise ValueError(f"{type(self).__name__}: a {grid_side(self.num_segments)}x"
                             f"{grid_side(self.num_segments)} grid does not fit an image of "
                             f"{image_shape[0]}x{image_shape[1]} pixels: lower num_segments")
        if isinstance(self.segments, str) and self.segments != "grid":
            raise ValueError(f"{type(self).__name__}: segments={self.segments!r} are computed from the images: "
                             "call attribute(...) or pass segments=segment(images, ...)")

    def segment_map(self, x):
        """The int32 segment map [H,W] of x [H,W,C]."""
        if isinstance(self.segments, str):
            return grid_segments(x.shape[0], x.shape[1], self.num_segments)
        return jnp.asarray(self.segments, jnp.int32)


__all__ = ["SCORES", "Perturbation", "SegmentPerturbation", "class_score", "coalition_mask", "perturb",
           "perturbation_sum", "spread"]
