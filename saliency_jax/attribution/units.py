"""Intermediate-unit targets, and the Zeiler–Fergus projection of one activation.

A unit target names one unit of a named layer of a `Model` instead of a class:

    maps = saliency_jax.attribute(model, x, unit("block5", 17), method="guided")
    maps = saliency_jax.attribute(model, x, unit("block5", [3, 9], [[4, 5], [0, 0]]), method="vanilla")

Every gradient-based method then explains the unit's activation instead of a
class score. The mechanism is the one class targets already use: a target
picks one entry of a score vector. For a class, the vector is the logits; for
a unit, it is the layer's per-channel scores (each channel's sum, max or mean
over positions, or its value at one position), `UnitTarget.scores(model)`, and
the entry is the channel. So SmoothGrad, Integrated Gradients and the backward
rules work on unit targets unchanged, and a different channel or position is
data, not a recompilation.

`project_activation` is Zeiler & Fergus's (2014) visualisation of one
activation: keep it, zero every other activation of that layer, and project to
pixels with the deconvnet rule.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.attribution.rules import RULES, backward_rule
from saliency_jax.batching import map_batches
from saliency_jax.models.inspect import layer_activation, layer_shapes
from saliency_jax.models.model import Model
from saliency_jax.targets import REDUCTIONS, check_reduce, check_unit, indices, positions



@functools.partial(jax.tree_util.register_dataclass, data_fields=["channel", "position"],
                   meta_fields=["layer", "reduce"])
@dataclasses.dataclass(frozen=True, eq=False)
class UnitTarget:
    """One unit of a named layer, as an attribution target (a pytree; `layer`, `reduce` static).

    Attributes:
      layer: feature name, one of `model.layers`.
      channel: int32 scalar, or [B] (one per image).
      position: None, or int32 (row, col) [2] / [B,2] in the layer's grid.
      reduce: "sum" | "max" | "mean" over the channel's positions (without a position).
    """

    layer: str
    channel: Any
    position: Any = None
    reduce: str = "sum"

    def scores(self, model: Model) -> Callable[[jax.Array], jax.Array]:
        """Per-image score vector the channel indexes: x [H,W,C] -> [K] for the layer's K channels.

        Each channel reduced over positions, or taken at `position` (which must
        then be one (row, col) [2], e.g. inside a vmap over the batch).
        """
        reduce, position, layer = REDUCTIONS[self.reduce], self.position, self.layer

        def scores(x):
            act = layer_activation(model, x, layer)
            if act.ndim == 1:
                return act
            if position is not None:
                return act[position[0], position[1]]
            return reduce(act, axis=tuple(range(act.ndim - 1)))

        return scores


def unit(layer: str, channel, position=None, *, reduce: str = "sum") -> UnitTarget:
    """A unit target: channel `channel` of `layer`, reduced over positions or at `position`.

    Args:
      layer: feature name of the model (e.g. "block5").
      channel: int, or ints [B] (one per image).
      position: None (the whole channel, see `reduce`), (row, col), or [B,2].
      reduce: "sum" (total activation), "max" or "mean" over positions;
        unused with a position.

    Returns:
      A `UnitTarget`, usable as `targets` of `saliency_jax.attribute`.

    Example:
      >>> maps = attribute(model, x, unit("block5", 17, (3, 4)), method="deconvnet")
    """
    if not isinstance(layer, str):
        raise ValueError(f"unit: layer must be a layer name (str), got {layer!r}")
    check_reduce(reduce, "unit")
    channel = indices(channel, "unit: channel")
    if position is not None:
        position = positions(position, "unit: position")
    return UnitTarget(layer, channel, position, reduce)


def check_unit_target(target: UnitTarget, model, image_shape, batch: int) -> UnitTarget:
    """Validates `target` against the model's layers; channel [B] and position [B,2] broadcast.

    Raises:
      ValueError: a bare logit function (no layers), unknown layer, channel or
        position out of range, or one per image with the wrong batch length.
    """
    if not isinstance(model, Model):
        raise ValueError(
            f"unit target on layer {target.layer!r} needs a Model with named layers, not a bare logit function"
        )
    check_unit(target.layer, target.channel, target.position, layer_shapes(model, image_shape))
    channel = np.asarray(target.channel)
    if channel.ndim == 1 and len(channel) != batch:
        raise ValueError(f"unit: channel must be an int or have shape [{batch}] (one per image); got {channel.shape}")
    position = target.position
    if position is not None:
        position = np.asarray(position)
        if position.ndim == 2 and len(position) != batch:
            raise ValueError(f"unit: position must be (row, col) or [{batch},2]; got shape {position.shape}")
        position = jnp.asarray(np.broadcast_to(position, (batch, 2)), jnp.int32)
    channel = jnp.asarray(np.broadcast_to(channel, (batch,)), jnp.int32)
    return UnitTarget(target.layer, channel, position, target.reduce)


def project_activation(model: Model, x, layer: str, channel, position=None, *, rule: str = "deconvnet",
                       batch_size: int | None = None):
    """Zeiler–Fergus projection of one activation per image: x [B,H,W,C] -> [B,H,W,C].

    The cotangent at `layer` is zero except at the chosen activation
    A[position, channel], which keeps its own value; it is then sent back to
    pixels with the backward `rule` (deconvnet: ReLUs pass max(g, 0); also
    "gradient" or "guided"). With no ReLU between the pixels and the unit the
    result is A * dA/dx. Jit-compiled once per (layer, rule, shape); channel and
    position are data.

    Args:
      model: a `Model`.
      x: preprocessed images [B,H,W,C].
      layer: feature name, one of `model.layers`.
      channel: int or ints [B].
      position: (row, col) or [B,2] in the layer's grid; None keeps the
        channel's whole feature map (every position at once).
      rule: "deconvnet" (default), "gradient" or "guided".
      batch_size: if set, x goes through in padded batches of this size (one
        compilation, checks done once) and the result is gathered on the host.

    Returns:
      [B,H,W,C] reconstructions in input space (np.ndarray with batch_size).
    """
    if not isinstance(model, Model):
        raise ValueError("project_activation needs a Model with named layers, not a bare logit function")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    x = model.check_input(x)
    target = check_unit_target(unit(layer, channel, position), model, x.shape[1:], len(x))
    run = functools.partial(_project_batch, model, layer=layer, rule=rule)
    if batch_size is None:
        return run(x, target.channel, target.position)
    if target.position is None:
        return map_batches(lambda x, c: run(x, c, None), (x, target.channel), batch_size)
    return map_batches(run, (x, target.channel, target.position), batch_size)


@functools.partial(jax.jit, static_argnames=("layer", "rule"))
def _project_batch(model, x, channel, position, *, layer, rule):
    def one(xi, c, p):
        act, pullback = jax.vjp(backward_rule(lambda z: layer_activation(model, z, layer), rule), xi)
        keep = jnp.arange(act.shape[-1]) == c
        if p is not None:
            keep = keep & (jnp.arange(act.shape[0])[:, None, None] == p[0]) & (
                jnp.arange(act.shape[1])[None, :, None] == p[1])
        (grad,) = pullback(jnp.where(keep, act, 0))
        return grad

    return jax.vmap(one)(x, channel, position)


__all__ = ["UnitTarget", "project_activation", "unit"]
