"""JAX's persistent compilation cache and the stored programs under the library's cache folder: a second run starts warm.

The CLI turns it on by default (`--no-compile-cache` or SALIENCY_JAX_NO_COMPILE_CACHE=1 turn it
off); library users call `enable_compile_cache()` once, before their first compiled call.
Compiled programs are keyed by JAX on the program, the jax/jaxlib version and the device, so a
stale entry is never used. The same call turns on `program_cache` (exported programs of the zoo
models' attribution calls, so a new process skips tracing too) in `cache_dir()/programs`.
Both folders may be deleted at any time.
"""

from __future__ import annotations

import os
import pathlib

import jax

from saliency_jax.checkpoints.cache import cache_dir
from saliency_jax.program_cache import enable_program_cache

ENV_OFF = "SALIENCY_JAX_NO_COMPILE_CACHE"


def compile_cache_dir() -> pathlib.Path:
    """`cache_dir()/xla`: where compiled programs are kept."""
    return cache_dir() / "xla"


def enable_compile_cache(path=None, *, min_compile_seconds: float = 0.2) -> pathlib.Path | None:
    """Turns on the persistent compilation cache (in `path`, default `compile_cache_dir()`) and the
    program cache (in `cache_dir()/programs`, or `path/programs`).

    Args:
      path: the folder (created); None for the default.
      min_compile_seconds: programs that compile faster are not written.

    Returns:
      The folder, or None when SALIENCY_JAX_NO_COMPILE_CACHE is set or it cannot be created.
    """
    if os.environ.get(ENV_OFF, "") not in ("", "0"):
        return None
    folder = pathlib.Path(path) if path is not None else compile_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: run without the cache rather than fail
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    enable_program_cache(cache_dir() / "programs" if path is None else folder / "programs")
    return folder


__all__ = ["ENV_OFF", "compile_cache_dir", "enable_compile_cache"]
