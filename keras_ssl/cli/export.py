"""`keras-ssl-export`: exports a kept checkpoint of a run as a SavedModel.

    keras-ssl-export --model_dir=runs/rotation --step=0   # 0 = random init

The export itself (docs/savedmodel_contract.md) is `keras_ssl.export`.
"""

from __future__ import annotations

from absl import flags

from keras_ssl.cli_errors import run_binary

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Run directory written by keras-ssl-train.",
                                 required=True)
_STEP = flags.DEFINE_integer("step", None,
                             "Checkpoint step to export (default: latest; 0 = random init).")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None,
                                  "Destination (default MODEL_DIR/export/step_N).")


def main(argv):
    """Exports `--step` of `--model_dir` (absl main); the export prints where it wrote.

    Args:
      argv: Positional arguments left by absl (none are used).
    """
    del argv
    from keras_ssl.export import export_checkpoint

    export_checkpoint(_MODEL_DIR.value, _STEP.value, _EXPORT_DIR.value)


def run():
    """Console-script entry point of `keras-ssl-export`."""
    run_binary("keras-ssl-export", main)


if __name__ == "__main__":
    run()
