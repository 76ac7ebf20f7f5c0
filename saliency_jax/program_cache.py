"""Stored programs: `jax.export` of the library's compiled calls, so a new process skips Python tracing.

JAX's persistent compilation cache (`compile_cache`) saves XLA's compile, but every new
process still traces the program in Python first: seconds for EfficientNet-Lite0's SmoothGrad,
more than its compile. Here a call `fun(*args)` is exported once (`jax.export`: the traced,
lowered StableHLO), serialised under `cache_dir()/programs/`, and in a later process
deserialised and run through `jax.jit(exported.call)` (whose compile the persistent cache then
serves), with no tracing of the model at all.

A stored program is used only when its key matches exactly: the jax, jaxlib and flax versions,
the device kind and count, the jax settings read while tracing (`TRACE_FLAGS`: matmul precision,
x64, promotion, the PRNG), a hash of this package's source files, the call's name, the pytree
structure of the arguments with every static field (a method's options, the model's
architecture and labels) and the shape and dtype of every array. Arguments whose static parts
hold anything with a process-dependent identity (a function, an object printed with its
address) or a pytree node from outside this package are never stored: their program could
change with code this key cannot see. The caller decides the rest (`attribute` stores only zoo
models: a user's model is code of their own). Weights are arguments of the program, never
constants in it, so a store is small (~0.2 MB) and valid for any weights of the same shapes.

Off unless `enable_program_cache` was called (`compile_cache.enable_compile_cache` does, and the
CLI calls that); an unreadable or stale entry is exported again, an unwritable folder costs
only speed. Every source edit or version change makes new keys, so after each write the folder's
entries are pruned to `MAX_BYTES` (or `$SALIENCY_JAX_PROGRAM_CACHE_MAX_MB`), least recently used
first: a load touches its entry's mtime.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import pathlib
import re
import stat
from typing import Any, Callable

import jax

from saliency_jax.checkpoints.cache import atomic_write

FORMAT = "1"  # bump when the key or the stored layout changes
# jax settings read while tracing (a program traced under one is not the program of another)
TRACE_FLAGS = ("jax_default_matmul_precision", "jax_enable_x64", "jax_numpy_dtype_promotion",
               "jax_numpy_rank_promotion", "jax_default_prng_impl", "jax_threefry_partitionable")
MAX_BYTES = 256 * 2**20  # the entries kept in the folder, least recently used pruned first
MAX_MB_VAR = "SALIENCY_JAX_PROGRAM_CACHE_MAX_MB"  # overrides MAX_BYTES when set to a number >= 0
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+|object at |<function |<lambda>")
_STATE: dict[str, Any] = {"folder": None}
_LOADED: dict[str, Callable] = {}  # key -> jitted call of a stored program, this process


def enable_program_cache(folder) -> pathlib.Path | None:
    """Stores exported programs in `folder` (created) from now on; None (and off) if it cannot be made."""
    path = pathlib.Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    _STATE["folder"] = path
    return path


def disable_program_cache() -> None:
    """Stops storing and loading programs (those already loaded in this process are dropped)."""
    _STATE["folder"] = None
    _LOADED.clear()


def program_cache_dir() -> pathlib.Path | None:
    """The folder programs are stored in, or None when the cache is off."""
    return _STATE["folder"]


def cached_call(fun: Callable, *args, name: str, storable: bool = True):
    """`fun(*args)`, through a stored `jax.export` of it when the cache is on and the call can be stored.

    Args:
      fun: a function of pytrees of arrays (usually `jax.jit`-ed), with no static arguments
        (bind them first); its result is a pytree of standard containers.
      *args: its arguments.
      name: what the program is (part of the key), e.g. "attribute_batch".
      storable: the caller's own judgement (e.g. False for a user's model).

    Returns:
      What `fun(*args)` returns (the same values: the stored program is the same program).
    """
    folder = _STATE["folder"]
    if folder is None or not storable:
        return fun(*args)
    leaves, treedef = jax.tree.flatten(args)
    key = program_key(name, treedef, leaves)
    if key is None:
        return fun(*args)
    run = _LOADED.get(key)
    if run is None:
        run = _load(folder / f"{key}.jaxexport") or _export(fun, treedef, leaves, folder / f"{key}.jaxexport")
        _LOADED[key] = run
    return run(*leaves)


def prune_programs(folder, *, keep=None, max_bytes: int | None = None) -> list[pathlib.Path]:
    """Deletes the least recently used (oldest mtime) `*.jaxexport` entries of `folder` until they fit.

    Args:
      folder: the program folder; only its `*.jaxexport` files are counted or deleted.
      keep: an entry never deleted (the one just written), even when it alone exceeds the cap.
      max_bytes: the cap; default `max_program_bytes()`.

    Returns:
      The paths deleted. Never raises: a file that cannot be read or deleted is skipped.
    """
    cap = max_program_bytes() if max_bytes is None else max_bytes
    keep = None if keep is None else pathlib.Path(keep).name
    try:
        entries = []
        for path in pathlib.Path(folder).glob("*.jaxexport"):
            try:
                info = path.stat()
            except OSError:  # deleted since listed
                continue
            if stat.S_ISREG(info.st_mode):
                entries.append((info.st_mtime, path.name, path, info.st_size))
    except OSError:  # no folder (any more)
        return []
    total = sum(size for *_, size in entries)
    removed = []
    for _, _, path, size in sorted(entries):
        if total <= cap:
            break
        if path.name == keep:
            continue
        try:
            path.unlink()
        except FileNotFoundError:  # another process pruned it first
            pass
        except OSError:  # unwritable: it stays, and counts
            continue
        else:
            removed.append(path)
        total -= size
    return removed


def max_program_bytes() -> int:
    """The folder's cap: `$SALIENCY_JAX_PROGRAM_CACHE_MAX_MB` (MiB) when a number >= 0, else `MAX_BYTES`."""
    try:
        cap = int(float(os.environ[MAX_MB_VAR]) * 2**20)
    except (KeyError, ValueError, OverflowError):  # unset, not a number, inf or nan
        return MAX_BYTES
    return cap if cap >= 0 else MAX_BYTES


