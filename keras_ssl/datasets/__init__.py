"""Datasets for training: the embedded `synthetic_shapes`, TFDS and folders.

Names:
- `synthetic_shapes` or `synthetic_shapes/<config>` (e.g. `-C-L`,
  `TCVL_64`): generated on first use, no download.
- any other name registered in the `keras_ssl.datasets` entry-point group
  (a TFDS builder class; importing it registers it with TFDS);
- any TFDS dataset name (`cifar10`, `imagenet2012`), downloaded and
  prepared by TFDS into `data_dir` on first use;
- `folder:/path/to/images` (sub-folders as labels when present).

Reading and decoding are shared with the evaluation package
(`keras_ssl_eval.reading.data`), so training and evaluation see identical images.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

from keras_ssl_eval.contract import FOLDER_PREFIX
from keras_ssl_eval.reading.data import DatasetInfo, RandomAccess, load_images
from keras_ssl_eval.reading.data import load_for_training as _load_for_training


def _import_builder(name: str) -> None:
    """Imports the builder of a registered dataset plugin, if `name` is one."""
    from keras_ssl.registry import DATASETS

    base = name.split("/")[0].split(":")[0]
    if base in DATASETS:
        DATASETS.get(base)  # Importing the module registers it with TFDS.


class ChecksumMismatchError(OSError):
    """A file brought by hand differs from the one TFDS registered for the dataset."""


def prepare_dataset(
    name: str,
    data_dir: str | None = None,
    *,
    manual_dir: str | None = None,
    accept_checksum_mismatch: bool = False,
) -> None:
    """Generates or downloads dataset `name` into `data_dir` if not there yet.

    Files TFDS would download are taken from `manual_dir` instead when they
    are there under the name TFDS downloads (e.g. the four `*-ubyte.gz` files
    of `fashion_mnist`); TFDS then reads them in place and needs no network.
    docs/data.md lists the files of each dataset.

    Args:
      name: A dataset name (see the module docstring); folders need nothing.
      data_dir: TFDS data directory (TFDS' default when None).
      manual_dir: Directory of files the user already has (TFDS' manual
        directory); None means `<data_dir>/downloads/manual`.
      accept_checksum_mismatch: Use files of `manual_dir` whose SHA-256
        differs from the one TFDS registered (the same data packaged
        differently, e.g. Debian's `dataset-fashion-mnist`, whose `.gz` files
        are compressed anew but decompress to the original bytes). TFDS
        checks nothing else: the content is then the user's responsibility.

    Raises:
      FileNotFoundError: `name` is unknown, or it is not prepared in
        `data_dir` and cannot be: its download failed (no network), it needs
        files downloaded by hand (ImageNet) that are not in the manual
        directory, `manual_dir` does not exist, or it holds only some of the
        dataset's files. The message names the dataset, the directories and
        how to prepare it.
      ChecksumMismatchError: A file of the manual directory differs from the
        one TFDS registered and `accept_checksum_mismatch` is False.
    """
    if name.startswith(FOLDER_PREFIX):
        return
    if manual_dir is not None and not os.path.isdir(manual_dir):
        raise FileNotFoundError(
            f"The manual directory {manual_dir!r} does not exist; pass --manual_dir=DIR with "
            f"the directory that holds the files of {name!r} (docs/data.md lists them)."
        )
    import tensorflow_datasets as tfds

    _import_builder(name)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise FileNotFoundError(
            f"Unknown dataset {name!r}: it is neither synthetic_shapes, nor a dataset "
            f"plugin (keras-ssl-list shows them), nor a TFDS dataset, nor prepared in "
            f"data_dir {data_dir or 'the TFDS default'}. For a directory of images use "
            f"'folder:/path/to/images'."
        ) from e
    if _is_prepared(builder):
        return
    with _preparation_lock(builder):
        # Another process may have prepared it while this one waited.
        if not _is_prepared(builder):
            _download_and_prepare(builder, name, manual_dir, accept_checksum_mismatch)


def _download_and_prepare(builder, name, manual_dir, accept_checksum_mismatch) -> None:
    """`prepare_dataset`'s work once the dataset is known not to be prepared."""
    import tensorflow_datasets as tfds

    default_manual = os.path.join(str(builder.data_dir_root), "downloads", "manual")
    manual = manual_dir or default_manual
    accepted = _check_manual_files(
        builder, name, manual, explicit=manual_dir is not None,
        accept_mismatch=accept_checksum_mismatch,
    )
    if accepted:
        _accept_files(builder, accepted)
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual)
        )
    except AssertionError as e:
        if "Manual directory" not in str(e):
            raise
        raise FileNotFoundError(
            f"Dataset {name!r} is not prepared in data_dir {str(builder.data_dir_root)!r} and "
            f"its files must be downloaded by hand: put them in {manual!r} as TFDS' "
            f"catalog page for {name.split('/')[0]!r} says (docs/data.md), then run "
            f"`keras-ssl-prepare-data {name} --data_dir={builder.data_dir_root}`."
        ) from e
    except _download_errors() as e:
        raise FileNotFoundError(
            f"Dataset {name!r} is not prepared in data_dir {str(builder.data_dir_root)!r} and "
            f"could not be downloaded ({type(e).__name__}: {_first_line(e)}). Prepare it where "
            f"the network is reachable with `keras-ssl-prepare-data {name} --data_dir=DIR` and "
            f"copy DIR here, pass the data_dir that holds it, or bring its files with "
            f"--manual_dir (docs/data.md)."
        ) from e


