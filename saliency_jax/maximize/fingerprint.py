"""A hashable description of a pure function's *value*, so equal optax optimisers share one compilation.

An optax `GradientTransformation` is a NamedTuple of two closures: `optax.adam(0.05)`
built twice gives two objects that are not equal, although they compute the same
thing. `fingerprint` describes such a value by what determines its behaviour:
each function's code object and module, its defaults and the fingerprints of the
values its closure captured (floats, dtypes, nested transformations, schedules),
recursively. Two objects with equal fingerprints run the same code on the same
captured values, so one trace serves both; `optax.adam(0.1)` differs from
`optax.adam(0.05)` in a captured float and gets its own.

What it cannot see into (an object of an unknown class) enters by its own
hash and equality when it has them, else by identity, which is never wrong,
only less sharing. Module globals a function reads are not captured: equal code
from one module reads the same globals.
"""

from __future__ import annotations

import functools
import numbers
import types
from typing import Any, Hashable

import numpy as np

__all__ = ["fingerprint"]

_ATOMS = (type(None), bool, numbers.Number, str, bytes, type, np.dtype)


class _Identity:
    """Stands for an object that is neither a known container nor hashable: equal only to itself."""

    def __init__(self, obj):
        self.obj = obj

    def __eq__(self, other):
        return isinstance(other, _Identity) and other.obj is self.obj

    def __hash__(self):
        return id(self.obj)


def fingerprint(obj: Any) -> Hashable:
    """A hashable key, equal for objects that compute the same thing (see the module docstring).

    Example:
      >>> fingerprint(optax.adam(0.05)) == fingerprint(optax.adam(0.05))
      True
      >>> fingerprint(optax.adam(0.05)) == fingerprint(optax.adam(0.1))
      False
    """
    return _describe(obj, frozenset())


def _describe(obj, seen: frozenset) -> Hashable:
    if isinstance(obj, _ATOMS):
        return (type(obj), obj)
    if id(obj) in seen:  # a closure that refers to itself
        return ("cycle",)
    seen = seen | {id(obj)}
    if isinstance(obj, types.FunctionType):
        cells = tuple(_cell(c, seen) for c in obj.__closure__ or ())
        return ("function", obj.__module__, obj.__code__, _describe(obj.__defaults__, seen),
                _describe(obj.__kwdefaults__, seen), cells)
    if isinstance(obj, functools.partial):
        return ("partial", _describe(obj.func, seen), _describe(obj.args, seen), _describe(obj.keywords, seen))
    if isinstance(obj, (tuple, list)):
        return (type(obj), tuple(_describe(x, seen) for x in obj))
    if isinstance(obj, dict):
        return (dict, tuple((_describe(k, seen), _describe(v, seen)) for k, v in obj.items()))
    if isinstance(obj, np.ndarray) or (hasattr(obj, "__array__") and hasattr(obj, "dtype")):
        array = np.asarray(obj)
        return ("array", array.shape, array.dtype.str, array.tobytes())
    try:
        hash(obj)
    except TypeError:
        return _Identity(obj)
    return obj


def _cell(cell, seen: frozenset) -> Hashable:
    try:
        contents = cell.cell_contents
    except ValueError:  # an empty cell (a name bound later in the enclosing function)
        return ("empty",)
    return _describe(contents, seen)
