"""Which inputs of a function its outputs depend on, read from its jaxpr (abstract: nothing runs).

Used when a `Model` is built, to refuse a tapped layer whose perturbation
point cannot reach the logits (a `tap()` whose return value is dropped gives
an all-zero Grad-CAM otherwise).

The walk goes backwards from the outputs. An equation whose output is needed
needs all its inputs, except calls with one inner jaxpr (`jit`, custom
derivatives, remat), which are walked into. So the answer errs on the side of
"depends": a layer is only refused when no path can exist.
"""

from __future__ import annotations

import jax
from jax.extend.core import Literal

_INNER = ("jaxpr", "call_jaxpr", "fun_jaxpr")  # params holding the one inner jaxpr of a call


def needed_inputs(fn, *args) -> list[bool]:
    """For each flattened leaf of `args` (arrays or ShapeDtypeStructs), whether fn's outputs depend on it."""
    closed = jax.make_jaxpr(fn)(*args)
    return _needed(closed.jaxpr, [True] * len(closed.jaxpr.outvars))


def _needed(jaxpr, used_outputs: list[bool]) -> list[bool]:
    live = {v for v, used in zip(jaxpr.outvars, used_outputs) if used and not isinstance(v, Literal)}
    for eqn in reversed(jaxpr.eqns):
        used = [v in live for v in eqn.outvars]
        if not any(used):
            continue
        for v, need in zip(eqn.invars, _eqn_inputs(eqn, used)):
            if need and not isinstance(v, Literal):
                live.add(v)
    return [v in live for v in jaxpr.invars]


def _eqn_inputs(eqn, used: list[bool]) -> list[bool]:
    inner = [eqn.params[p] for p in _INNER if p in eqn.params]
    if len(inner) == 1:
        sub = getattr(inner[0], "jaxpr", inner[0])  # a ClosedJaxpr or a Jaxpr
        if hasattr(sub, "invars") and len(sub.invars) == len(eqn.invars) and len(sub.outvars) == len(used):
            return _needed(sub, used)
    return [True] * len(eqn.invars)


__all__ = ["needed_inputs"]
