"""On-disk cache of converted parameters: convert a checkpoint once, then load instantly.

Entries are `.npz` files of the flattened param tree, keyed by the source
checkpoint's path, size and modification time plus a converter version, so a
changed checkpoint or converter never serves stale params. The folder is
`$SALIENCY_JAX_CACHE` if set, else `$XDG_CACHE_HOME/saliency_jax` (or
`~/.cache/saliency_jax`). Writes are atomic (write, then rename); an
unwritable cache only costs speed, with a warning.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile
import warnings
from typing import Callable

import numpy as np

ENV_VAR = "SALIENCY_JAX_CACHE"


def cache_dir() -> pathlib.Path:
    """The cache folder (not created here)."""
    if os.environ.get(ENV_VAR):
        return pathlib.Path(os.environ[ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "saliency_jax"


def flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """{"a": {"b": x}} -> {"a/b": x}."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "/"))
        else:
            out[name] = np.asarray(value)
    return out


def unflatten(flat: dict[str, np.ndarray]) -> dict:
    """{"a/b": x} -> {"a": {"b": x}}."""
    tree: dict = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def atomic_write(path: pathlib.Path, write: Callable) -> None:
    """`write(binary file)` into a temporary sibling, fsync, then rename over `path`: readers see the
    old file or the whole new one, never a part (raises OSError; the temporary file is removed)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _entry(tag: str, source: pathlib.Path) -> pathlib.Path:
    stat = source.stat()
    key = f"{tag}|{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / f"{tag}-{digest}.npz"


def cached_convert(tag: str, source: str | os.PathLike, convert: Callable[[], dict], *, enabled: bool = True) -> dict:
    """Returns `convert()`'s param tree, from the cache when `source` is unchanged.

    Args:
      tag: names the model and converter version, e.g. "efficientnet_lite0-v1".
      source: the checkpoint file the params derive from.
      convert: zero-argument function producing the nested dict of arrays.
      enabled: False bypasses the cache entirely.
    """
    if not enabled:
        return convert()
    entry = _entry(tag, pathlib.Path(source))
    if entry.is_file():
        try:
            with np.load(entry, allow_pickle=False) as npz:
                return unflatten({k: npz[k] for k in npz.files})
        except (OSError, ValueError, KeyError):
            pass  # A damaged entry is rebuilt below.
    params = convert()
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(entry, lambda f: np.savez(f, **flatten(params)))
    except OSError as err:
        warnings.warn(f"saliency_jax: could not write the params cache at {entry.parent} ({err}); "
                      f"set {ENV_VAR} to a writable folder to make later loads instant.", stacklevel=2)
    return params
