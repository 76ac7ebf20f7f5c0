"""Named feature taps: record an activation under a layer name and expose it to `Module.perturb`."""

from __future__ import annotations

import flax.linen as nn


def tap(module: nn.Module, feats: dict, name: str, y):
    """Stores `y` as `feats[name]` and returns it, perturbed only when asked.

    The perturbation is added when the "perturbations" collection is mutable (to
    create all of them) or holds `name` (a caller may perturb any subset, e.g.
    one layer for Grad-CAM), so a plain forward pass carries no extra variables.
    Call inside the module's compact `__call__`.
    """
    if module.is_mutable_collection("perturbations") or module.has_variable("perturbations", name):
        y = module.perturb(name, y)
    feats[name] = y
    return y
