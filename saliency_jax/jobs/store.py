"""The output folder of a batch job: atomic NPZ shards, an index, an errors file, resumable.

    OUT/job.json              what the job computes (a resumed run must match it)
    OUT/shards/shard-00000.npz  source positions [0, S), shard-00001 [S, 2S), ...
    OUT/index.csv             one row per image processed (header below)
    OUT/errors.txt            one line per image that could not be used: PATH<TAB>REASON
    OUT/png/<id>_overlay.png  optional overlays

A shard covers a fixed range of source *positions* -- good and bad images alike
-- and holds both their outputs and their error records. It is written to a
temporary file, fsynced, then renamed (`os.replace`, atomic on POSIX), so a shard
file either is complete or does not exist, whenever the process dies. The shards
are the truth: on start, the completed shards are counted (a contiguous run from
0), stale temporary files are removed, and `index.csv` / `errors.txt` are
rebuilt from those shards; each new shard then appends its rows. A resumed run
therefore recomputes at most one shard and never loses or duplicates an image.
"""

from __future__ import annotations

import csv
import io
import json
import pathlib
import re
import tempfile
import zipfile

import numpy as np

from saliency_jax.checkpoints.cache import atomic_write

INDEX_COLUMNS = ("position", "id", "path", "label", "target", "predicted", "score", "target_score", "shard", "row")
_SHARD = re.compile(r"^shard-(\d{5,})\.npz$")


class JobError(RuntimeError):
    """A job that cannot go on (unwritable folder, disk full, a different job in the folder): one line."""


def _reason(err: OSError) -> str:
    return err.strerror or str(err)


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


class JobStore:
    """Creates or reopens a job's output folder.

    Args:
      out_dir: the folder (created with its parents).
      config: JSON-able description of the job; a folder holding a job with a
        different description is refused (a resume must be the same job).

    Raises:
      JobError: the folder cannot be created or written, or holds another job.
    """

    def __init__(self, out_dir, config: dict):
        self.out = pathlib.Path(out_dir)
        self.shards = self.out / "shards"
        ensure_writable(self.shards)
        config = json.loads(json.dumps(config))  # normalise tuples etc.
        job_file = self.out / "job.json"
        if job_file.exists():
            try:
                saved = json.loads(job_file.read_text())
            except (OSError, ValueError) as e:
                raise JobError(f"cannot read {job_file}: {e}") from None
            differ = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
            if differ:
                details = "; ".join(f"{k}: {saved.get(k)!r} -> {config.get(k)!r}" for k in differ[:3])
                raise JobError(f"{str(self.out)!r} holds a different job ({details}); "
                               "resume with the same command or use a new --out")
        else:
            self._write(job_file, lambda f: f.write(json.dumps(config, indent=2, sort_keys=True).encode() + b"\n"))
        self.config = config
        for stale in self.shards.glob(".*.tmp"):
            stale.unlink(missing_ok=True)

    def _write(self, path: pathlib.Path, write) -> None:
        try:
            atomic_write(path, write)
        except OSError as e:
            raise JobError(f"cannot write {str(path)!r}: {_reason(e)}") from None

    # ---- resuming ---------------------------------------------------------------------------
    def completed_shards(self) -> int:
        """How many shards 0, 1, ... k-1 are complete (the resume point is shard k)."""
        k = 0
        while (self.shards / shard_name(k)).exists():
            try:
                with zipfile.ZipFile(self.shards / shard_name(k)) as z:
                    if "position.npy" not in z.namelist():
                        break
            except (OSError, zipfile.BadZipFile):
                break
            k += 1
        for later in self.shards.glob("shard-*.npz"):  # beyond a gap: never trusted, recomputed
            m = _SHARD.match(later.name)
            if m and int(m.group(1)) >= k:
                later.unlink()
        return k

    def rebuild_tables(self, num_shards: int) -> tuple[int, int]:
        """Rewrites index.csv and errors.txt from shards [0, num_shards); returns (images, errors)."""
        index, errors = io.StringIO(), io.StringIO()
        writer = csv.writer(index, lineterminator="\n")
        writer.writerow(INDEX_COLUMNS)
        n_images = n_errors = 0
        for k in range(num_shards):
            shard = load_shard(self.shards / shard_name(k), maps=False)
            n_images += self._index_rows(writer, k, shard)
            n_errors += self._error_lines(errors, shard)
        self._write(self.out / "index.csv", lambda f: f.write(index.getvalue().encode()))
        self._write(self.out / "errors.txt", lambda f: f.write(errors.getvalue().encode()))
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
                    with open(self.out / name, "a", encoding="utf-8") as f:
                        f.write(text)
        except OSError as e:
            raise JobError(f"cannot append to {str(self.out)!r}: {_reason(e)}") from None


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
