"""`keras-ssl-prepare-data NAME [NAME ...]`: generate or download datasets, or prepare them from files.

    keras-ssl-prepare-data synthetic_shapes/TCVL --data_dir=DIR
    keras-ssl-prepare-data --dataset=fashion_mnist --manual_dir=/usr/share/datasets/fashion-mnist \\
        --data_dir=DIR [--accept_checksum_mismatch]

With `--manual_dir`, the files TFDS would download are read from that
directory instead (docs/data.md lists them per dataset); nothing is
downloaded. Prepared datasets can be read by `keras-ssl-eval`, which never
imports the builders' code (TFDS reads prepared datasets from their files).
The preparation itself is `keras_ssl.datasets.prepare_dataset`.
"""

from __future__ import annotations

from absl import app, flags

from keras_ssl.cli_errors import run_binary

_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory (TFDS' default if unset).")
_DATASET = flags.DEFINE_multi_string(
    "dataset", [], "A dataset to prepare (repeatable); the same as naming it after the flags.")
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None,
    "Directory of the dataset's files, already downloaded (e.g. "
    "/usr/share/datasets/fashion-mnist); default <data_dir>/downloads/manual.")
_ACCEPT_CHECKSUM_MISMATCH = flags.DEFINE_boolean(
    "accept_checksum_mismatch", False,
    "Use manual-directory files whose SHA-256 differs from the one TFDS registered "
    "(the same data compressed anew, e.g. Debian's dataset-fashion-mnist); nothing "
    "then checks their content.")


def main(argv):
    """Prepares each dataset named by --dataset or on the command line (absl main).

    Args:
      argv: The program name, then the dataset names.
    """
    from keras_ssl.datasets import prepare_dataset

    names = list(_DATASET.value) + list(argv[1:])
    if not names:
        raise app.UsageError(
            "Name at least one dataset, e.g. synthetic_shapes/TCVL or --dataset=fashion_mnist.")
    for name in names:
        prepare_dataset(
            name, _DATA_DIR.value, manual_dir=_MANUAL_DIR.value,
            accept_checksum_mismatch=_ACCEPT_CHECKSUM_MISMATCH.value,
        )
        source = f" from {_MANUAL_DIR.value}" if _MANUAL_DIR.value else ""
        print(f"prepared {name}{source} in {_DATA_DIR.value or 'the TFDS default data_dir'}")


def run():
    """Console-script entry point of `keras-ssl-prepare-data`."""
    run_binary("keras-ssl-prepare-data", main)


if __name__ == "__main__":
    run()
