"""The one progress-bar helper: a tqdm bar on stderr, a caller's callback, or nothing.

Long host-side loops (the batch job, top activations, the CLI's explain and
class-model runs) report work done as `report(n)`; what `n` counts (images,
target-steps) is the caller's. Nothing here runs under `jit`.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator


def open_bar(total: int, *, desc: str, unit: str = "img", initial: int = 0, **options):
    """A tqdm bar on stderr with the library's settings (width follows the terminal)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True,
                smoothing=0.1, **options)


@contextlib.contextmanager
def reporter(progress, total: int, *, desc: str, unit: str = "img", initial: int = 0) -> Iterator[Callable]:
    """Yields `report(n)` for `progress`: True -> a bar (closed on exit), a callable -> itself, else a no-op."""
    if progress is True:
        bar = open_bar(total, desc=desc, unit=unit, initial=initial)
        try:
            yield bar.update
        finally:
            bar.close()
    elif callable(progress):
        yield progress
    else:
        yield lambda n: None


__all__ = ["open_bar", "reporter"]
