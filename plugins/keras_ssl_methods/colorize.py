"""Colourising images with an exported Colorization model (`keras-ssl-colorize`).

For every image (a directory is read whole; otherwise a glob), the model's
`colorize` signature predicts ab at the model's input size (annealed mean,
T = 0.38); the ab planes are resized to the image's own size and combined
with the image's own lightness, and the result is written as
`OUTPUT/<name>.png`. Colour inputs are fine: only their lightness is used.

The binary is `keras_ssl_methods.cli.colorize`. Reads the SavedModel with
TensorFlow alone.
"""

from __future__ import annotations

import glob
import json
import os


def list_images(images: str) -> list[str]:
    """The image files to colourise.

    Args:
      images: A directory (its image files are read) or a glob.

    Returns:
      The paths, sorted.

    Raises:
      FileNotFoundError: No image file found.
    """
    # Imported here: the binary's --help must not wait for TensorFlow, which
    # importing the keras_ssl_eval package brings.
    from keras_ssl_eval.contract import IMAGE_EXTENSIONS

    if os.path.isdir(images):
        paths = [os.path.join(images, n) for n in sorted(os.listdir(images))]
    else:
        paths = sorted(glob.glob(images))
    paths = [p for p in paths if p.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(p)]
    if not paths:
        raise FileNotFoundError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) found for {images!r}.")
    return paths


def colorize_files(saved_model: str, images: str, output: str) -> list[str]:
    """Colourises the images found for `images` into PNGs under `output`.

    Prints `SOURCE -> DESTINATION` per image.

    Args:
      saved_model: Export of a colorization run (it has a `colorize` signature).
      images: A directory of images or a glob (see `list_images`).
      output: Directory the PNGs are written to (created).

    Returns:
      The paths written.

    Raises:
      ValueError: The SavedModel has no `colorize` signature.
    """
    import tensorflow as tf

    from keras_ssl_eval.contract import METADATA_PATH

    from keras_ssl_methods import _lab

    model = tf.saved_model.load(saved_model)
    if "colorize" not in model.signatures:
        raise ValueError(
            f"{saved_model!r} has no 'colorize' signature: export a run of the "
            f"'colorization' method (signatures: {sorted(model.signatures)})."
        )
    with open(os.path.join(saved_model, METADATA_PATH)) as f:
        size = json.load(f).get("input_size")
    colorize = model.signatures["colorize"]
    os.makedirs(output, exist_ok=True)
    written = []
    for path in list_images(images):
        image = tf.image.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image = tf.image.convert_image_dtype(image, tf.float32)
        net_input = tf.image.resize(image, size, antialias=True) if size else image
        ab = colorize(images=net_input[None])["ab"][0]
        full_ab = tf.image.resize(ab, tf.shape(image)[:2], method="bilinear")
        lightness = _lab.rgb_to_lab(image)[..., :1]
        rgb = _lab.lab_to_rgb(tf.concat([lightness, full_ab], axis=-1))
        name = os.path.splitext(os.path.basename(path))[0] + ".png"
        destination = os.path.join(output, name)
        tf.io.write_file(destination, tf.io.encode_png(tf.image.convert_image_dtype(rgb, tf.uint8, saturate=True)))
        written.append(destination)
        print(f"{path} -> {destination}", flush=True)
    return written
