"""Image sources for dataset-scale jobs: folders, globs, TFDS datasets and TFDS ImageFolders.

    source = open_source("photos/")                       # a folder (recursive), sorted
    source = open_source("photos/**/*.jpg")               # a glob
    source = open_source("tfds:imagenette/320px-v2:validation", data_dir="~/tfds")   # needs the 'data' extra
    source = open_source("imagefolder:/data/flowers:train")                          # ROOT/<split>/<class>/<img>
    for ex in decode_stream(source.records(), size=(224, 224)):
        ex.image  # uint8 [224,224,3], or None with ex.error = "image data is truncated or corrupt (...)"

Every file is read through ``saliency_jax.data.files`` (regular files only, at
most ``max_bytes``) and decoded through ``saliency_jax.data.decode`` (at most
``max_pixels``), so a FIFO, a device, a huge or sparse file or a decompression
bomb costs one error line, not a hang or the machine's memory.

A source is a fixed sequence (position ``i`` is always the same image), so a job
can resume at a position and hosts can take disjoint slices. TensorFlow is
imported only when a ``tfds:``/``imagefolder:`` source is opened.
"""

from __future__ import annotations

from saliency_jax.data.base import NO_LABEL, DecodeError, Example, Record, Source, SourceError
from saliency_jax.data.decode import DEFAULT_MAX_PIXELS, decode_image, decode_resized
from saliency_jax.data.files import DEFAULT_MAX_BYTES, read_file
from saliency_jax.data.folder import IMAGE_SUFFIXES, FolderSource
from saliency_jax.data.stream import FINGERPRINTS, current_stamps, decode_stream, default_workers

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "DecodeError",
    "Example",
    "FINGERPRINTS",
    "FolderSource",
    "IMAGE_SUFFIXES",
    "NO_LABEL",
    "Record",
    "Source",
    "SourceError",
    "current_stamps",
    "decode_image",
    "decode_resized",
    "decode_stream",
    "default_workers",
    "open_source",
    "read_file",
]


def open_source(spec: str, *, data_dir: str | None = None, manual_dir: str | None = None,
                labels: str = "auto") -> Source:
    """Opens a source from its spec string.

    Args:
      spec: ``tfds:NAME:SPLIT`` (a prepared TFDS dataset; NAME as ``tfds.builder``
        takes it, e.g. ``imagenette/320px-v2`` or ``mnist:3.0.1``; SPLIT may be
        sliced, ``validation[:1000]``), ``imagefolder:ROOT:SPLIT``, a folder, or a glob.
      data_dir: TFDS data folder (``tfds:`` only).
      manual_dir: TFDS manual folder, to prepare e.g. imagenet2012 from local tars.
      labels: folder sources: ``"auto"``, ``"dirs"`` or ``"none"`` (see ``FolderSource``).

    Raises:
      SourceError: missing folder, no files, unknown dataset, missing 'data' extra.
    """
    if spec.startswith("tfds:"):
        name, sep, split = _split_last_colon(spec[len("tfds:"):])
        if not name or not sep or not split:
            raise SourceError(f"expected tfds:NAME:SPLIT, e.g. tfds:imagenette/320px-v2:validation; got {spec!r}")
        from saliency_jax.data.tfds_source import TfdsSource

        return TfdsSource(name, split, data_dir=data_dir, manual_dir=manual_dir)
    if spec.startswith("imagefolder:"):
        root, sep, split = spec[len("imagefolder:"):].rpartition(":")
        if not root or not sep or not split:
            raise SourceError(f"expected imagefolder:ROOT:SPLIT, e.g. imagefolder:flowers:train; got {spec!r}")
        from saliency_jax.data.tfds_source import ImageFolderSource

        return ImageFolderSource(root, split)
    return FolderSource(spec, labels=labels)


def _split_last_colon(text: str) -> tuple[str, str, str]:
    """Partition at the last ':' outside [...] (a split's slice may hold colons: ``train[:10]``)."""
    depth, cut = 0, -1
    for i, ch in enumerate(text):
        depth += ch == "["
        depth -= ch == "]"
        if ch == ":" and depth == 0:
            cut = i
    return (text[:cut], ":", text[cut + 1:]) if cut >= 0 else (text, "", "")