def program_key(name: str, treedef, leaves) -> str | None:
    """The hex key of a call (see the module docstring), or None when it must not be stored."""
    if not _storable_structure(treedef):
        return None
    structure = str(treedef)
    if _ADDRESS.search(structure):
        return None
    avals = []
    for leaf in leaves:
        aval = jax.typeof(leaf)
        avals.append(f"{aval.shape}:{aval.dtype}:{getattr(aval, 'weak_type', False)}")
    device = jax.devices()[0]
    config = ",".join(f"{flag}={getattr(jax.config, flag, None)}" for flag in TRACE_FLAGS)
    parts = (FORMAT, _versions(), device.platform, device.device_kind, str(jax.device_count()), config,
             source_fingerprint(), name, structure, ";".join(avals))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:40]


@functools.cache
def source_fingerprint() -> str:
    """sha256 of every .py file of this package (paths and bytes): any code change gives a new key."""
    root = pathlib.Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@functools.cache
def _versions() -> str:
    out = []
    for dist in ("jax", "jaxlib", "flax"):
        try:
            out.append(f"{dist}={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{dist}=?")
    return ",".join(out)


def _storable_structure(treedef) -> bool:
    """Every custom pytree node of the arguments is one of this package's own classes."""
    node = treedef.node_data()
    if node is not None:
        kind = node[0]
        if kind not in (tuple, list, dict, type(None)) and not kind.__module__.startswith("saliency_jax."):
            return False
    return all(_storable_structure(child) for child in treedef.children())


def _load(path: pathlib.Path) -> Callable | None:
    try:
        exported = jax.export.deserialize(bytearray(path.read_bytes()))
    except Exception:  # none yet, a damaged or foreign entry, or no `flatbuffers`: export again
        return None
    try:
        os.utime(path)  # used now: the last to be pruned
    except OSError:
        pass
    return jax.jit(exported.call)


def _export(fun: Callable, treedef, leaves, path: pathlib.Path) -> Callable:
    flat = jax.jit(lambda *flat_args: fun(*jax.tree.unflatten(treedef, flat_args)))
    exported = jax.export.export(flat)(*leaves)
    try:
        data = exported.serialize()
    except ImportError:  # jax's serialisation needs `flatbuffers` (a dependency of ours, not of jax)
        return lambda *flat_args: fun(*jax.tree.unflatten(treedef, flat_args))
    try:
        atomic_write(path, lambda f: f.write(data))
    except OSError:
        pass  # an unwritable folder costs only speed
    else:
        prune_programs(path.parent, keep=path)
    return jax.jit(exported.call)


__all__ = ["FORMAT", "MAX_BYTES", "MAX_MB_VAR", "TRACE_FLAGS", "cached_call", "disable_program_cache",
           "enable_program_cache", "max_program_bytes", "program_cache_dir", "program_key", "prune_programs",
           "source_fingerprint"]
