"""The one progress-bar helper: a tqdm bar on stderr, a caller's callback, or nothing.

Long host-side loops (the batch job, top activations, the CLI's explain and
class-model runs) report work done as `report(n)`; what `n` counts (images,
target-steps) is the caller's.

Inside a compiled call the only hook is `sample_ticks`, used by
`saliency_jax.attribution.sampling.sample_sum`: while a program is traced under
`reporting_chunks(True)` (`attribute_batch(..., progress=True)`, a static
argument, so it is its own compilation), the outermost sample sum of the trace
emits one `jax.debug.callback` per chunk. Under the batch `vmap` that callback
runs once per image, and each call is 1 / (the chunks of the trace) of an image.
On the host, `_chunk_done` forwards those fractions to the sink `forwarding`
has opened; a program traced without the switch has no callback at all.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import sys
import threading
from typing import Callable, Iterator

import jax


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


# ---- chunk ticks from inside a compiled call --------------------------------------------------
class _Trace:
    """Trace-time state of one program that reports chunks: how deep in sample sums, chunks per image."""

    def __init__(self):
        self.depth = 0
        self.chunks = 0  # chunks of the outermost sample sums, final once the trace is done


_TRACE: contextvars.ContextVar[_Trace | None] = contextvars.ContextVar("saliency_jax_progress_trace", default=None)


@contextlib.contextmanager
def reporting_chunks(on: bool) -> Iterator[None]:
    """While tracing under `reporting_chunks(True)`, the outermost sample sums emit chunk ticks."""
    token = _TRACE.set(_Trace() if on else None)
    try:
        yield
    finally:
        _TRACE.reset(token)


@contextlib.contextmanager
def sample_ticks(num_chunks: int) -> Iterator[Callable | None]:
    """Entered around a sample sum's trace: yields `tick(done)` to call once per chunk, or None.

    None unless the program reports chunks and this is the outermost sample sum (a
    nested one, e.g. XRAI's IG, is part of its caller's chunk). `done` is any traced
    value computed by the chunk, so the tick follows the chunk's work.
    """
    trace = _TRACE.get()
    if trace is None or trace.depth > 0:
        yield None
        return
    trace.depth += 1
    trace.chunks += num_chunks
    try:
        yield lambda done: jax.debug.callback(functools.partial(_chunk_done, trace), done)
    finally:
        trace.depth -= 1


class _Sink:
    """The host side of one running call: forwards chunk ticks as images (scaled by real / padded)."""

    def __init__(self, report: Callable, images: int, scale: float):
        self.report, self.images, self.scale = report, images, scale
        self.done = 0.0
        self.lock = threading.Lock()

    def add(self, amount: float) -> None:
        with self.lock:
            amount = min(amount * self.scale, self.images - self.done)
            if amount <= 0:
                return
            self.done += amount
        self.report(amount)

    def finish(self) -> None:
        with self.lock:
            rest, self.done = self.images - self.done, self.images
        if rest > 1e-9:
            self.report(rest)


_SINK: dict[str, _Sink | None] = {"open": None}


def _chunk_done(trace: _Trace, done) -> None:
    """The host callback: one chunk of one image is done."""
    sink = _SINK["open"]
    if sink is not None and trace.chunks:
        sink.add(1.0 / trace.chunks)


@contextlib.contextmanager
def forwarding(report: Callable, images: int, *, padded: int | None = None) -> Iterator[None]:
    """Forwards chunk ticks to `report` while a call runs; tops the count up to `images` on exit.

    Block on the call's result inside (`jax.block_until_ready`): ticks that arrive
    after the exit are dropped. `padded`: the images the call computes (ticks are
    scaled by images / padded).
    """
    sink = _Sink(report, images, images / (padded or images))
    previous, _SINK["open"] = _SINK["open"], sink
    try:
        yield
    finally:
        _SINK["open"] = previous
    sink.finish()


__all__ = ["forwarding", "open_bar", "reporter", "reporting_chunks", "sample_ticks"]
