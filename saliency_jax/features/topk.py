"""Streaming top-k activations: the k strongest (value, image, position) of chosen channels over a dataset.

The running top-k is a small pytree of [C,k] arrays on the device. Each batch is
reduced (per image and channel: its strongest positions) and merged with it in
one jitted call, so activations never leave the device and never accumulate:

    state = init_topk(num_channels=len(channels), k=9)
    for x, ids, valid in batches:                        # x [B,H,W,C] preprocessed, static B
        state = update_topk(state, model, x, ids, valid, channels, layer="block5")
    state.values[c], state.image_ids[c], state.positions[c]   # channel channels[c], best first

Order is total and deterministic: value descending, then image id ascending,
then position (y, x) ascending. The top-k of a set under a total order is
unique, so the result does not depend on the batch size or the order of batches.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from saliency_jax.models.inspect import layer_shapes
from saliency_jax.models.model import Model
from saliency_jax.targets import check_unit, indices

NO_IMAGE = np.iinfo(np.int32).max
"""`image_ids` of an empty slot (and of padded images): sorts after every real image id."""


class TopK(NamedTuple):
    """Running (or final) top-k per channel, best first.

    Attributes:
      values: float32 [C,k], descending; -inf marks an empty slot.
      image_ids: int32 [C,k], the image's id (its position in the source); `NO_IMAGE` when empty.
      positions: int32 [C,k,2], (y, x) in the layer's grid.
    """

    values: jax.Array
    image_ids: jax.Array
    positions: jax.Array


def init_topk(num_channels: int, k: int) -> TopK:
    """An empty state: every slot -inf, `NO_IMAGE`, position (0, 0)."""
    if num_channels < 1 or k < 1:
        raise ValueError(f"num_channels and k must be >= 1, got {num_channels} and {k}")
    return TopK(
        jnp.full((num_channels, k), -jnp.inf, jnp.float32),
        jnp.full((num_channels, k), NO_IMAGE, jnp.int32),
        jnp.zeros((num_channels, k, 2), jnp.int32),
    )


def layer_shape(model: Model, layer: str, channels) -> tuple[int, int, int]:
    """(h, w, K) of a spatial layer at the model's input size, after checking `layer` and `channels`.

    Raises:
      ValueError: unknown layer, a channel outside [0, K), no channels, or a layer
        without spatial positions (e.g. "pool").
    """
    shapes = layer_shapes(model, (*model.input_size, model.channels))  # in forward order
    if layer not in shapes:
        raise ValueError(f"unknown layer {layer!r} for {model.name}; choose one of {', '.join(shapes)}")
    check_unit(layer, np.asarray(indices(channels, "channels")), None, shapes)
    if len(shapes[layer]) != 3:
        raise ValueError(f"top activations need a spatial layer [h,w,K]; {layer!r} has shape {shapes[layer]}")
    return shapes[layer]


def check_candidates(k: int, num_images: int, per_image: int, grid: tuple[int, int] | None = None) -> None:
    """Raises ValueError unless k <= num_images * per_image candidates (and per_image fits the grid)."""
    if k < 1 or per_image < 1:
        raise ValueError(f"k and per_image must be >= 1, got k={k}, per_image={per_image}")
    if grid is not None and per_image > grid[0] * grid[1]:
        raise ValueError(f"per_image={per_image} but the layer has only {grid[0]}x{grid[1]} = "
                         f"{grid[0] * grid[1]} positions per image")
    if k > num_images * per_image:
        raise ValueError(f"k={k} but only {num_images} images x per_image={per_image} = "
                         f"{num_images * per_image} candidates; lower k or raise per_image")


def image_candidates(act, image_ids, valid, *, per_image: int = 1, min_distance: int = 0):
    """Each image's `per_image` strongest positions, per channel.

    Args:
      act: activations [B,h,w,C].
      image_ids: int32 [B].
      valid: bool [B]; invalid (padding) images give -inf candidates with id `NO_IMAGE`.
      per_image: positions taken per image and channel.
      min_distance: with per_image > 1, positions are picked greedily (strongest
        first) and each pick rules out the cells within this Chebyshev distance
        (0: plain top-N), so one image's picks show different places.

    Returns:
      (values [C,B*N], image ids [C,B*N], y [C,B*N], x [C,B*N]); within an image,
      ties go to the lower position (row-major).
    """
    b, h, w, c = act.shape
    v = jnp.transpose(act.astype(jnp.float32), (3, 0, 1, 2)).reshape(c, b, h * w)
    v = jnp.where(jnp.isnan(v), -jnp.inf, v)
    v = jnp.where(v == 0, 0.0, v)  # -0.0 -> 0.0: equal values must compare equal in the sort
    v = jnp.where(valid[None, :, None], v, -jnp.inf)
    if min_distance == 0 or per_image == 1:
        vals, idx = lax.top_k(v, per_image)  # ties: lower index first
    else:
        ys, xs = jnp.divmod(jnp.arange(h * w), w)

        def pick(v, _):
            i = jnp.argmax(v, axis=-1)  # first maximum: lower index on ties
            best = jnp.take_along_axis(v, i[..., None], axis=-1)[..., 0]
            near = (jnp.abs(ys - ys[i][..., None]) <= min_distance) & (jnp.abs(xs - xs[i][..., None]) <= min_distance)
            return jnp.where(near, -jnp.inf, v), (best, i)

        _, (vals, idx) = lax.scan(pick, v, None, length=per_image)
        vals, idx = jnp.moveaxis(vals, 0, -1), jnp.moveaxis(idx, 0, -1)
    ids = jnp.where(valid, image_ids.astype(jnp.int32), NO_IMAGE)
    ids = jnp.broadcast_to(ids[None, :, None], vals.shape)
    y, x = jnp.divmod(idx.astype(jnp.int32), w)
    return tuple(a.reshape(c, -1) for a in (vals, ids, y, x))


def merge_topk(state: TopK, values, image_ids, y, x) -> TopK:
    """The k best of the state and new candidates [C,M] (value desc, image id asc, (y, x) asc)."""
    k = state.values.shape[1]
    keys = (
        -jnp.concatenate([state.values, values], axis=1),
        jnp.concatenate([state.image_ids, image_ids], axis=1),
        jnp.concatenate([state.positions[..., 0], y], axis=1),
        jnp.concatenate([state.positions[..., 1], x], axis=1),
    )
    neg, ids, ys, xs = lax.sort(keys, dimension=1, num_keys=4)
    return TopK(-neg[:, :k], ids[:, :k], jnp.stack([ys[:, :k], xs[:, :k]], axis=-1))


@functools.partial(jax.jit, static_argnames=("layer", "per_image", "min_distance"))
def update_topk(state: TopK, model: Model, x, image_ids, valid, channels, *, layer: str, per_image: int = 1,
                min_distance: int = 0) -> TopK:
    """One streaming step: forward a batch, reduce it, merge into the running top-k (one XLA program).

    Args:
      state: the running `TopK` ([C,k]).
      model: the `Model`; only the layers up to `layer` are computed.
      x: preprocessed images [B,H,W,3] (a static B: pad the last batch).
      image_ids: int32 [B], each image's id (e.g. its position in the source).
      valid: bool [B], False for padding.
      channels: int32 [C], the channels of `layer` to track (checked by `layer_shape`).
      layer: a spatial layer name (static).
      per_image, min_distance: see `image_candidates` (static).

    Returns:
      The new `TopK`.
    """
    act = model.apply(x)[1][layer]
    act = jnp.take(act, jnp.asarray(channels, jnp.int32), axis=-1)
    candidates = image_candidates(act, jnp.asarray(image_ids), jnp.asarray(valid, bool), per_image=per_image,
                                  min_distance=min_distance)
    return merge_topk(state, *candidates)
