"""Host-side checks of user input with one-line messages: numbers, choices, image batches.

Every option that takes a count, a scale or a name is checked here, once,
before anything is traced or compiled, so a bad value fails with a
`ValueError` that names the option and its valid range.
"""

from __future__ import annotations

import math
import numbers

import jax.numpy as jnp
import numpy as np

MAX_COUNT = 100_000  # sample counts, steps, chunks: beyond this a call runs for hours


def positive_int(what: str, value, *, maximum: int = MAX_COUNT) -> int:
    """`value` as a Python int in [1, maximum]; ValueError naming `what` otherwise (bools and floats refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{what} must be a positive integer, got {short(value)}")
    if not 1 <= int(value) <= maximum:
        raise ValueError(f"{what} must be an integer in [1, {maximum}], got {int(value)}")
    return int(value)


def optional_positive_int(what: str, value, *, maximum: int = MAX_COUNT) -> int | None:
    """None, or `positive_int(what, value)`."""
    return None if value is None else positive_int(what, value, maximum=maximum)


def real(what: str, value, *, low: float = -math.inf, high: float = math.inf, open_low: bool = False) -> float:
    """A finite real number in [low, high] ((low, high] with open_low) as a Python float; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{what} must be a finite number, got {short(value)}")
    v = float(value)
    if v < low or v > high or (open_low and v == low):
        left = "(" if open_low else "["
        raise ValueError(f"{what} must lie in {left}{low:g}, {high:g}], got {v:g}")
    return v


def one_of(what: str, value, choices) -> str:
    """`value` if it is one of `choices`; ValueError listing them otherwise."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {what} {short(value)}; choose one of {', '.join(choices)}")
    return value


def short(value, limit: int = 60) -> str:
    """A short, one-line description of any value for an error message (never a long repr)."""
    if isinstance(value, (bool, numbers.Number, str)) or value is None:
        text = repr(value)
    elif hasattr(value, "shape") and hasattr(value, "dtype"):
        text = f"an array of shape {tuple(value.shape)} ({value.dtype})"
    else:
        text = f"a {type(value).__name__}"
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_images(x, *, channels: int | None = None, name: str = "model"):
    """x as a float jax.Array [B,H,W,C], or a one-line ValueError (rank, channels, dtype, NaN/Inf)."""
    shape = getattr(x, "shape", None)
    if shape is None:
        x = np.asarray(x)
        shape = x.shape
    if len(shape) != 4:
        raise ValueError(f"x must be a batch of images [B,H,W,C]; got shape {tuple(shape)}")
    if channels is not None and shape[-1] != channels:
        raise ValueError(f"{name} expects {channels} colour channels; got x with shape {tuple(shape)}")
    if shape[0] == 0:
        raise ValueError("x is an empty batch")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be float (preprocessed, model space); got dtype {x.dtype}: use model.preprocess")
    if not bool(jnp.all(jnp.isfinite(x))):
        bad = np.unique(np.nonzero(~np.isfinite(np.asarray(x)))[0]).tolist()
        raise ValueError(f"x contains NaN or Inf values (batch indices {bad[:10]})")
    return x


__all__ = ["MAX_COUNT", "check_images", "one_of", "optional_positive_int", "positive_int", "real", "short"]
