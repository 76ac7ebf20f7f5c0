"""Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019) as a method value.

    LRP(composite="epsilon_plus_flat")            # zennit's EpsilonPlusFlat
    LRP(composite="epsilon_gamma_box", gamma=0.25) # z^B first layer, gamma convs, epsilon dense
    LRP(composite={"conv": "zplus", "fc": "epsilon", "first": "wsquare"})   # your own

The relevance starts as the target logit (one-hot times the logits) and is
propagated by `saliency_jax.attribution.relevance.lrp`: one forward pass and
one modified backward pass, under jit and vmap, on any JAX function.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.attribution import lrp_rules
from saliency_jax.attribution.relevance import lrp, require_layers
from saliency_jax.methods.base import Method, is_model, logit_fn_of, register
from saliency_jax.models.inspect import architecture_key
from saliency_jax.targets import TOP1


def check_relevance_layers(model, image_shape, *, what: str) -> None:
    """ValueError (one line) if `model` has no conv/dense layer; traced once per architecture or function."""
    key = (architecture_key(model) if is_model(model) else model, tuple(image_shape))
    if key not in _CHECKED:
        require_layers(logit_fn_of(model), jax.ShapeDtypeStruct(tuple(image_shape), jnp.float32), what=what)
        _CHECKED.add(key)


_CHECKED: set = set()


def pixel_range(model) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(low, high) per channel of a `Model`'s input space: uint8 0 and 255 through its mean/std."""
    mean, std = np.broadcast_arrays(np.asarray(model.mean, np.float64), np.asarray(model.std, np.float64))
    low, high = (0.0 - mean) / std, (255.0 - mean) / std
    return tuple(np.atleast_1d(low).tolist()), tuple(np.atleast_1d(high).tolist())


def _bound(what: str, value):
    if value is None:
        return None
    values = tuple(float(v) for v in np.atleast_1d(np.asarray(value, np.float64)).ravel())
    if not all(np.isfinite(values)):
        raise ValueError(f"LRP: {what} must be finite numbers, got {values}")
    return values


@register("lrp")
@dataclasses.dataclass(frozen=True)
class LRP(Method):
    """LRP with a composite (a name in `lrp_rules.COMPOSITES` or {layer name or kind: rule}).

    Options: epsilon (the epsilon rule), gamma, alpha/beta (alpha - beta = 1),
    stabilizer (every other rule's epsilon), low/high (the z^B box: per channel
    or one value; None: the Model's pixel range, uint8 0..255 in model space).
    """

    composite: object = "epsilon_plus_flat"
    epsilon: float = 1e-6
    gamma: float = 0.25
    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-6
    low: object = None
    high: object = None

    def __post_init__(self):
        if isinstance(self.composite, Mapping):
            object.__setattr__(self, "composite", tuple(sorted(self.composite.items())))
        lrp_rules.composite_map(self.composite)
        lrp_rules.check_options(self.rule_options(0.0, 1.0))
        object.__setattr__(self, "low", _bound("low", self.low))
        object.__setattr__(self, "high", _bound("high", self.high))

    def rule_options(self, low, high) -> lrp_rules.Options:
        return lrp_rules.Options(self.epsilon, self.stabilizer, self.gamma, self.alpha, self.beta, low, high)

    def _box(self, model):
        if self.low is not None and self.high is not None:
            return self.low, self.high
        if not is_model(model):
            raise ValueError("LRP: the z^B (zbox) rule needs low= and high= for a bare logit function")
        low, high = pixel_range(model)
        return self.low or low, self.high or high

    def _needs_box(self) -> bool:
        return "zbox" in lrp_rules.composite_map(self.composite).values()

    def check(self, model, image_shape):
        super().check(model, image_shape)
        check_relevance_layers(model, image_shape, what="LRP")
        if self._needs_box():
            self._box(model)

    def explain(self, model, x, target, *, key=None):
        low, high = self._box(model) if self._needs_box() else (0.0, 1.0)
        fn = lrp(logit_fn_of(model), self.composite, **self.rule_options(low, high)._asdict())
        logits, pull = jax.vjp(fn, x)
        target = jnp.where(target == TOP1, jnp.argmax(logits), target)
        return pull(jax.nn.one_hot(target, logits.shape[-1], dtype=logits.dtype) * logits)[0]
