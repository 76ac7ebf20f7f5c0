"""One compiled, data-parallel step: uint8 pixels [B,h,w,3] -> saliency maps [B,h,w] + predictions.

Preprocessing, the forward pass, the attribution (the same jitted, vmapped
`attribute_batch` that `saliency_jax.attribute` runs), the channel reduction
and normalisation of `saliency_map`, and the cast to the storage dtype are one
XLA program, sharded over a `Mesh` on the batch axis. Only uint8 pixels go to the
devices and only maps and a few scalars per image come back.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.maps import saliency_map
from saliency_jax.methods import Method, as_method, attribute_batch
from saliency_jax.models.model import LUMA, Model
from saliency_jax.targets import TOP1
from saliency_jax.sharding import batch_sharding, data_mesh, replicated, round_up


class StepOutput(NamedTuple):
    """Per image of a batch (host arrays)."""

    maps: np.ndarray          # [B,h,w] float16/float32 in [0, 1] (the paper's max_c |grad|, normalised)
    target: np.ndarray        # [B] int32: the class explained
    predicted: np.ndarray     # [B] int32: argmax of the logits
    score: np.ndarray         # [B] float32: softmax probability of `predicted`
    target_score: np.ndarray  # [B] float32: softmax probability of `target`


def make_step(model: Model, method: str | Method, *, batch_size: int, key=None, options: dict | None = None,
              mesh=None, dtype=np.float32) -> tuple[Callable, int]:
    """Builds the sharded step.

    Args:
      model: the classifier (its `input_size`, `mean`, `std` define the preprocessing).
      method: a method value, or an `available_methods()` name (with `options`).
      batch_size: images per step; rounded up to a multiple of the mesh's device count.
      key: `jax.random` key for the noise-based methods (default `key(0)`); every
        image uses the same key, so a map never depends on its batch or device.
      options: with a method name, its options (num_samples, num_steps, chunk_size, layer, ...).
      mesh: a `data_mesh()` (default: all local devices).
      dtype: storage dtype of the maps (float32 or float16).

    Returns:
      (step, padded batch size): ``step(pixels uint8 [B,h,w,3], targets int32 [B])``
      returns a `StepOutput`; a target of -1 (`TOP1`) means the image's top-1 class.
    """
    mesh = data_mesh() if mesh is None else mesh
    batch = round_up(batch_size, mesh.devices.size)
    method = as_method(method, **dict(options or {}))
    channels = model.channels
    if channels not in (1, 3):
        raise ValueError(f"the batch job reads RGB image files; {model.name} expects {channels} channels "
                         "(use saliency_jax.attribute on your own arrays)")
    method = method.prepare(model, (*model.input_size, channels), images_per_call=batch)
    key = jax.random.key(0) if key is None else key
    split = batch_sharding(mesh)
    dtype = np.dtype(dtype).name
    placed_model, placed_key = jax.device_put(model, replicated(mesh)), jax.device_put(key, replicated(mesh))

    def step(pixels: np.ndarray, targets: np.ndarray):
        """Dispatches one batch (asynchronously); `fetch(result)` brings it to the host."""
        if len(pixels) != batch:
            raise ValueError(f"step expects batches of {batch} images, got {len(pixels)}")
        # Inputs committed to the mesh (split on the batch axis, model and key replicated): the
        # compiled program runs data parallel and its outputs stay split the same way.
        return _step(placed_model, placed_key, jax.device_put(pixels, split),
                     jax.device_put(np.asarray(targets, np.int32), split), method, dtype=dtype)

    return step, batch


def fetch(result) -> StepOutput:
    """Host copy of a step's result (blocks until computed)."""
    return StepOutput(*(np.asarray(a) for a in result))


@functools.partial(jax.jit, static_argnames=("dtype",))
def _step(model, key, pixels, targets, method, *, dtype):
    # Module-level jit: a second job with the same model, method and shapes does not recompile.
    x = pixels.astype(jnp.float32)
    if model.channels == 1:  # the luma of the RGB files, as Model.preprocess
        x = jnp.clip(jnp.round(x @ jnp.asarray(LUMA)[:, None]), 0, 255)
    x = (x - np.float32(model.mean)) / np.float32(model.std)
    logits = model.apply(x)[0]
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    predicted = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    target = jnp.where(targets == TOP1, predicted, targets).astype(jnp.int32)
    grads = attribute_batch(method, model, x, target, key)
    maps = saliency_map(grads).astype(jnp.dtype(dtype))

    def pick(p, i):
        return jnp.take_along_axis(p, i[:, None], axis=-1)[:, 0]

    return maps, target, predicted, pick(probs, predicted), pick(probs, target)
