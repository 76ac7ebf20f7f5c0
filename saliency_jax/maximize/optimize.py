"""Gradient ascent on an image: any optax optimiser in a `lax.scan`, projected after every step.

Written for ONE target (`maximize`, pure: jit it, vmap it); `visualize` is the
batched entry point: one image per target in one vmapped, jit-compiled program,
cut into chunks of targets for memory, with the step loop optionally cut into
segments so a progress bar can move. Each step:

    key, sub = split(key)
    value, g = value_and_grad(params -> objective(p(params), *model(T_sub(p(params)))))
    params  = project(params + optimizer_update(-g))          # ascent; optax minimises

with `p` the parameterisation, `T_sub` the random transforms and `project` the
optional box and/or L2 constraint from `optax.projections` (box first, then the
norm, so ||x|| = radius holds exactly after every step).

The loop carries `State(params, opt_state, key)`; the result holds the final
image (model space), the objective at the start of every step and the image
norm after every step (for plotting and for checking the constraint).
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Any, Callable, Hashable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from saliency_jax.models.inspect import layer_shapes
from saliency_jax.batching import padded_batches, static_batch_size
from saliency_jax.maximize import objectives as _objectives
from saliency_jax.maximize import transforms as _transforms
from saliency_jax.maximize.fingerprint import fingerprint
from saliency_jax.maximize.parameterizations import LucidImage, Pixels
from saliency_jax.models.model import Model

__all__ = ["State", "Result", "forward_fn", "init_state", "step", "run", "maximize", "visualize", "CONSTRAINTS"]

CONSTRAINTS = ("sphere", "ball")


class State(NamedTuple):
    """The scan carry: parameters, optimiser state, and the key for the remaining steps."""

    params: Any
    opt_state: optax.OptState
    key: jax.Array


class Result(NamedTuple):
    """image [H,W,C] (model space), values [num_steps], norms [num_steps]; a leading [T] when batched."""

    image: Any
    values: Any
    norms: Any


def forward_fn(model_or_fn) -> Callable:
    """Per-image `x[H,W,C] -> (logits[K], {layer: activation without batch axis})`.

    A `Model` gives its named features; a bare logit function gives none.
    """
    if isinstance(model_or_fn, Model):
        model = model_or_fn

        def forward(x):
            logits, features = model.apply(x[None])
            return logits[0], jax.tree.map(lambda f: f[0], features)

        return forward
    return lambda x: (model_or_fn(x), {})


def _projection(radius, constraint: str, box) -> Callable | None:
    """params -> params: box (optax.projections.projection_box) then the L2 sphere or ball."""
    if radius is None and box is None:
        return None

    def project(params):
        if box is not None:
            params = optax.projections.projection_box(params, box[0], box[1])
        if radius is not None:
            if constraint == "sphere":
                params = optax.projections.projection_l2_sphere(params, radius)
            else:
                params = optax.projections.projection_l2_ball(params, radius)
        return params

    return project


def init_state(parameterization, optimizer: optax.GradientTransformation, shape, *, key, project=None) -> State:
    """Initial parameters (projected if `project`), optimiser state and loop key."""
    init_key, loop_key = jax.random.split(key)
    params = parameterization.init(init_key, tuple(shape))
    if project is not None:
        params = project(params)
    return State(params, optimizer.init(params), loop_key)


def step(state: State, forward, objective, *, optimizer, parameterization, transforms=(), project=None):
    """One ascent step: (new State, (objective value, ||image||) at the old parameters)."""
    key, sub = jax.random.split(state.key)

    def value_fn(params):
        image = parameterization(params)
        logits, features = forward(_transforms.apply(transforms, sub, image))
        return objective(image, features, logits), optax.tree.norm(image)

    (value, norm), grad = jax.value_and_grad(value_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(jax.tree.map(jnp.negative, grad), state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if project is not None:
        params = project(params)
    return State(params, opt_state, key), (value, norm)


def run(state: State, forward, objective, *, num_steps: int, parameterization, **step_options):
    """`num_steps` steps in a `lax.scan`: (State, values [num_steps], norms [num_steps]).

    values[i] is the objective at the start of step i, norms[i] the image norm after it.
    """

    def body(state, _):
        return step(state, forward, objective, parameterization=parameterization, **step_options)

    state, (values, before) = lax.scan(body, state, length=num_steps)
    # The norm after step i is the one step i+1 saw: only the last needs the image built again.
    norms = jnp.append(before[1:], optax.tree.norm(parameterization(state.params)))
    return state, values, norms


def maximize(
    model_or_fn,
    objective,
    *,
    key,
    num_steps: int,
    optimizer: optax.GradientTransformation,
    image_shape=None,
    parameterization=Pixels(),
    transforms=(),
    radius=None,
    constraint: str = "sphere",
    box=None,
) -> Result:
    """argmax over images of `objective`, for ONE target (pure; jit and vmap it freely).

    Args:
      model_or_fn: a `Model`, or any per-image logit function `[H,W,C] -> [K]`.
      objective: an `Objective` for one target (see `saliency_jax.maximize.objectives`).
      key: `jax.random` key (initialisation and transforms).
      num_steps: ascent steps (static).
      optimizer: any optax optimiser (minimising; the loop negates the gradient).
      image_shape: (H, W, C); default the model's input size and channel count.
      parameterization: `Pixels()` (the paper) or `LucidImage(...)`.
      transforms: tuple of random transforms (`saliency_jax.maximize.transforms`).
      radius: if set, project onto ||x||_2 = radius ("sphere") or <= radius ("ball").
      constraint: "sphere" | "ball".
      box: (low, high), scalars or per channel: clip pixels (model space), before the norm.

    Returns:
      `Result(image [H,W,C], values [num_steps], norms [num_steps])`.

    Example:
      >>> res = maximize(model, class_score(130) - 1e-3 * l2(), key=jax.random.key(0),
      ...                num_steps=100, optimizer=optax.adam(0.05))
      >>> model.deprocess(res.image)                 # uint8 [224,224,3]
    """
    shape = _image_shape(model_or_fn, image_shape)
    project = _projection(radius, constraint, box)
    state = init_state(parameterization, optimizer, shape, key=key, project=project)
    state, values, norms = run(
        state, forward_fn(model_or_fn), objective, num_steps=num_steps, optimizer=optimizer,
        parameterization=parameterization, transforms=tuple(transforms), project=project,
    )
    return Result(parameterization(state.params), values, norms)


# ---- batched, chunked, compiled once ----------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Static:
    """Everything that keys the compilation besides shapes, compared by value.

    The optimiser enters by its `fingerprint` (code and captured hyperparameters),
    so `optax.adam(0.05)` built twice compiles once; the object itself rides along
    uncompared, to be traced.
    """

    fn: Callable | None  # bare logit function, or None for a Model
    optimizer: optax.GradientTransformation = dataclasses.field(compare=False)
    optimizer_key: Hashable
    parameterization: Any
    transforms: tuple
    shape: tuple
    constraint: str


def _pieces(model, static: _Static, bounds):
    forward = forward_fn(model if static.fn is None else static.fn)
    radius, box = bounds
    project = _projection(radius, static.constraint, box)
    options = dict(optimizer=static.optimizer, transforms=static.transforms, project=project)
    return forward, project, options


# Every target uses the same key, so the key (and with it every random transform) stays outside
# the vmap: one draw per step shared by all targets, which keeps jitter a dynamic slice and the
# warp's coordinates unbatched instead of per-target gathers.
_BATCHED = State(params=0, opt_state=0, key=None)


@functools.partial(jax.jit, static_argnames=("static",))
def _init_many(model, objective, key, bounds, *, static: _Static):
    _, project, _ = _pieces(model, static, bounds)
    num = len(jax.tree.leaves(objective)[0])
    one = init_state(static.parameterization, static.optimizer, static.shape, key=key, project=project)
    widen = lambda a: jnp.broadcast_to(a, (num,) + a.shape)  # noqa: E731
    return State(jax.tree.map(widen, one.params), jax.tree.map(widen, one.opt_state), one.key)


@functools.partial(jax.jit, static_argnames=("static", "num_steps"))
def _run_many(model, objective, state, bounds, *, static: _Static, num_steps: int):
    forward, _, options = _pieces(model, static, bounds)

    def one(objective, state):
        return run(state, forward, objective, num_steps=num_steps,
                   parameterization=static.parameterization, **options)

    return jax.vmap(one, in_axes=(0, _BATCHED), out_axes=(_BATCHED, 0, 0))(objective, state)


@functools.partial(jax.jit, static_argnames=("static",))
def _images_many(params, *, static: _Static):
    return jax.vmap(static.parameterization)(params)


def visualize(
    model_or_fn,
    objective,
    *,
    key,
    num_steps: int,
    optimizer: optax.GradientTransformation,
    image_shape=None,
    parameterization=Pixels(),
    transforms=(),
    radius=None,
    constraint: str = "sphere",
    box=None,
    chunk_size: int | None = None,
    steps_per_call: int | None = None,
    progress: Callable[[int], Any] | None = None,
) -> Result:
    """One image per target of a batched objective, in one vmapped, jit-compiled program.

    Every target uses the same `key`, so a target's image does not depend on its
    neighbours, the chunk size or `steps_per_call`: it equals `maximize` run on
    that target alone. Inputs are checked on the host before compiling.

    Args:
      model_or_fn, key, num_steps, optimizer, image_shape, parameterization, transforms,
        radius, constraint, box: as in `maximize`. Radius and box are data: changing them
        does not recompile. The optimizer keys the compilation by value (its code and
        hyperparameters, `fingerprint`): an equal optimizer built again reuses it.
      objective: an `Objective` with a leading target axis of length T on its target leaves
        (e.g. `class_score([130, 285])`), or one target (T = 1).
      chunk_size: targets optimised at once (static); default all. The last chunk is padded.
      steps_per_call: steps per compiled call (the loop state is carried between calls);
        default all. Smaller values let `progress` move during long runs.
      progress: called with 0 once the inputs are checked (before compiling), then with the
        number of target-steps done after every call.

    Returns:
      `Result` of NumPy arrays: image [T,H,W,C], values [T,num_steps], norms [T,num_steps].

    Raises:
      ValueError: non-positive `num_steps`/`radius`/`chunk_size`/`steps_per_call`, an unknown
        class/layer/channel/position, a bad constraint or box. TypeError: bad objective/optimizer.
    """
    num_steps, chunk_size, segment = _check_counts(num_steps, chunk_size, steps_per_call)
    _check_optimizer(optimizer)
    bounds = _check_bounds(radius, constraint, box, parameterization)
    _check_parameterization(parameterization)
    transforms = _transforms.check_transforms(transforms)
    shape = _image_shape(model_or_fn, image_shape)
    key = _check_key(key)
    model = _model_or_none(model_or_fn)
    leaves, treedef, total = _target_leaves(model_or_fn, objective, parameterization, transforms, shape, key)
    static = _Static(None if model is not None else model_or_fn, optimizer, fingerprint(optimizer),
                     parameterization, transforms, shape, constraint)
    if progress is not None:
        progress(0)  # inputs are valid: a progress bar may open now (the first call compiles)
    chunks = []
    for start, stop, chunk in padded_batches(leaves, static_batch_size(total, chunk_size or total)):
        targets = jax.tree.unflatten(treedef, [jnp.asarray(c) for c in chunk])
        result = _optimize_chunk(model, targets, key, bounds, static, num_steps=num_steps, segment=segment,
                                 progress=progress, count=stop - start)
        chunks.append([np.asarray(r)[: stop - start] for r in result])
    return Result(*(np.concatenate(parts) for parts in zip(*chunks)))


def _target_leaves(model_or_fn, objective, parameterization, transforms, shape, key):
    """The objective checked against the model, every leaf given the target axis:
    (host leaves, treedef, number of targets T)."""
    num_classes, shapes = _output_shapes(model_or_fn, parameterization, transforms, shape, key)
    _objectives.check_objective(objective, num_classes=num_classes, shapes=shapes)
    if not jax.tree.leaves(objective):
        objective = 1.0 * objective  # a leaf to carry the target axis
    total = _objectives.num_targets(objective) or 1
    leaves, treedef = jax.tree.flatten(_objectives.broadcast_targets(objective, total))
    return tuple(np.asarray(leaf) for leaf in leaves), treedef, total


def _optimize_chunk(model, objective, key, bounds, static: _Static, *, num_steps: int, segment: int,
                    progress, count: int) -> Result:
    """One chunk of targets through all `num_steps`, `segment` steps per compiled call.

    `progress` (if set) hears `count * steps` after each call, once its work is done.
    """
    state = _init_many(model, objective, key, bounds, static=static)
    values, norms = [], []
    for done in range(0, num_steps, segment):
        n = min(segment, num_steps - done)
        state, v, nrm = _run_many(model, objective, state, bounds, static=static, num_steps=n)
        values.append(v)
        norms.append(nrm)
        if progress is not None:
            jax.block_until_ready(v)  # report finished work, not dispatched work
            progress(count * n)
    image = _images_many(state.params, static=static)
    return Result(image, np.concatenate([np.asarray(v) for v in values], axis=1),
                  np.concatenate([np.asarray(n) for n in norms], axis=1))


# ---- host-side checks ---------------------------------------------------------------------------
def _check_counts(num_steps, chunk_size, steps_per_call) -> tuple[int, int | None, int]:
    """(num_steps, chunk_size or None, steps per compiled call), each a positive int."""
    num_steps = _positive_int(num_steps, "num_steps")
    chunk_size = None if chunk_size is None else _positive_int(chunk_size, "chunk_size")
    if steps_per_call is None:
        return num_steps, chunk_size, num_steps
    return num_steps, chunk_size, min(_positive_int(steps_per_call, "steps_per_call"), num_steps)


def _check_optimizer(optimizer) -> None:
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}")


def _check_bounds(radius, constraint: str, box, parameterization) -> tuple:
    """(radius as float32 or None, box as (low, high) arrays or None) for `_projection`."""
    if constraint not in CONSTRAINTS:
        raise ValueError(f"constraint must be one of {', '.join(CONSTRAINTS)}, got {constraint!r}")
    if radius is not None:
        if isinstance(radius, bool) or not isinstance(radius, numbers.Real) or not radius > 0:
            raise ValueError(f"radius must be a positive number, got {radius!r}")
        radius = jnp.float32(radius)
    if box is not None:
        box = _check_box(box)
    pixels = isinstance(parameterization, Pixels)
    if (radius is not None or box is not None) and not pixels:
        raise ValueError("radius and box constrain pixels: use them with Pixels(); LucidImage keeps its own range")
    if radius is not None and constraint == "sphere" and pixels and parameterization.init_scale == 0:
        raise ValueError("the sphere constraint needs a non-zero start: use Pixels(init_scale=...) > 0")
    return radius, box


def _check_parameterization(parameterization) -> None:
    if not isinstance(parameterization, (Pixels, LucidImage)) and not (
        callable(parameterization) and hasattr(parameterization, "init")
    ):
        raise TypeError("parameterization must have init(key, shape) and __call__(params)")


def _model_or_none(model_or_fn) -> Model | None:
    """The `Model`, or None for a bare logit function (TypeError for anything else)."""
    if isinstance(model_or_fn, Model):
        return model_or_fn
    if not callable(model_or_fn):
        raise TypeError(f"expected a Model or a logit function, got {type(model_or_fn).__name__}")
    return None


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_key(key):
    if key is None:
        raise ValueError("pass key=jax.random.key(seed)")
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    return key


def _check_box(box):
    try:
        low, high = box
    except (TypeError, ValueError):
        raise ValueError(f"box must be (low, high), got {box!r}") from None
    low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)
    if low.ndim > 1 or high.ndim > 1 or np.any(low >= high):
        raise ValueError(f"box must be (low, high) with low < high (scalars or per channel), got {box!r}")
    return jnp.asarray(low), jnp.asarray(high)


def _image_shape(model_or_fn, image_shape):
    if image_shape is None:
        if not isinstance(model_or_fn, Model):
            raise ValueError("a bare logit function needs image_shape=(H, W, C)")
        return (*model_or_fn.input_size, model_or_fn.channels)
    shape = tuple(int(d) for d in image_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape must be (H, W, C) with positive sizes, got {image_shape!r}")
    return shape


def _output_shapes(model_or_fn, parameterization, transforms, shape, key):
    """(K, {layer: per-image feature shape}) of the model on the transformed image, by eval_shape
    (a `Model`'s layer shapes come from the per-architecture cache: no trace on a repeat call)."""
    params = jax.eval_shape(lambda k: parameterization.init(k, shape), key)
    seen = jax.eval_shape(
        lambda p, k: _transforms.apply(transforms, k, parameterization(p)), params, key
    )
    if isinstance(model_or_fn, Model):
        return model_or_fn.num_classes, layer_shapes(model_or_fn, seen.shape)
    logits, features = jax.eval_shape(forward_fn(model_or_fn), seen)
    if logits.ndim != 1:
        raise ValueError(f"the logit function must return logits [K] for one image, got shape {logits.shape}")
    return logits.shape[0], {name: f.shape for name, f in features.items()}
