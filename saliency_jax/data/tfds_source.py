"""TensorFlow Datasets sources: a prepared dataset by name and split, and ``tfds.folder_dataset.ImageFolder``.

TensorFlow is imported here only, lazily, when such a source is opened; it is
the ``data`` extra (``pip install 'saliency-jax[data]'``). Nothing is ever
downloaded: a dataset must already be prepared under ``data_dir``, or (e.g.
``imagenet2012``) be preparable from files the user put in ``manual_dir``.

Images are read with ``tfds.decode.SkipDecoding()`` (the encoded bytes) and
decoded by Pillow in ``saliency_jax.data.stream``, exactly as for a folder: the
same pixels whatever the source, and a corrupt image becomes one error line
instead of stopping the ``tf.data`` pipeline. Reading is in the split's fixed
order (``shuffle_files=False``), so a job can resume at any position.
"""

from __future__ import annotations

import os

from saliency_jax.data.base import NO_LABEL, Record, SourceError
from saliency_jax.data.files import DEFAULT_MAX_BYTES, check_size

EXTRA_HINT = "pip install 'saliency-jax[data]'"


def import_tfds():
    """(tensorflow, tensorflow_datasets), or a one-line SourceError naming the extra."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise SourceError(f"TFDS sources need the 'data' extra: {EXTRA_HINT} ({e})") from None
    try:  # TensorFlow only reads files here: keep it off any accelerator JAX uses.
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):  # already initialised
        pass
    return tf, tfds


def _features(builder):
    """(image key, label key or None, label names or None) of a builder's features."""
    tfds = import_tfds()[1]
    features = builder.info.features
    keys = builder.info.supervised_keys
    image_key = label_key = None
    if isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys):
        image_key, label_key = keys
    if image_key is None or not isinstance(features[image_key], tfds.features.Image):
        image_key = next((k for k, f in features.items() if isinstance(f, tfds.features.Image)), None)
    if image_key is None:
        raise SourceError(f"TFDS dataset {builder.name!r} has no image feature ({', '.join(features)})")
    names = None
    if label_key is not None and isinstance(features[label_key], tfds.features.ClassLabel):
        names = tuple(features[label_key].names)
    else:
        label_key = None
    return image_key, label_key, names


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _bounded(data, max_bytes: int) -> bytes:
    check_size(len(data), max_bytes)
    return bytes(data)


class _TfdsRecords:
    """Shared reading logic: iterate a (skipped/taken) dataset of encoded images."""

    file_stamps = False  # a prepared dataset is versioned: its fingerprint names the version
    builder = None
    split = ""
    image_key = label_key = None

    def _dataset(self, start: int, stop: int):
        raise NotImplementedError

    def _id_and_path(self, example, position: int) -> tuple[str, str]:
        raise NotImplementedError

    def records(self, start: int = 0, stop: int | None = None):
        stop = self.num_examples if stop is None else min(stop, self.num_examples)
        if start >= stop:
            return
        tf, _ = import_tfds()
        ds = self._dataset(start, stop).prefetch(tf.data.AUTOTUNE)
        for offset, example in enumerate(ds.as_numpy_iterator()):
            position = start + offset
            data = example[self.image_key]
            label = int(example[self.label_key]) if self.label_key is not None else NO_LABEL
            record_id, path = self._id_and_path(example, position)
            yield Record(position, record_id, path, label,
                         lambda max_bytes=DEFAULT_MAX_BYTES, data=data: _bounded(data, max_bytes))


