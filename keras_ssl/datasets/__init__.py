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

import os

from keras_ssl_eval.contract import FOLDER_PREFIX
from keras_ssl_eval.reading.data import DatasetInfo, load_images


def _import_builder(name: str) -> None:
    """Imports the builder of a registered dataset plugin, if `name` is one."""
    from keras_ssl.registry import DATASETS

    base = name.split("/")[0].split(":")[0]
    if base in DATASETS:
        DATASETS.get(base)  # Importing the module registers it with TFDS.


def prepare_dataset(name: str, data_dir: str | None = None) -> None:
    """Generates or downloads dataset `name` into `data_dir` if not there yet.

    Args:
      name: A dataset name (see the module docstring); folders need nothing.
      data_dir: TFDS data directory (TFDS' default when None).

    Raises:
      FileNotFoundError: `name` is unknown, or it is not prepared in
        `data_dir` and cannot be: its download failed (no network), or it
        needs files downloaded by hand (ImageNet) that are not in TFDS'
        manual directory. The message names the dataset, the data_dir
        searched and how to prepare it.
    """
    if name.startswith(FOLDER_PREFIX):
        return
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
    try:
        builder.download_and_prepare()
    except AssertionError as e:
        if "Manual directory" not in str(e):
            raise
        manual_dir = os.path.join(str(builder.data_dir_root), "downloads", "manual")
        raise FileNotFoundError(
            f"Dataset {name!r} is not prepared in data_dir {str(builder.data_dir_root)!r} and "
            f"its files must be downloaded by hand: put them in {manual_dir!r} as TFDS' "
            f"catalog page for {name.split('/')[0]!r} says, then run `keras-ssl-prepare-data "
            f"{name} --data_dir={builder.data_dir_root}`."
        ) from e
    except _download_errors() as e:
        raise FileNotFoundError(
            f"Dataset {name!r} is not prepared in data_dir {str(builder.data_dir_root)!r} and "
            f"could not be downloaded ({type(e).__name__}: {_first_line(e)}). Prepare it where "
            f"the network is reachable with `keras-ssl-prepare-data {name} --data_dir=DIR` and "
            f"copy DIR here, or pass the data_dir that holds it."
        ) from e


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


__all__ = ["DatasetInfo", "FOLDER_PREFIX", "load_dataset", "prepare_dataset"]
