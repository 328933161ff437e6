"""`keras-ssl-prepare-data NAME [NAME ...]`: generate or download datasets.

Prepared datasets can be read by `keras-ssl-eval`, which never imports the
builders' code (TFDS reads prepared datasets from their files). The
preparation itself is `keras_ssl.datasets.prepare_dataset`.
"""

from __future__ import annotations

from absl import app, flags

from keras_ssl.cli_errors import run_binary

_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory (TFDS' default if unset).")


def main(argv):
    """Prepares each dataset named on the command line (absl main).

    Args:
      argv: The program name, then the dataset names.
    """
    from keras_ssl.datasets import prepare_dataset

    names = argv[1:]
    if not names:
        raise app.UsageError("Name at least one dataset, e.g. synthetic_shapes/TCVL.")
    for name in names:
        prepare_dataset(name, _DATA_DIR.value)
        print(f"prepared {name} in {_DATA_DIR.value or 'the TFDS default data_dir'}")


def run():
    """Console-script entry point of `keras-ssl-prepare-data`."""
    run_binary("keras-ssl-prepare-data", main)


if __name__ == "__main__":
    run()