class TfdsSource(_TfdsRecords):
    """A TFDS dataset already prepared on disk: ``tfds:NAME:SPLIT``.

    Args:
      name: dataset name, optionally with config and version, e.g. ``"imagenette/320px-v2"``.
      split: split, with TFDS slicing if wanted, e.g. ``"validation"`` or ``"train[:1000]"``.
      data_dir: TFDS data folder (default: TFDS's, ``~/tensorflow_datasets``).
      manual_dir: folder holding manually downloaded files (``imagenet2012``'s tars);
        only then is an unprepared dataset prepared, from those files.
    """

    def __init__(self, name: str, split: str, *, data_dir: str | None = None, manual_dir: str | None = None):
        tf, tfds = import_tfds()
        self.spec = f"tfds:{name}:{split}"
        self.split = split
        try:
            self.builder = tfds.builder(name, data_dir=data_dir)
        except Exception as e:  # noqa: BLE001 - DatasetNotFoundError and friends
            raise SourceError(f"unknown TFDS dataset {name!r}: {' '.join(str(e).split()[:30])}") from None
        if not self.builder.is_prepared():
            if manual_dir is None:
                raise SourceError(
                    f"TFDS dataset {name!r} is not prepared in {self.builder.data_dir!r}; prepare it first "
                    "(tfds build, or pass manual_dir / --manual-dir for datasets built from local files); "
                    "this command never downloads")
            config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
            try:
                self.builder.download_and_prepare(download_config=config)
            except Exception as e:  # noqa: BLE001
                raise SourceError(f"cannot prepare {name!r} from {manual_dir!r}: {' '.join(str(e).split())}") from None
        try:
            self.num_examples = int(self.builder.info.splits[split].num_examples)
        except (KeyError, ValueError) as e:
            splits = ", ".join(self.builder.info.splits)
            raise SourceError(f"TFDS dataset {name!r} has no split {split!r} (splits: {splits}; {e})") from None
        self.image_key, self.label_key, self.label_names = _features(self.builder)
        self.fingerprint = f"{self.builder.info.full_name}:{split}:{self.num_examples}"

    def _dataset(self, start: int, stop: int):
        tf, tfds = import_tfds()
        read_config = tfds.ReadConfig(add_tfds_id=True, shuffle_seed=None)
        if "[" in self.split:  # already a sub-split: skip/take within it
            split, window = self.split, (start, stop)
        else:
            split, window = f"{self.split}[{start}:{stop}]", None
        ds = self.builder.as_dataset(split=split, shuffle_files=False, read_config=read_config,
                                     decoders={self.image_key: tfds.decode.SkipDecoding()})
        if window is not None:
            ds = ds.skip(window[0]).take(window[1] - window[0])
        return ds

    def _id_and_path(self, example, position: int) -> tuple[str, str]:
        record_id = _text(example["tfds_id"]) if "tfds_id" in example else f"{self.split}/{position}"
        path = _text(example["image/filename"]) if "image/filename" in example else ""
        return record_id, path

    def __repr__(self) -> str:
        return f"TfdsSource({self.spec!r}, {self.num_examples} examples)"


class ImageFolderSource(_TfdsRecords):
    """``tfds.folder_dataset.ImageFolder(root)``'s split: ``imagefolder:ROOT:SPLIT``.

    Layout ``ROOT/<split>/<class>/<image>`` (jpg/jpeg/png); labels are the sorted
    class folder names (over all splits), as TFDS defines them. The order is
    TFDS's (a fixed shuffle); ids are ``<class>/<file>``, the same ids a
    ``FolderSource(ROOT/<split>)`` gives the same files.
    """

    def __init__(self, root: str, split: str):
        tf, tfds = import_tfds()
        self.spec = f"imagefolder:{root}:{split}"
        if not os.path.isdir(root):
            raise SourceError(f"ImageFolder root {root!r} is not a folder")
        self.root, self.split = root, split
        self.builder = tfds.folder_dataset.ImageFolder(root)
        if split not in self.builder.info.splits:
            splits = ", ".join(self.builder.info.splits) or "none"
            raise SourceError(f"ImageFolder {root!r} has no split {split!r} (splits: {splits}; "
                              "layout ROOT/<split>/<class>/<image>)")
        self.num_examples = int(self.builder.info.splits[split].num_examples)
        self.image_key, self.label_key, self.label_names = "image", "label", tuple(
            self.builder.info.features["label"].names)
        self.fingerprint = f"imagefolder:{split}:{self.num_examples}:{len(self.label_names)}"
        self._split_dir = os.path.join(root, split)

    def _dataset(self, start: int, stop: int):
        tf, tfds = import_tfds()
        ds = self.builder.as_dataset(split=self.split, shuffle_files=False,
                                     decoders={"image": tfds.decode.SkipDecoding()})
        return ds.skip(start).take(stop - start)

    def _id_and_path(self, example, position: int) -> tuple[str, str]:
        path = _text(example["image/filename"])
        return os.path.relpath(path, self._split_dir).replace(os.sep, "/"), path

    def __repr__(self) -> str:
        return f"ImageFolderSource({self.spec!r}, {self.num_examples} examples)"
