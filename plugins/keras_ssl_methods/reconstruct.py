"""Image and reconstruction pairs from an exported VAE (`keras-ssl-reconstruct`).

For every image found (a directory is read whole; otherwise a glob; at most
`max_images`), the export's `reconstruct` signature decodes the posterior
mean at the model's `image_size`. One PNG is written: a row per image, the
image (resized to `image_size`) on the left and its reconstruction on the
right. Reads the SavedModel with TensorFlow alone.
"""

from __future__ import annotations

import os


def reconstruction_grid(saved_model: str, images: str, output: str, max_images: int = 16) -> str:
    """Writes the image | reconstruction pairs of `images` as one PNG at `output`.

    Args:
      saved_model: Export of a VAE run (it has a `reconstruct` signature).
      images: A directory of images or a glob (see `keras_ssl_methods.colorize.list_images`).
      output: Path of the PNG (its directory is created).
      max_images: Rows at most (the first images in sorted order).

    Returns:
      `output`.

    Raises:
      ValueError: The SavedModel has no `reconstruct` signature, or
        `max_images` is not positive.
      FileNotFoundError: No image file found.
    """
    import tensorflow as tf

    from keras_ssl_methods.colorize import list_images

    if max_images < 1:
        raise ValueError(f"max_images must be positive, got {max_images}.")
    model = tf.saved_model.load(saved_model)
    if "reconstruct" not in model.signatures:
        raise ValueError(
            f"{saved_model!r} has no 'reconstruct' signature: export a run of the 'vae' "
            f"method (signatures: {sorted(model.signatures)})."
        )
    reconstruct = model.signatures["reconstruct"]
    paths = list_images(images)[:max_images]
    rows = []
    for path in paths:
        image = tf.image.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image = tf.image.convert_image_dtype(image, tf.float32)[None]
        reconstruction = reconstruct(images=image)["reconstruction"]
        size = tf.shape(reconstruction)[1:3]
        shown = tf.clip_by_value(tf.image.resize(image, size, antialias=True), 0.0, 1.0)
        rows.append(tf.concat([shown[0], reconstruction[0]], axis=1))
    grid = tf.concat(rows, axis=0)
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    tf.io.write_file(output, tf.io.encode_png(tf.image.convert_image_dtype(grid, tf.uint8,
                                                                            saturate=True)))
    print(f"{len(paths)} image(s) and reconstructions -> {output}", flush=True)
    return output
