"""Image sources shared by training (keras_ssl) and evaluation.

Two kinds of names are understood by `load_images`:

- ``folder:/path/to/dir``: image files found recursively. Sub-folders holding
  images are classes (sorted names -> labels 0..K-1), otherwise every label is
  -1. ``dir/<split>/`` is used for a split when it exists; without split
  folders the whole directory is the split ``train``. A split may be sliced
  as in TFDS (``train[:80%]``, ``test[10%:20%]``): slices cut a fixed,
  seeded shuffle of the split's files, so they are the same in every run and
  ``train[:80%]`` and ``train[80%:]`` are disjoint and cover the split. Every
  file is decoded when the dataset is loaded; unreadable ones are skipped,
  counted and named in a warning, and so are files of other types.
- any TFDS name (``cifar10``, ``synthetic_shapes/TCVL``), read from
  ``data_dir``. A builder whose code is not imported in this process is read
  from its prepared files (TFDS' read-only builder), so evaluation never needs
  the code that generated a dataset.

Every element is ``{"image": float32 [H, W, 3] in [0, 1], "label": int64,
"index": int64}``; ``index`` is the position within the split, fixed before any
shuffling, so it can key a memory bank or join features with labels.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import logging
import os
import re

import tensorflow as tf

from keras_ssl_eval.contract import FOLDER_PREFIX, IMAGE_EXTENSIONS
from keras_ssl_eval.reading._naming import natural_sort_key
from keras_ssl_eval.reading.records import DatasetInfo, RandomAccess, to_rgb_float

__all__ = ["DatasetInfo", "RandomAccess", "load_images", "load_for_training", "to_rgb_float"]

# How many file names a warning about skipped or ignored files shows.
_MAX_NAMED_FILES = 5
# Seed of the fixed shuffle that folder split slices cut; changing it would
# move files between train[:80%] and train[80%:] of existing experiments.
_SLICE_SEED = 0
# SPLIT or SPLIT[START:END]; each bound optional, an integer with an optional %.
_SPLIT_SLICE = re.compile(
    r"(?P<base>[^\[\]]+)(?P<slice>\[(?P<start>-?\d+%?)?:(?P<end>-?\d+%?)?\])?")
_SLICE_FORM = ("SPLIT or SPLIT[START:END], START and END each optional, a percentage or a "
               "number of files, negative from the end (e.g. 'train', 'train[:80%]', "
               "'train[80%:]', 'test[10%:20%]', 'train[:1000]')")

_log = logging.getLogger(__name__)


def load_for_training(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    image_size: tuple[int, int] | int | None = None,
    memory_bytes: int = 0,
) -> tuple[tf.data.Dataset, DatasetInfo, RandomAccess]:
    """`load_images` of a split, and how to read its examples by index.

    A folder is always read by index (its file list is in memory). A TFDS
    split whose encoded images take at most `memory_bytes` (e.g. Fashion-MNIST's
    training split: 29 MiB) is read into memory once, still encoded, and
    decoded by index; a larger one can only be read in order.

    Args:
        name: As for `load_images`.
        split: As for `load_images`.
        data_dir: As for `load_images`.
        image_size: As for `load_images`.
        memory_bytes: The most bytes a TFDS split's encoded images may take in
            memory; 0 never holds one.

    Returns:
        ``(dataset, info, access)``: the split in its stored order and its
        `DatasetInfo`, as `load_images` returns them, and its `RandomAccess`.
    """
    size = _normalize_size(image_size)
    if name.startswith(FOLDER_PREFIX):
        files, info, common = _folder_files(name, split, size)
        access = RandomAccess(
            read=lambda indices: _read_files(files, indices, size, common),
            description=f"{len(files)} image files read by index",
        )
        return _folder_dataset(files, size, common, False, None), info, access
    from keras_ssl_eval.reading import _tfds_source  # pylint: disable=import-outside-toplevel

    return _tfds_source.load_for_training(name, split, data_dir=data_dir, image_size=size,
                                          memory_bytes=memory_bytes)


def load_images(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    image_size: tuple[int, int] | int | None = None,
    shuffle_files: bool = False,
    seed: int | None = None,
    segmentation: bool = False,
) -> tuple[tf.data.Dataset, DatasetInfo]:
    """Returns the decoded, unbatched images of one split and its `DatasetInfo`.

    Args:
        name: ``folder:/path`` or a TFDS dataset name (with config, e.g.
            ``synthetic_shapes/TCVL``).
        split: Split name (``train``, ``test``), or a slice of one such as
            ``train[:80%]``, ``train[80%:]``, ``test[10%:20%]`` or
            ``train[:1000]`` (for TFDS any TFDS split string). Folder slices
            are cut from a fixed shuffle of the split's files.
        data_dir: TFDS data directory (TFDS' default when None); ignored for
            folders.
        image_size: Resize every image to ``(height, width)`` (an int means a
            square). Required for folders whose images differ in size.
        shuffle_files: Shuffle the file (shard) order, e.g. for training. For
            folders every file is shuffled; ``index`` is unaffected.
        seed: Seed of that shuffle, for a reproducible sequence of orders.
        segmentation: Also return ``segmentation`` (int64 ``[H, W]``: 1 on the
            object, 0 on the background), from a TFDS dataset's
            ``segmentation_mask`` (resized by nearest neighbour), as
            `synthetic_shapes` has. Not for folders.

    Returns:
        ``(dataset, info)``: a `tf.data.Dataset` of dicts with ``image`` (float32
        ``[H, W, 3]`` in [0, 1]), ``label`` (int64, -1 when unlabelled) and
        ``index`` (int64), and a `DatasetInfo`.

    Raises:
        FileNotFoundError: The folder, split or prepared TFDS dataset is missing.
        ValueError: Unusable images (none readable, mixed sizes without
            ``image_size``, wrong shape), or a folder split that is not
            ``SPLIT`` or ``SPLIT[START:END]`` or whose slice is empty.

    Example:
        >>> ds, info = load_images("folder:/data/pets", "train", image_size=64)
        >>> ds = ds.batch(32)
    """
    size = _normalize_size(image_size)
    if name.startswith(FOLDER_PREFIX):
        if segmentation:
            raise ValueError(f"{name!r}: image folders have no segmentation masks; use a TFDS "
                             f"dataset with a 'segmentation_mask' feature (synthetic_shapes).")
        return _load_folder(name, split, size, shuffle_files, seed)
    # Imported here so that folder sources never import tensorflow_datasets.
    from keras_ssl_eval.reading import _tfds_source  # pylint: disable=import-outside-toplevel

    return _tfds_source.load(name, split, data_dir=data_dir, image_size=size,
                             shuffle_files=shuffle_files, seed=seed, segmentation=segmentation)


def _normalize_size(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be an int or (height, width) of positive "
                         f"ints, got {image_size!r}.")
    return size


# ----------------------------------------------------------------- folders --


def _load_folder(name, split, size, shuffle_files, seed):
    files, info, common = _folder_files(name, split, size)
    return _folder_dataset(files, size, common, shuffle_files, seed), info


def _folder_files(name, split, size):
    """The readable ``(path, label)`` files of a folder split, its `DatasetInfo` and image size."""
    root = os.path.expanduser(name[len(FOLDER_PREFIX):])
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"Dataset {name!r}: directory {root!r} does not exist. Pass "
            f"'folder:' followed by a directory of images.")
    base_split, bounds = _parse_split(split, name)
    split_dir, class_names = _resolve_split(root, base_split, split, name)
    files, unsupported = _find_images(split_dir)
    if unsupported:
        _warn_unsupported(name, split, split_dir, unsupported)
    loose = [f for f, cls in files if cls is None]
    if class_names:
        if loose:
            _log.warning("%s: ignoring %d image(s) directly in %s because its "
                         "sub-folders are used as classes (e.g. %s).", name,
                         len(loose), split_dir, os.path.basename(loose[0]))
        label_of = {c: i for i, c in enumerate(class_names)}
        files = [(f, label_of[c]) for f, c in files if c is not None]
    else:
        files = [(f, -1) for f, _ in files]
    if not files:
        raise ValueError(f"Dataset {name!r}, split {split!r}: no image files "
                         f"({', '.join(IMAGE_EXTENSIONS)}) under {split_dir!r}.")
    if bounds is not None:
        files = _slice_files(files, bounds, split_dir)
        if not files:
            raise ValueError(f"Dataset {name!r}: split {split!r} selects none of the image "
                             f"files under {split_dir!r}; widen the slice.")

    sizes, bad = _verify(files)
    if bad:
        shown = ", ".join(os.path.relpath(f, split_dir) for f in bad[:_MAX_NAMED_FILES])
        more = f" and {len(bad) - _MAX_NAMED_FILES} more" if len(bad) > _MAX_NAMED_FILES else ""
        _log.warning("%s, split %s: skipped %d unreadable or corrupt image "
                     "file(s): %s%s.", name, split, len(bad), shown, more)
    good = [(f, label) for (f, label), s in zip(files, sizes) if s is not None]
    if not good:
        raise ValueError(f"Dataset {name!r}, split {split!r}: none of the {len(files)} "
                         f"image files under {split_dir!r} could be read.")
    distinct = {s for s in sizes if s is not None}
    if size is None and len(distinct) > 1:
        examples = ", ".join(f"{h}x{w}" for h, w in sorted(distinct)[:4])
        raise ValueError(f"Dataset {name!r}, split {split!r}: images differ in size "
                         f"({examples}, ...); pass image_size=(height, width) to "
                         f"resize them to one size.")
    common = size or distinct.pop()
    info = DatasetInfo(name=name, split=split, num_examples=len(good),
                       num_classes=len(class_names), class_names=tuple(class_names),
                       image_size=common, num_skipped=len(bad))
    return good, info, common


def _parse_split(split, name):
    """Splits ``"train[10%:20%]"`` into ``"train"`` and its slice bounds.

    Args:
        split: ``SPLIT`` or ``SPLIT[START:END]``; START and END are optional,
            each a percentage (``80%``) or a number of files (``1000``), negative
            ones counting from the end, as in TFDS.
        name: The dataset name, for messages.

    Returns:
        ``(base split, bounds)``: bounds is None without a slice, else
        ``(start, end)``, each None (open) or ``(value, is_percent)``.

    Raises:
        ValueError: `split` has another form, or a percentage outside [-100, 100].
    """
    match = _SPLIT_SLICE.fullmatch(split)
    if match is None:
        raise ValueError(f"Dataset {name!r}: split {split!r} is not understood; folder "
                         f"datasets accept {_SLICE_FORM}.")
    if match.group("slice") is None:
        return match.group("base"), None
    bounds = []
    for text in (match.group("start"), match.group("end")):
        if not text:
            bounds.append(None)
            continue
        value, is_percent = int(text.rstrip("%")), text.endswith("%")
        if is_percent and abs(value) > 100:
            raise ValueError(f"Dataset {name!r}: split {split!r} has the percentage {text}, "
                             f"outside -100%..100%; folder datasets accept {_SLICE_FORM}.")
        bounds.append((value, is_percent))
    return match.group("base"), tuple(bounds)


def _slice_position(bound, count, default):
    """The position in a list of `count` files where a slice bound falls."""
    if bound is None:
        return default
    value, is_percent = bound
    if is_percent:
        # -20% is the same place as 80%, so train[:80%] and train[-20%:] meet.
        value = value if value >= 0 else 100 + value
        return count * value // 100
    return min(max(value if value >= 0 else count + value, 0), count)


def _slice_order_key(path, split_dir):
    """A file's place in the fixed shuffle that slices cut.

    A hash of the seed and the path relative to the split folder: the same on
    every machine and run, independent of where the dataset lies, and adding
    a file moves no other file from one slice to another.
    """
    relative = os.path.relpath(path, split_dir).replace(os.sep, "/")
    return hashlib.sha256(f"{_SLICE_SEED}:{relative}".encode()).hexdigest()


def _slice_files(files, bounds, split_dir):
    """Returns the files of one slice of a split, in their natural order.

    The files are put in a fixed pseudo-random order first, so that a slice
    draws from every class (files are listed class by class) and
    ``train[:80%]`` and ``train[80%:]`` are disjoint and together cover the
    split.

    Args:
        files: ``(path, label)`` of every image file of the split.
        bounds: ``(start, end)`` from `_parse_split`.
        split_dir: The split's folder (paths are hashed relative to it).

    Returns:
        The ``(path, label)`` pairs of the slice, sorted as `files` was.
    """
    shuffled = sorted(files, key=lambda item: _slice_order_key(item[0], split_dir))
    start = _slice_position(bounds[0], len(files), 0)
    end = _slice_position(bounds[1], len(files), len(files))
    chosen = {path for path, _ in shuffled[start:end]}
    return [item for item in files if item[0] in chosen]


def _resolve_split(root, base_split, split, name):
    """Returns the directory of `base_split` and the class names of the whole dataset."""
    split_dir = os.path.join(root, base_split)
    if os.path.isdir(split_dir):
        # Labels must mean the same in every split, so classes are the union of
        # the class folders of all sibling split folders.
        siblings = [e.path for e in _subdirs(root)]
        names = set()
        for sibling in siblings:
            names.update(e.name for e in _subdirs(sibling) if _has_image(e.path))
        return split_dir, sorted(names)
    if base_split != "train":
        found = sorted(e.name for e in _subdirs(root))
        raise FileNotFoundError(
            f"Dataset {name!r}: no split folder {base_split!r} in {root!r} for split "
            f"{split!r} (sub-folders: {found or 'none'}). Put the split's images in "
            f"{split_dir!r}, or use split 'train', which means the whole folder when it "
            f"has no split folders, or a slice of it such as 'train[80%:]'.")
    return root, sorted(e.name for e in _subdirs(root) if _has_image(e.path))


def _subdirs(path):
    with os.scandir(path) as entries:
        return sorted((e for e in entries if e.is_dir() and not e.name.startswith(".")),
                      key=lambda e: e.name)


def _is_image_name(filename):
    return filename.lower().endswith(IMAGE_EXTENSIONS) and not filename.startswith(".")


def _has_image(path):
    return any(_is_image_name(f) for _, _, files in os.walk(path) for f in files)


def _find_images(split_dir):
    """Lists the image files under `split_dir`, and the other files.

    Hidden files and folders (``.DS_Store``, ``.git``) are neither.

    Returns:
        ``(images, unsupported)``: sorted ``(path, class folder name or None)``
        of every image file, and the paths of files whose extension is not in
        `IMAGE_EXTENSIONS`.
    """
    found, unsupported = [], []
    for dirpath, dirnames, filenames in os.walk(split_dir):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, split_dir)
        cls = None if rel == os.curdir else rel.split(os.sep)[0]
        for filename in filenames:
            if _is_image_name(filename):
                found.append((os.path.join(dirpath, filename), cls))
            elif not filename.startswith("."):
                unsupported.append(os.path.join(dirpath, filename))
    found.sort(key=lambda item: natural_sort_key(item[0]))
    unsupported.sort(key=natural_sort_key)
    return found, unsupported


def _warn_unsupported(name, split, split_dir, unsupported):
    """Logs, in one line, the files a folder dataset ignores for their extension."""
    extensions = collections.Counter(
        os.path.splitext(f)[1].lower() or "no extension" for f in unsupported)
    counts = ", ".join(f"{ext} {n}" for ext, n in sorted(extensions.items()))
    shown = ", ".join(os.path.relpath(f, split_dir) for f in unsupported[:_MAX_NAMED_FILES])
    more = (f" and {len(unsupported) - _MAX_NAMED_FILES} more"
            if len(unsupported) > _MAX_NAMED_FILES else "")
    _log.warning("%s, split %s: ignored %d file(s) that are not of an image type read "
                 "here (%s): %s%s; images must be %s.", name, split, len(unsupported),
                 counts, shown, more, ", ".join(IMAGE_EXTENSIONS))


def _decoded_size(path):
    """Returns ``(height, width)`` of the image at `path`, or None if it cannot be read.

    The file is decoded whole, by the op the `tf.data` pipeline uses, so a file
    that passes here also decodes there: a header check alone passes, e.g., a
    truncated JPEG.
    """
    try:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except Exception:  # Broken files raise several error types.  # pylint: disable=broad-except
        return None
    return (int(image.shape[0]), int(image.shape[1]))


def _verify(files):
    """Returns each file's (h, w) or None, and the unreadable paths."""
    # Decoding releases the GIL, so threads decode in parallel.
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        sizes = list(pool.map(_decoded_size, [f for f, _ in files]))
    bad = [f for (f, _), s in zip(files, sizes) if s is None]
    return sizes, bad


def _folder_dataset(files, size, common, shuffle_files, seed):
    paths = tf.constant([f for f, _ in files])
    labels = tf.constant([label for _, label in files], tf.int64)
    indices = tf.range(len(files), dtype=tf.int64)
    ds = tf.data.Dataset.from_tensor_slices((paths, labels, indices))
    if shuffle_files:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)

    def decode(path, label, index):
        return {"image": _decode_file(path, size, common), "label": label, "index": index}

    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    # Every file decoded when the dataset was loaded, but one can still change
    # before it is read (a folder being written to): drop it with a logged
    # warning instead of ending a long run.
    return ds.ignore_errors(log_warning=True)


def _read_files(files, indices, size, common):
    """`RandomAccess.read` of a folder: decodes the file of each element's ``index``."""
    paths = tf.constant([f for f, _ in files])
    labels = tf.constant([label for _, label in files], tf.int64)

    def decode(element):
        index = element["index"]
        return {**element, "image": _decode_file(paths[index], size, common),
                "label": labels[index]}

    ds = indices.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.ignore_errors(log_warning=True)  # As in `_folder_dataset`.


def _decode_file(path, size, common):
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    return tf.ensure_shape(to_rgb_float(image, size), [*common, 3])
