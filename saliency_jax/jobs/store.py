"""The output folder of a batch job: atomic NPZ shards, an index, an errors file, a lock, resumable.

    OUT/job.json              what the job computes (a resumed run must match it)
    OUT/job.lock              held (flock) by the run writing the folder: "pid N on HOST since TIME"
    OUT/shards/shard-00000.npz  source positions [0, S), shard-00001 [S, 2S), ...
    OUT/index.csv             one row per image processed (header below)
    OUT/errors.txt            one line per image that could not be used: PATH<TAB>REASON
    OUT/png/<id>_overlay.png  optional overlays

A shard covers a fixed range of source *positions* -- good and bad images alike
-- and holds both their outputs and their error records, with a stamp per
image (what version of the file was read). It is written to a temporary file,
fsynced, then renamed (`os.replace`, atomic on POSIX), so a shard file either is
complete or does not exist, whenever the process dies. The shards are the
truth: on start, every shard present is checked against the job (keys, shapes,
dtypes, range; read from the array headers, the maps themselves are not read),
stale temporary files are removed, and `index.csv` / `errors.txt` are rebuilt
from the shards kept; each new shard then appends its rows. Text files are
UTF-8; bytes of a file name that are not UTF-8 are written as ``\\xNN``.

One writer at a time: `JobStore` takes an exclusive `fcntl.flock` on
``job.lock`` and a second run on the same folder is refused in one line naming
the holder. The kernel drops the lock when its process dies (``kill -9``
included), so a killed run's lock is taken over by the next run, which says so.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import fcntl
import io
import json
import os
import pathlib
import re
import socket
import tempfile
import zipfile

import numpy as np

from saliency_jax.checkpoints.cache import atomic_write

INDEX_COLUMNS = ("position", "id", "path", "label", "target", "predicted", "score", "target_score", "shard", "row")
ROW_KEYS = {"position": "i", "id": "U", "path": "U", "label": "i", "target": "i", "predicted": "i",
            "score": "f", "target_score": "f", "stamp": "U"}
"""Per-image arrays of a shard [n] and their dtype kinds; ``maps`` [n,h,w] besides."""
ERROR_KEYS = {"error_position": "i", "error_id": "U", "error_path": "U", "error_reason": "U", "error_stamp": "U"}
"""Per-error arrays of a shard [m]."""
_SHARD = re.compile(r"^shard-(\d{5,})\.npz$")


class JobError(RuntimeError):
    """A job that cannot go on (unwritable folder, disk full, a different job in the folder): one line."""


class DamagedShard(Exception):
    """A shard file that does not hold what the job writes; ``str(err)`` is the reason."""


def _reason(err: OSError) -> str:
    return err.strerror or str(err)


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _utf8(text: str) -> bytes:
    """UTF-8 text, the bytes of a non-UTF-8 file name (surrogate escapes) written as ``\\xNN``."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace").encode()
    except UnicodeEncodeError:  # a surrogate that escapes no byte
        return text.encode("utf-8", "backslashreplace")


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.npz"


def _safe_relpath(record_id: str) -> str:
    """An id as a relative path that stays inside the png folder."""
    parts = [re.sub(r"[^A-Za-z0-9._-]", "_", p) for p in record_id.replace("\\", "/").split("/")]
    parts = [p if p not in ("", ".", "..") else "_" for p in parts]
    return "/".join(parts)


def ensure_writable(folder) -> None:
    """Creates `folder` (and parents) and checks a file can be written in it; else a one-line JobError."""
    folder = pathlib.Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe.", suffix=".tmp"):
            pass
    except OSError as e:
        raise JobError(f"output folder {str(folder)!r} is not writable: {_reason(e)}") from None