@contextlib.contextmanager
def _preparation_lock(builder):
    """Holds an exclusive file lock on preparing `builder`'s dataset in its data_dir.

    Two processes preparing one dataset at once (runs or tests started
    together on a fresh machine) otherwise both write it and the second
    fails to rename TFDS' incomplete directory onto the first's. Remote data
    directories (`gs://`) have no file locks and are not locked.
    """
    root = str(builder.data_dir_root)
    if "://" in root:
        yield
        return
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, f".{builder.name}.prepare.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _is_prepared(builder) -> bool:
    """Whether the dataset's files are written (TFDS' `is_prepared` also warns on a half-written one)."""
    import tensorflow as tf

    return tf.io.gfile.exists(os.path.join(str(builder.data_dir), "dataset_info.json"))


def _check_manual_files(builder, name, manual_dir, *, explicit, accept_mismatch):
    """Checks the manual directory's copies of the files TFDS would download.

    Args:
      builder: The dataset's TFDS builder.
      name: The dataset name, for messages.
      manual_dir: The manual directory.
      explicit: The user named `manual_dir` (so it must hold every file).
      accept_mismatch: Accept files whose checksum differs from TFDS'.

    Returns:
      `{url: UrlInfo}` of the files accepted despite their checksum.

    Raises:
      FileNotFoundError: Some of the dataset's files are there and others not,
        or, for a directory the user named, none are.
      ChecksumMismatchError: A file differs and `accept_mismatch` is False.
    """
    import tensorflow_datasets as tfds

    registered = {
        url: info for url, info in (type(builder).url_infos or {}).items() if info.filename
    }
    if not registered:
        return {}  # Files downloaded by hand only (ImageNet): TFDS checks them itself.
    present = {
        url: os.path.join(manual_dir, info.filename) for url, info in registered.items()
        if os.path.isfile(os.path.join(manual_dir, info.filename))
    }
    if not present and not explicit:
        return {}
    missing = sorted(info.filename for url, info in registered.items() if url not in present)
    if missing:
        raise FileNotFoundError(
            f"Dataset {name!r}: the manual directory {manual_dir!r} lacks "
            f"{', '.join(missing)}; put {'it' if len(missing) == 1 else 'them'} there under "
            f"these names (docs/data.md says where to get them)."
        )
    mismatched = {}
    for url, path in sorted(present.items()):
        found = tfds.download.checksums.compute_url_info(path)
        if found.checksum != registered[url].checksum:
            mismatched[url] = (path, found)
    if mismatched and not accept_mismatch:
        files = ", ".join(
            f"{os.path.basename(path)} ({int(found.size)} bytes, TFDS registered "
            f"{int(registered[url].size)})" for url, (path, found) in mismatched.items()
        )
        raise ChecksumMismatchError(
            f"Dataset {name!r}: the SHA-256 of {files} in {manual_dir} differs from the one "
            f"TFDS registered. If it is the same data packaged differently (a .gz compressed "
            f"anew decompresses to the same bytes, as Debian's do), pass "
            f"--accept_checksum_mismatch (prepare_dataset(accept_checksum_mismatch=True)); "
            f"nothing then checks the content."
        )
    return {url: found for url, (_, found) in mismatched.items()}


