"""`keras-ssl-export`: exports a kept checkpoint of a run as a SavedModel (and other formats).

    keras-ssl-export --model_dir=runs/rotation --step=0   # 0 = random init
    keras-ssl-export --model_dir=runs/rotation --format=saved_model,keras,onnx,litert

The export itself (docs/savedmodel_contract.md) is `keras_ssl.export`; the
formats beside the SavedModel are `keras_ssl.export_formats`.
"""

from __future__ import annotations

from absl import flags

from keras_ssl.cli_errors import run_binary
from keras_ssl.export_formats import DEFAULT_FORMATS, FORMATS, ExportFormatError

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Run directory written by keras-ssl-train.",
                                 required=True)
_STEP = flags.DEFINE_integer("step", None,
                             "Checkpoint step to export (default: latest; 0 = random init).")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None,
                                  "Destination (default MODEL_DIR/export/step_N).")
_FORMAT = flags.DEFINE_list(
    "format", list(DEFAULT_FORMATS),
    f"Formats to write, comma-separated, from {', '.join(FORMATS)}; saved_model is required "
    f"(the reference the others are checked against). onnx needs pip install "
    f"'keras-ssl[onnx]'. With the default, keras is skipped for a method whose input "
    f"transform has no Keras form.")


def main(argv):
    """Exports `--step` of `--model_dir` (absl main); the export prints where it wrote.

    Args:
      argv: Positional arguments left by absl (none are used).
    """
    del argv
    from keras_ssl.export import export_checkpoint

    # Given on the command line, the formats are what the user asked for (keras
    # with an input transform is refused); left at the default, keras may be skipped.
    formats = _FORMAT.value if _FORMAT.present else None
    export_checkpoint(_MODEL_DIR.value, _STEP.value, _EXPORT_DIR.value, formats=formats)


def run():
    """Console-script entry point of `keras-ssl-export`."""
    run_binary("keras-ssl-export", main, extra_errors=(ExportFormatError,))


if __name__ == "__main__":
    run()
