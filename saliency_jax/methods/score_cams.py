"""CAMs weighted by forward passes instead of gradients: Score-CAM and Ablation-CAM.

Both score every channel k of the layer's activations A [h,w,K] with one
forward pass and return cam = sum_k w_k A_k (clipped at zero, upsampled):

  Score-CAM (Wang et al. 2020): the image masked by channel k's activation,
      upsampled to the image and min-max normalised, M_k = norm(up(A_k));
      s_k = S_c(x * M_k). `score="softmax"`: w = softmax_k(s) (the paper's
      Algorithm 1 and pytorch-grad-cam); "logit": w_k = s_k - S_c(0) (the
      increase over the all-zero image); "probability": the same with the class
      probability p_c in place of S_c (the paper's confidence increase).
  Ablation-CAM (Desai & Ramaswamy 2020): w_k = (S_c - S_c^{A_k=0}) / S_c, the
      relative score drop when channel k is zeroed. The zeroing is the layer's
      `perturb` point (perturbation -A_k), so the layers before it run once per
      image, unbatched, and only the rest of the network runs per channel.

The K passes go through `chunk_size` at a time (`sample_sum`: a scan over
chunks of a vmap), so memory is bounded by the chunk, not by K; the default
keeps about 32 images (batch x chunk) in flight, and the map does not depend on it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.attribution.gradients import TOP1
from saliency_jax.attribution.sampling import default_chunk, sample_sum
from saliency_jax.methods.base import register
from saliency_jax.methods.gradcam import CAMMethod, perturbed_output, weighted_sum
from saliency_jax.validate import one_of, optional_positive_int

SCORES = ("softmax", "logit", "probability")
NORM_EPS = 1e-8  # pytorch-grad-cam's, in the masks' min-max normalisation


def channel_scores(score_of, num_channels: int, *, chunk_size: int | None = None, live=None, fill=None):
    """[score_of(k) for k < num_channels] as an array [K], `chunk_size` channels at a time.

    With `live` (bool [K]) only the live channels take a forward pass, first in the
    order (the chunks after the last live one are skipped); the others get `fill`.
    """
    if live is None:
        order, count = jnp.arange(num_channels), None
    else:
        order, count = jnp.argsort(~live, stable=True), jnp.sum(live, dtype=jnp.int32)

    def sample(i):
        return score_of(order[i]) * jax.nn.one_hot(order[i], num_channels)

    scores = sample_sum(sample, num_channels, chunk_size=chunk_size, count=count)
    return scores if live is None else jnp.where(live, scores, fill)


def active_channels(acts):
    """bool [K]: the channels of A [h,w,K] that are not all zero. An all-zero channel's Score-CAM
    mask is exactly 0 (the masked image is black) and zeroing it changes nothing (Ablation-CAM),
    so its score is known without a forward pass: on EfficientNet-Lite0's head 30-60% are."""
    return jnp.any(acts != 0, axis=(0, 1))


def align_corners_matrix(n_out: int, n_in: int) -> np.ndarray:
    """[n_out, n_in] linear interpolation with the corners aligned (torch's `align_corners=True`)."""
    pos = np.arange(n_out) * ((n_in - 1) / max(n_out - 1, 1))
    low = np.clip(np.floor(pos).astype(int), 0, max(n_in - 2, 0))
    frac = pos - low
    matrix = np.zeros((n_out, n_in), np.float32)
    matrix[np.arange(n_out), low] += 1 - frac
    matrix[np.arange(n_out), np.minimum(low + 1, n_in - 1)] += frac
    return matrix


def upsample_mask(act, size, *, align_corners: bool = False):
    """One channel's activation [h,w] resized (bilinear) to `size` and min-max normalised to [0,1]."""
    if align_corners:
        up = align_corners_matrix(size[0], act.shape[0]) @ act @ align_corners_matrix(size[1], act.shape[1]).T
    else:
        up = jax.image.resize(act, size, method="bilinear")
    low, high = jnp.min(up), jnp.max(up)
    return (up - low) / (high - low + NORM_EPS)


