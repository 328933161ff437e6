"""`keras-ssl-reconstruct`: a PNG of images and their reconstructions by an exported VAE, MAE or SimMIM.

    keras-ssl-reconstruct --saved_model=runs/vae/export/step_1000 \\
        --images='photos/*.png' --output=reconstructions.png

One row per image: the image at the model's size, then its reconstruction;
for MAE and SimMIM the masked image in between
(`keras_ssl_methods.reconstruct`).
"""

from __future__ import annotations

from absl import flags

from keras_ssl.cli_errors import run_binary

_SAVED_MODEL = flags.DEFINE_string("saved_model", None, "Export of a vae, mae or simmim run.", required=True)
_IMAGES = flags.DEFINE_string("images", None, "A directory of images or a glob.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Path of the PNG to write.", required=True)
_MAX_IMAGES = flags.DEFINE_integer("max_images", 16, "Rows at most.")


def main(argv):
    """Writes the pairs of `--images` to `--output` (absl main).

    Args:
      argv: Positional arguments left by absl (none are used).
    """
    del argv
    from keras_ssl_methods.reconstruct import reconstruction_grid

    reconstruction_grid(_SAVED_MODEL.value, _IMAGES.value, _OUTPUT.value, _MAX_IMAGES.value)


def run():
    """Console-script entry point of `keras-ssl-reconstruct`."""
    # ValueError: the SavedModel has no reconstruct signature, or --max_images < 1.
    run_binary("keras-ssl-reconstruct", main, extra_errors=(ValueError,))


if __name__ == "__main__":
    run()