def _accept_files(builder, accepted) -> None:
    """Makes this builder's download manager expect `accepted` `{url: UrlInfo}`.

    TFDS has no per-run way to accept another checksum: its
    `register_checksums` option writes into the installed TFDS package. The
    download manager is made by the builder per `download_and_prepare`, so
    this instance's factory is wrapped to update the expected checksums of
    those files in the manager it makes (its `_url_infos`, a fresh dict per
    manager; the class-wide table is left alone).
    """
    make = builder._make_download_manager  # pylint: disable=protected-access

    def make_accepting(*args, **kwargs):
        manager = make(*args, **kwargs)
        manager._url_infos.update(accepted)  # pylint: disable=protected-access
        return manager

    builder._make_download_manager = make_accepting  # pylint: disable=protected-access


def _download_errors() -> tuple[type[BaseException], ...]:
    """What TFDS raises when a download fails (no network, refused, bad checksum)."""
    import requests
    import tensorflow_datasets as tfds

    return (
        tfds.download.DownloadError,
        requests.exceptions.RequestException,
        ConnectionError,
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no details"


def load_dataset(
    name: str,
    split: str = "train",
    *,
    data_dir: str | None = None,
    image_size: int | None = None,
    shuffle_files: bool = False,
    seed: int | None = None,
    prepare: bool = True,
):
    """Returns decoded examples of `name` and a `DatasetInfo`.

    Args:
      name: A dataset name (see the module docstring).
      split: Split name, e.g. `"train"`, `"test"`, `"train[:10%]"`.
      data_dir: TFDS data directory.
      image_size: Resize images to this square size (None keeps them).
      shuffle_files: Shuffle the input files (TFDS).
      seed: Seed for file shuffling.
      prepare: Generate/download the dataset first if needed.

    Returns:
      `(dataset, info)`: elements are `{"image": float32 [H, W, 3] in [0, 1],
      "label": int64, "index": int64}`.

    Example:

    >>> ds, info = load_dataset("synthetic_shapes", "test")   # doctest: +SKIP
    >>> info.num_classes                                        # doctest: +SKIP
    12
    """
    if prepare:
        prepare_dataset(name, data_dir)
    else:
        _import_builder(name)
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    return load_images(
        name, split, data_dir=data_dir, image_size=size, shuffle_files=shuffle_files, seed=seed
    )


def load_training_split(
    name: str,
    split: str = "train",
    *,
    data_dir: str | None = None,
    image_size: int | None = None,
    memory_bytes: int = 0,
    prepare: bool = True,
):
    """`load_dataset` of a training split, and how to read it by index.

    Args:
      name: A dataset name (see the module docstring).
      split: Split name.
      data_dir: TFDS data directory.
      image_size: Resize images to this square size (None keeps them).
      memory_bytes: The most bytes a TFDS split's encoded images may take in
        memory to be read by index (folders are always read by index).
      prepare: Generate/download the dataset first if needed.

    Returns:
      `(dataset, info, access)`: the examples in stored order and the
      `DatasetInfo`, as `load_dataset` returns them, and the split's
      `RandomAccess` (`keras_ssl_eval.reading.data`), which
      `keras_ssl.input_pipeline` reads each epoch's permutation through.
    """
    if prepare:
        prepare_dataset(name, data_dir)
    else:
        _import_builder(name)
    return _load_for_training(name, split, data_dir=data_dir, image_size=image_size,
                              memory_bytes=memory_bytes)


__all__ = [
    "ChecksumMismatchError", "DatasetInfo", "FOLDER_PREFIX", "RandomAccess", "load_dataset",
    "load_training_split", "prepare_dataset",
]
