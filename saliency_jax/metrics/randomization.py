"""The model-parameter randomisation check (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

If a map explains the *model*, destroying the model's weights must change the
map. The cascading check redraws the parameters layer by layer from the top
(the classifier) down to the first convolution, computes the map of each
progressively randomised model for the same images and classes, and compares
it with the trained model's map by Spearman rank correlation and SSIM. A map
that stays similar (an edge detector of the input, say) fails the check.

A ``Model`` is a pytree whose leaves are its variables, so randomising a layer
is a ``jax.tree`` map over that layer's parameters with keys split from one
explicit key. Each weight tensor is redrawn from a Gaussian with that tensor's
own mean and standard deviation: Adebayo et al. re-initialise from the training
initialiser, which a converted checkpoint (batch norm folded into the
convolutions) no longer has; matching each tensor's scale keeps the
activations of the randomised network in range. A layer's new weights depend
only on the key and the layer's name, so the cascade is nested: stage s
randomises exactly the layers of stage s-1 (with the same values) plus one.

Example:
  >>> check = cascading_randomization(model, x, "top1", key=jax.random.key(0), method="vanilla")
  >>> for name, rho, s in zip(check.stages, check.spearman.mean(1), check.ssim.mean(1)):
  ...     print(f"{name:>12}  spearman {rho:.2f}  ssim {s:.2f}")
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.metrics.similarity import spearman, ssim
from saliency_jax.models.model import Model

__all__ = ["RandomizationCheck", "cascading_randomization", "parameter_stages", "randomize_stages"]


class RandomizationCheck(NamedTuple):
    """Similarity of the trained model's maps to those of progressively randomised models.

    Attributes:
      stages: ``"none"`` (the trained model: similarity 1), then the layer
        randomised at each stage, top first; row ``s`` has every layer of rows
        ``1..s`` randomised.
      spearman: ``[S+1, B]`` Spearman rank correlation per stage and image.
      ssim: ``[S+1, B]`` SSIM per stage and image (maps in [0, 1]).
      targets: ``[B]`` the classes explained (fixed across stages).
    """

    stages: tuple[str, ...]
    spearman: np.ndarray
    ssim: np.ndarray
    targets: np.ndarray


def parameter_stages(model: Model) -> tuple[str, ...]:
    """The model's top-level parameter groups (layers), in the order the forward pass calls them.

    Found by tracing one abstract forward pass (``jax.eval_shape``, no compute)
    with ``flax.linen.intercept_methods``; groups the trace does not reach are
    appended in sorted order. For EfficientNet-Lite0: ``stem_conv, mbconv0, ...,
    mbconv15, head_conv, classifier``.
    """
    params = model.variables["params"]
    order: list[str] = []

    def record(next_fun, args, kwargs, context):
        path = context.module.path
        if path and path[0] in params and path[0] not in order:
            order.append(path[0])
        return next_fun(*args, **kwargs)

    x = jax.ShapeDtypeStruct((1, *model.input_size, model.channels), jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda m, x: m.apply(x), model, x)
    return tuple(order) + tuple(sorted(set(params) - set(order)))


def _redraw(tree, key):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    keys = jax.tree.unflatten(treedef, list(keys))
    return jax.tree.map(
        lambda w, k: (jnp.mean(w) + jnp.std(w) * jax.random.normal(k, w.shape, jnp.float32)).astype(w.dtype),
        tree,
        keys,
    )


def randomize_stages(model: Model, stages: Sequence[str], *, key) -> Model:
    """A copy of ``model`` with the parameters of the named top-level groups redrawn.

    Each tensor ``w`` becomes ``mean(w) + std(w) * N(0, 1)``; the key of a
    group is ``fold_in(key, crc32(name))``, so the same group gets the same
    values whichever other groups are randomised with it.

    Raises:
      ValueError: a name that is not a top-level parameter group (lists them).
    """
    params = model.variables["params"]
    unknown = [s for s in stages if s not in params]
    if unknown:
        raise ValueError(
            f"unknown parameter group(s) {', '.join(map(repr, unknown))}; the model has {', '.join(params)}"
        )
    return _replace_groups(model, _redraw_groups({n: params[n] for n in stages}, key, tuple(stages)))


@functools.partial(jax.jit, static_argnames="names")
def _redraw_groups(params, key, names: tuple[str, ...]) -> dict:
    """{name: redrawn group}, one compiled program for all of them."""
    return {name: _redraw(params[name], jax.random.fold_in(key, zlib.crc32(name.encode()))) for name in names}


def _replace_groups(model: Model, groups: dict) -> Model:
    return dataclasses.replace(model, variables={**model.variables, "params": {**model.variables["params"], **groups}})


def cascading_randomization(
    model: Model,
    x,
    targets="top1",
    *,
    key,
    method="vanilla",
    stages: Sequence[str] | None = None,
    batch_size: int | None = None,
    **options,
) -> RandomizationCheck:
    """Cascading parameter randomisation check for a batch of images.

    Args:
      model: a ``Model`` (its parameters are what gets randomised).
      x: preprocessed images ``[B,H,W,C]``.
      targets: ``"top1"`` (the *trained* model's prediction, then kept fixed),
        an int, or ints ``[B]``.
      key: ``jax.random`` key; split into the parameter key and the key of
        the attribution method (the same for every stage, so noise-based
        methods see the same noise).
      method: attribution method, a value or a name (``saliency_jax.available_methods()``).
      stages: parameter groups to randomise, in cascade order; default every
        group from the output down (``parameter_stages(model)`` reversed).
      batch_size: passed to ``attribute``.
      **options: the attribution method's options.

    Returns:
      ``RandomizationCheck(stages, spearman [S+1,B], ssim [S+1,B], targets [B])``;
      row 0 is the trained model against itself (both 1).
    """
    from saliency_jax.methods import attribute
    from saliency_jax.targets import TOP1, check_targets
    from saliency_jax.maps import saliency_map

    if not isinstance(model, Model):
        raise TypeError(
            f"cascading_randomization needs a Model (its parameters are randomised), got {type(model).__name__}"
        )
    if key is None:
        raise ValueError("cascading_randomization: pass key=jax.random.key(seed)")
    order = tuple(reversed(parameter_stages(model))) if stages is None else tuple(stages)
    if not order:
        raise ValueError("cascading_randomization: no stages to randomise")
    param_key, attr_key = jax.random.split(key)
    x = model.check_input(x)
    t = np.asarray(check_targets(targets, len(x), model.num_classes))
    if (t == TOP1).any():
        t = np.asarray(jnp.argmax(model.logits(x), axis=-1), np.int32)
    unknown = [s for s in order if s not in model.variables["params"]]
    if unknown:
        randomize_stages(model, unknown, key=param_key)  # raises, naming them, before any work
    redrawn = _redraw_groups({n: model.variables["params"][n] for n in order}, param_key, order)

    def maps_of(m):
        grads = attribute(m, x, t, method=method, key=attr_key, batch_size=batch_size, **options)
        return saliency_map(jnp.asarray(grads))

    reference = maps_of(model)
    rows = [_compare(reference, reference)]
    for s in range(len(order)):
        rows.append(_compare(reference, maps_of(_replace_groups(model, {n: redrawn[n] for n in order[: s + 1]}))))
    rho, similarity = (np.stack([np.asarray(r[i]) for r in rows]) for i in (0, 1))
    return RandomizationCheck(("none",) + order, rho, similarity, t)


@jax.jit
def _compare(a, b):
    return spearman(a, b), ssim(a, b)