class JobLock:
    """An exclusive lock on a job folder: `fcntl.flock` on ``folder/job.lock``, released by `release()`
    or by the kernel when the process dies.

    Attributes:
      stale: what a run that died holding the lock had written in it
        (``"pid N on HOST since TIME"``), else ``None``.

    Raises:
      JobError: another live process holds the lock (the message names it).
    """

    def __init__(self, folder):
        self.path = pathlib.Path(folder) / "job.lock"
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise JobError(f"cannot create {str(self.path)!r}: {_reason(e)}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder() or "a process that has not written its name yet"
            os.close(self._fd)
            raise JobError(f"{str(self.path.parent)!r} is in use by another batch run ({holder}); wait for it "
                           "to finish, or use another --out") from None
        except OSError as e:
            os.close(self._fd)
            raise JobError(f"cannot lock {str(self.path)!r}: {_reason(e)}") from None
        self.stale = self._holder() or None
        since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode(), 0)

    def _holder(self) -> str:
        return _one_line(os.pread(self._fd, 400, 0).decode("utf-8", "replace"))

    def release(self) -> None:
        """Empties the lock file (a clean end leaves nothing stale) and unlocks it; idempotent."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None


class JobStore:
    """Creates or reopens a job's output folder, holding its lock until `close()` (or the ``with`` block ends).

    Args:
      out_dir: the folder (created with its parents).
      config: JSON-able description of the job; a folder holding a job with a
        different description is refused (a resume must be the same job). It
        must hold ``slice`` [start, stop), ``shard_size``, ``input_size`` (h, w)
        and ``maps_dtype``: what every shard is checked against.

    Attributes:
      num_shards: shards the job has.
      stale_lock: the holder line a killed run left in the lock, else ``None``.

    Raises:
      JobError: the folder cannot be created or written, is in use by another
        run, or holds another job.
    """

    def __init__(self, out_dir, config: dict):
        self.out = pathlib.Path(out_dir)
        self.shards = self.out / "shards"
        ensure_writable(self.shards)
        self._lock = JobLock(self.out)
        self.stale_lock = self._lock.stale
        try:
            self.config = self._check_job(json.loads(json.dumps(config)))  # normalise tuples etc.
        except BaseException:
            self._lock.release()
            raise
        start, stop = self.config["slice"]
        self.num_shards = -(-(stop - start) // self.config["shard_size"])
        for stale in self.shards.glob(".shard-*.tmp"):
            stale.unlink(missing_ok=True)

    def _check_job(self, config: dict) -> dict:
        job_file = self.out / "job.json"
        if not job_file.exists():
            self._write(job_file, lambda f: f.write(json.dumps(config, indent=2, sort_keys=True).encode() + b"\n"))
            return config
        try:
            saved = json.loads(job_file.read_text())
        except (OSError, ValueError) as e:
            raise JobError(f"cannot read {job_file}: {e}") from None
        differ = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
        if differ:
            details = "; ".join(f"{k}: {saved.get(k)!r} -> {config.get(k)!r}" for k in differ[:3])
            raise JobError(f"{str(self.out)!r} holds a different job ({details}); "
                           "resume with the same command or use a new --out")
        return config

    def close(self) -> None:
        self._lock.release()

    def __enter__(self) -> "JobStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write(self, path: pathlib.Path, write) -> None:
        try:
            atomic_write(path, write)
        except OSError as e:
            raise JobError(f"cannot write {str(path)!r}: {_reason(e)}") from None

    def shard_range(self, k: int) -> tuple[int, int]:
        """Source positions [lo, hi) of shard k."""
        start, stop = self.config["slice"]
        lo = start + k * self.config["shard_size"]
        return lo, min(lo + self.config["shard_size"], stop)

    # ---- resuming ---------------------------------------------------------------------------
    def scan(self) -> tuple[dict[int, dict], dict[int, str]]:
        """The shards present: ({k: arrays without maps} of sound ones, {k: reason} of damaged ones)."""
        sound, damaged = {}, {}
        for path in sorted(self.shards.glob("shard-*.npz")):
            m = _SHARD.match(path.name)
            if not m or int(m.group(1)) >= self.num_shards:
                continue
            k = int(m.group(1))
            try:
                sound[k] = self._checked(path, *self.shard_range(k))
            except DamagedShard as e:
                damaged[k] = str(e)
        return sound, damaged

    def _checked(self, path: pathlib.Path, lo: int, hi: int) -> dict:
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [key for key in (*ROW_KEYS, *ERROR_KEYS, "start", "stop", "maps") if key not in z.files]
                if missing:
                    raise DamagedShard(f"missing {', '.join(map(repr, missing))}")
                arrays = {name: z[name] for name in z.files if name != "maps"}
                maps_shape, maps_dtype = _npy_header(z.zip, "maps.npy")
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise DamagedShard(f"unreadable ({_one_line(e)})") from None
        _check_arrays(arrays, lo, hi)
        expected = (len(arrays["position"]), *self.config["input_size"])
        if maps_shape != expected:
            raise DamagedShard(f"'maps' has shape {maps_shape}, expected {expected}")
        if maps_dtype != np.dtype(self.config["maps_dtype"]):
            raise DamagedShard(f"'maps' has dtype {maps_dtype}, expected {self.config['maps_dtype']}")
        return arrays

    def discard(self, k: int) -> None:
        """Removes shard k (damaged, or its images changed): it is computed again."""
        (self.shards / shard_name(k)).unlink(missing_ok=True)

    def rebuild_tables(self, shards: dict[int, dict]) -> tuple[int, int]:
        """Rewrites index.csv and errors.txt from `shards` ({k: arrays}, in k order); returns (images, errors)."""
        index, errors = io.StringIO(), io.StringIO()
        writer = csv.writer(index, lineterminator="\n")
        writer.writerow(INDEX_COLUMNS)
        n_images = n_errors = 0
        for k in sorted(shards):
            n_images += self._index_rows(writer, k, shards[k])
            n_errors += self._error_lines(errors, shards[k])
        self._write(self.out / "index.csv", lambda f: f.write(_utf8(index.getvalue())))
        self._write(self.out / "errors.txt", lambda f: f.write(_utf8(errors.getvalue())))
        return n_images, n_errors

    @staticmethod
    def _index_rows(writer, k: int, shard: dict) -> int:
        for row in range(len(shard["position"])):
            writer.writerow([
                int(shard["position"][row]), shard["id"][row], shard["path"][row], int(shard["label"][row]),
                int(shard["target"][row]), int(shard["predicted"][row]),
                f"{float(shard['score'][row]):.7g}", f"{float(shard['target_score'][row]):.7g}", k, row,
            ])
        return len(shard["position"])

    @staticmethod
    def _error_lines(out, shard: dict) -> int:
        for path, record_id, reason in zip(shard["error_path"], shard["error_id"], shard["error_reason"]):
            where = " ".join(str(path or record_id).splitlines())
            out.write(f"{where}\t{reason}\n")
        return len(shard["error_id"])

    # ---- writing ------------------------------------------------------------------------------
    def commit(self, k: int, arrays: dict, overlays: list[tuple[str, np.ndarray]] = ()) -> None:
        """Writes overlays, then shard k atomically, then appends its index and error rows."""
        if overlays:
            from saliency_jax.render import save_png

            for record_id, image in overlays:
                path = self.out / "png" / f"{_safe_relpath(record_id)}_overlay.png"
                try:
                    save_png(path, image)
                except OSError as e:
                    raise JobError(f"cannot write {str(path)!r}: {_reason(e)}") from None
        self._write(self.shards / shard_name(k), lambda f: np.savez(f, **arrays))
        index, errors = io.StringIO(), io.StringIO()
        self._index_rows(csv.writer(index, lineterminator="\n"), k, arrays)
        self._error_lines(errors, arrays)
        try:
            for name, text in (("index.csv", index.getvalue()), ("errors.txt", errors.getvalue())):
                if text:
                    with open(self.out / name, "ab") as f:
                        f.write(_utf8(text))
        except OSError as e:
            raise JobError(f"cannot append to {str(self.out)!r}: {_reason(e)}") from None


def _npy_header(archive: zipfile.ZipFile, member: str) -> tuple[tuple, np.dtype]:
    """(shape, dtype) of an array in an NPZ, from its .npy header only (the data is not read)."""
    with archive.open(member) as f:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read:
            raise DamagedShard(f"'maps' has an unknown .npy version {version}")
        shape, _, dtype = read[version](f)
    return tuple(shape), dtype


def _check_arrays(arrays: dict, lo: int, hi: int) -> None:
    """DamagedShard unless the per-row arrays agree in length and kind and cover positions [lo, hi)."""
    for keys, count in ((ROW_KEYS, "position"), (ERROR_KEYS, "error_position")):
        n = len(arrays[count]) if arrays[count].ndim == 1 else -1
        for key, kind in keys.items():
            a = arrays[key]
            if a.shape != (n,) or a.dtype.kind != kind:
                raise DamagedShard(f"{key!r} has shape {a.shape} and dtype {a.dtype}, expected ({n},) of kind "
                                   f"{kind!r}")
    if any(arrays[key].shape != () or arrays[key].dtype.kind != "i" for key in ("start", "stop")):
        raise DamagedShard("'start'/'stop' are not integers")
    covers = (int(arrays["start"]), int(arrays["stop"]))
    positions = np.sort(np.concatenate([arrays["position"], arrays["error_position"]]))
    if covers != (lo, hi) or not np.array_equal(positions, np.arange(lo, hi)):
        raise DamagedShard(f"covers positions {covers} with {len(arrays['position'])} images and "
                           f"{len(arrays['error_position'])} errors, expected [{lo}, {hi})")


def load_shard(path, *, maps: bool = True) -> dict:
    """A shard's arrays as a dict (``maps`` [n,h,w] only if asked; strings as str arrays)."""
    with np.load(path, allow_pickle=False) as z:
        return {name: z[name] for name in z.files if maps or name != "maps"}


def load_outputs(out_dir) -> dict:
    """Every shard of a finished job folder, concatenated in source order (maps included)."""
    shards_dir = pathlib.Path(out_dir) / "shards"
    parts = [load_shard(p) for p in sorted(shards_dir.glob("shard-*.npz"))]
    if not parts:
        raise JobError(f"no shards in {str(shards_dir)!r}")
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if np.ndim(parts[0][k]) > 0}
