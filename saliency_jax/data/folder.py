"""Image files from a folder (searched recursively) or a glob pattern, in sorted order.

Order is the sorted relative path, so position ``i`` is the same file on every
run and every host. Hidden files and folders (``.name``) are skipped; in a
folder, only files with an image suffix (``IMAGE_SUFFIXES``) count, while a glob
takes every file it matches (a misnamed file is then reported, not ignored).

Names are kept as the file system gives them: a name that is not valid UTF-8
is a ``str`` with surrogate escapes (``os.fsencode`` gives its bytes back), and
the fingerprint is computed on those bytes, so one such file never stops a run.
A glob skips directories only: FIFOs, devices, sockets and broken or looping
symlinks it matches are listed and then reported (``saliency_jax.data.files``),
as a folder's are.

Labels follow the ``ImageFolder`` convention (torchvision's and TFDS's): when
every image lies exactly one level down, ``ROOT/<class>/<file>``, the label is
the index of ``<class>`` among the sorted class folder names (for ImageNet's
``n01440764``-style folders, that is the standard class index).
"""

from __future__ import annotations

import glob
import hashlib
import os
import pathlib

from saliency_jax.data.base import NO_LABEL, Record, SourceError
from saliency_jax.data.files import DEFAULT_MAX_BYTES, file_stamp, read_file

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jp2"}
)
_GLOB_CHARS = frozenset("*?[")


def is_glob(spec: str) -> bool:
    return any(ch in spec for ch in _GLOB_CHARS)


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in pathlib.PurePath(rel).parts)


class FolderSource:
    """Every image file under a folder, or every file matching a glob.

    Args:
      spec: a folder path, or a glob pattern (``**`` recurses), e.g. ``"photos/*.jpg"``.
      labels: ``"auto"`` (labels when the ``ROOT/<class>/<file>`` layout holds),
        ``"dirs"`` (require that layout) or ``"none"``.

    Attributes:
      root: the folder ids are relative to (for a glob, its non-pattern prefix).
      files: relative paths, sorted (the source's order).
    """

    file_stamps = True

    def __init__(self, spec: str, *, labels: str = "auto"):
        if labels not in ("auto", "dirs", "none"):
            raise ValueError(f"labels must be 'auto', 'dirs' or 'none', got {labels!r}")
        self.spec = spec
        if is_glob(spec):
            prefix = []
            for part in pathlib.PurePath(spec).parts:
                if is_glob(part):
                    break
                prefix.append(part)
            self.root = str(pathlib.PurePath(*prefix)) if prefix else "."
            matches = (os.path.relpath(p, self.root) for p in glob.glob(spec, recursive=True))
            files = [rel for rel in matches if not os.path.isdir(os.path.join(self.root, rel)) and not _hidden(rel)]
            if not files:
                raise SourceError(f"no files match {spec!r}")
        else:
            if not os.path.exists(spec):
                raise SourceError(f"source {spec!r} does not exist (expected a folder, a glob, "
                                  "tfds:NAME:SPLIT or imagefolder:ROOT:SPLIT)")
            if not os.path.isdir(spec):
                raise SourceError(f"source {spec!r} is a file, not a folder; use a folder or a glob pattern")
            self.root = spec
            files = []
            for dirpath, dirnames, filenames in os.walk(spec):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                for name in filenames:
                    if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                        files.append(os.path.relpath(os.path.join(dirpath, name), spec))
            if not files:
                raise SourceError(f"folder {spec!r} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        self.files = sorted(files, key=lambda rel: pathlib.PurePath(rel).parts)
        self.num_examples = len(self.files)
        self.fingerprint = hashlib.sha256(b"\n".join(os.fsencode(f) for f in self.files)).hexdigest()[:16]

        depth_one = all(len(pathlib.PurePath(rel).parts) == 2 for rel in self.files)
        if labels == "dirs" and not depth_one:
            raise SourceError(f"labels='dirs' needs every image in {self.root}/<class>/<file>")
        if labels != "none" and depth_one:
            self.label_names = tuple(sorted({pathlib.PurePath(rel).parts[0] for rel in self.files}))
            index = {name: i for i, name in enumerate(self.label_names)}
            self._labels = [index[pathlib.PurePath(rel).parts[0]] for rel in self.files]
        else:
            self.label_names = None
            self._labels = None

    def records(self, start: int = 0, stop: int | None = None):
        stop = self.num_examples if stop is None else min(stop, self.num_examples)
        for position in range(start, stop):
            rel = self.files[position]
            path = os.path.join(self.root, rel)
            label = self._labels[position] if self._labels is not None else NO_LABEL
            yield Record(position, pathlib.PurePath(rel).as_posix(), path, label,
                         lambda max_bytes=DEFAULT_MAX_BYTES, path=path: read_file(path, max_bytes=max_bytes),
                         lambda path=path: file_stamp(path))

    def __len__(self) -> int:
        return self.num_examples

    def __repr__(self) -> str:
        return f"FolderSource({self.spec!r}, {self.num_examples} files)"
