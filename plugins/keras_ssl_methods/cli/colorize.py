"""`keras-ssl-colorize`: colourises images with an exported Colorization model.

    keras-ssl-colorize --saved_model=runs/colorization/export/step_1000 \\
        --images='photos/*.jpg' --output=colorized/

Writes `OUTPUT/<name>.png` per image and prints `SOURCE -> DESTINATION`; the
colourising itself is `keras_ssl_methods.colorize`.
"""

from __future__ import annotations

from absl import flags

from keras_ssl.cli_errors import run_binary

_SAVED_MODEL = flags.DEFINE_string("saved_model", None, "Export of a colorization run.",
                                   required=True)
_IMAGES = flags.DEFINE_string("images", None, "A directory of images or a glob.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Directory the colourised PNGs are written to.",
                              required=True)


def main(argv):
    """Colourises `--images` into `--output` (absl main).

    Args:
      argv: Positional arguments left by absl (none are used).
    """
    del argv
    from keras_ssl_methods.colorize import colorize_files

    colorize_files(_SAVED_MODEL.value, _IMAGES.value, _OUTPUT.value)


def run():
    """Console-script entry point of `keras-ssl-colorize`."""
    # ValueError: the SavedModel is not a colorization export.
    run_binary("keras-ssl-colorize", main, extra_errors=(ValueError,))


if __name__ == "__main__":
    run()
