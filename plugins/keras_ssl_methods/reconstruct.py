"""Images and their reconstructions by an exported VAE, MAE or SimMIM (`keras-ssl-reconstruct`).

For every image found (a directory is read whole; otherwise a glob; at most
`max_images`), the export's `reconstruct` signature runs at the model's
image size. One PNG is written, a row per image:

- a VAE's export (the decoded posterior mean): image | reconstruction;
- a masked-image model's (MAE, SimMIM: the signature also returns `masked`):
  image | masked image (masked patches grey) | reconstruction (the input's
  own pixels at the visible patches, the model's prediction at the masked
  ones). Each image gets the same mask in every run (the export fixes it).

The image is resized to the model's size. Reads the SavedModel with
TensorFlow alone.
"""

from __future__ import annotations

import os


def reconstruction_grid(saved_model: str, images: str, output: str, max_images: int = 16) -> str:
    """Writes a row per image of `images` as one PNG at `output`.

    A row is image | reconstruction for a VAE's export, image | masked |
    reconstruction for a masked-image model's (MAE, SimMIM).

    Args:
      saved_model: Export of a vae, mae or simmim run (it has a `reconstruct`
        signature).
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
            f"{saved_model!r} has no 'reconstruct' signature: export a run of the 'vae', "
            f"'mae' or 'simmim' method (signatures: {sorted(model.signatures)})."
        )
    reconstruct = model.signatures["reconstruct"]
    paths = list_images(images)[:max_images]
    rows = []
    for path in paths:
        image = tf.image.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image = tf.image.convert_image_dtype(image, tf.float32)[None]
        outputs = reconstruct(images=image)
        reconstruction = outputs["reconstruction"]
        size = tf.shape(reconstruction)[1:3]
        shown = tf.clip_by_value(tf.image.resize(image, size, antialias=True), 0.0, 1.0)
        # A masked-image model also shows what its encoder was given.
        middle = [outputs["masked"][0]] if "masked" in outputs else []
        rows.append(tf.concat([shown[0], *middle, reconstruction[0]], axis=1))
    grid = tf.concat(rows, axis=0)
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    tf.io.write_file(output, tf.io.encode_png(tf.image.convert_image_dtype(grid, tf.uint8,
                                                                            saturate=True)))
    print(f"{len(paths)} image(s) and reconstructions -> {output}", flush=True)
    return output
