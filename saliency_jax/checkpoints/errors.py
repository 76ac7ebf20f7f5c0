"""The errors a checkpoint reader raises, and short summaries of untrusted values for their messages.

Messages are one line and short: they describe a value read from a file by its
type and size (`describe`), never by `repr` of a container, whose size a
crafted file controls.
"""

from __future__ import annotations

from typing import Any

_SHOWN_CHARS = 40  # of a string or bytes value


class CheckpointError(ValueError):
    """A file is not a readable checkpoint (corrupt, truncated, foreign, or over a reading budget)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint's pickle asks for a global that is not a tensor or container."""


def _is_small_atom(value: Any) -> bool:
    return value is None or type(value) in (bool, float) or (type(value) is int and value.bit_length() <= 64)


def describe(value: Any) -> str:
    """A one-line summary of an untrusted value, at most about 60 characters.

    >>> describe("epoch"), describe([1, -2]), describe([[1]]), describe(2**300)
    ("'epoch'", '(1, -2)', 'a list of 1 item', 'an int of 301 bits')
    """
    if isinstance(value, (str, bytes)):
        more = "..." if len(value) > _SHOWN_CHARS else ""
        return repr(value[:_SHOWN_CHARS]) + more
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an int of {value.bit_length()} bits"
    if value is None or isinstance(value, (bool, int, float, complex)):
        return repr(value)
    if isinstance(value, (tuple, list)) and len(value) <= 8 and all(_is_small_atom(v) for v in value):
        return repr(tuple(value))
    if isinstance(value, (tuple, list, dict, set, frozenset)):
        return f"a {type(value).__name__} of {len(value)} item{'' if len(value) == 1 else 's'}"
    return f"a {type(value).__name__}"


def one_line(error: BaseException, limit: int = 160) -> str:
    """`Type: message` of an exception from a parser, cut to one line of at most `limit` characters."""
    text = f"{type(error).__name__}: {error}".strip()
    first = text.splitlines()[0] if text else type(error).__name__
    return first if len(first) <= limit else first[: limit - 3] + "..."
