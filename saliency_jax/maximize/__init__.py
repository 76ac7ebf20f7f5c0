"""Class-model visualisation and activation maximisation (Simonyan et al. 2014, Sec. 2; Erhan et al. 2009).

Gradient ascent on an image with any optax optimiser, in a `lax.scan`, projected
after every step with `optax.projections`, written for one target (`maximize`)
and vmapped over many (`visualize`, `class_model`, `neuron_model`):

    from saliency_jax.maximize import class_model, neuron_model
    vis = class_model(model, [130, 285, 967])             # the paper's preset
    vis.pixels                                            # uint8 [3,224,224,3]
    vis = neuron_model(model, "block9", [0, 1, 2], key=jax.random.key(0))   # ||I|| = radius

Or compose your own objective:

    from saliency_jax.maximize import objectives as obj, transforms as tr
    objective = obj.class_score([1, 2]) + 0.1 * obj.channel("head", [5, 6]) - 1e-3 * obj.l2()
    result = visualize(model, objective, key=key, num_steps=200, optimizer=optax.adam(0.05),
                       transforms=tr.standard())

Modules: `objectives` (what to raise), `parameterizations` (what moves), `transforms`
(random robustness transforms), `optimize` (the loop), `presets` (paper, sphere, lucid).
"""

from saliency_jax.maximize import objectives, parameterizations, presets, transforms
from saliency_jax.maximize.objectives import (
    Objective,
    blur,
    channel,
    class_score,
    l1,
    l2,
    objective,
    stack,
    total_variation,
)
from saliency_jax.maximize.optimize import Result, State, forward_fn, init_state, maximize, run, step, visualize
from saliency_jax.maximize.parameterizations import LucidImage, Pixels, pixel_box
from saliency_jax.maximize.presets import PRESETS, Visualization, class_model, neuron_model, preset_options

__all__ = [
    "PRESETS",
    "LucidImage",
    "Objective",
    "Pixels",
    "Result",
    "State",
    "Visualization",
    "blur",
    "channel",
    "class_model",
    "class_score",
    "forward_fn",
    "init_state",
    "l1",
    "l2",
    "maximize",
    "neuron_model",
    "objective",
    "objectives",
    "parameterizations",
    "pixel_box",
    "preset_options",
    "presets",
    "run",
    "stack",
    "step",
    "total_variation",
    "transforms",
    "visualize",
]