def scorecam_weights(logit_fn, x, target, acts, *, score: str = "softmax", align_corners: bool = False,
                     chunk_size: int | None = None):
    """Score-CAM channel weights [K] for one image x [H,W,C] and the layer's activations A [h,w,K]."""
    def class_score(image):
        logits = logit_fn(image)
        return jax.nn.softmax(logits)[target] if score == "probability" else logits[target]

    def masked(k):
        return class_score(x * upsample_mask(acts[..., k], x.shape[:2], align_corners=align_corners)[..., None])

    black = class_score(jnp.zeros_like(x))  # every all-zero channel's masked image
    scores = channel_scores(masked, acts.shape[-1], chunk_size=chunk_size, live=active_channels(acts), fill=black)
    if score == "softmax":
        return jax.nn.softmax(scores)
    return scores - black


def ablationcam_weights(model, x, target, layer: str, acts, *, chunk_size: int | None = None):
    """Ablation-CAM channel weights [K]: (S_c - S_c with channel k zeroed) / S_c, from the layer onward."""
    logits, _ = perturbed_output(model, x, layer, jnp.zeros((1, *acts.shape), acts.dtype))
    original = logits[target]

    def ablated(k):
        zeroed = -acts * jax.nn.one_hot(k, acts.shape[-1], dtype=acts.dtype)  # A + (-A_k) = A with A_k = 0
        return perturbed_output(model, x, layer, zeroed[None])[0][target]

    scores = channel_scores(ablated, acts.shape[-1], chunk_size=chunk_size, live=active_channels(acts), fill=original)
    return (original - scores) / original


def activations_and_target(model, x, target, layer: str):
    """(A [h,w,K], the int32 target with TOP1 resolved) from one forward pass of x [H,W,C]."""
    logits, feats = model.apply(x[None])
    return feats[layer][0], jnp.where(target == TOP1, jnp.argmax(logits[0]), target)


@dataclasses.dataclass(frozen=True)
class ChannelScoreCAM(CAMMethod):
    """A CAM whose K channel weights take one forward pass each, `chunk_size` channels at a time."""

    many_passes = True  # one forward pass per channel (a class attribute, not a field)

    chunk_size: int | None = None

    def __post_init__(self):
        super().__post_init__()
        optional_positive_int(f"{type(self).__name__}: chunk_size", self.chunk_size)

    def prepare(self, model, image_shape, *, images_per_call):
        prepared = super().prepare(model, image_shape, images_per_call=images_per_call)
        if self.chunk_size is not None:
            return prepared
        channels = prepared.layer_shape(model, image_shape)[-1]
        return dataclasses.replace(prepared, chunk_size=default_chunk(channels, images_per_call))


@register("scorecam")
@dataclasses.dataclass(frozen=True)
class ScoreCAM(ChannelScoreCAM):
    """Score-CAM on `layer`: each channel's normalised, upsampled activation masks the image.

    `score`: "softmax" | "logit" | "probability" (module docstring);
    `align_corners=True` upsamples the masks as pytorch-grad-cam does.
    """

    score: str = "softmax"
    align_corners: bool = False

    title = "Score-CAM"

    def __post_init__(self):
        super().__post_init__()
        one_of("Score-CAM score", self.score, SCORES)
        if not isinstance(self.align_corners, bool):
            raise ValueError(f"ScoreCAM: align_corners must be True or False, got {self.align_corners!r}")

    def layer_map(self, model, x, target, layer: str):
        acts, target = activations_and_target(model, x, target, layer)
        weights = scorecam_weights(lambda z: model.apply(z[None])[0][0], x, target, acts, score=self.score,
                                   align_corners=self.align_corners, chunk_size=self.chunk_size)
        return weighted_sum(acts, weights)


@register("ablationcam")
@dataclasses.dataclass(frozen=True)
class AblationCAM(ChannelScoreCAM):
    """Ablation-CAM on `layer`: each channel weighted by the relative score drop when it is zeroed."""

    title = "Ablation-CAM"

    def layer_map(self, model, x, target, layer: str):
        acts, target = activations_and_target(model, x, target, layer)
        return weighted_sum(acts, ablationcam_weights(model, x, target, layer, acts, chunk_size=self.chunk_size))
