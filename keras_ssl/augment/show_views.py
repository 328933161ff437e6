"""`keras-ssl-show-views`: a contact sheet of an augmentation stack's views.

Row i shows source image i (left, framed) and `--num_views` independent
views of it drawn by the stack, as the training input pipeline would draw
them (per image, inside `tf.data`). Look at it before training: crops too
small, colours gone, blur on tiny images all show at once.

    keras-ssl-show-views --stack=simclr --dataset=synthetic_shapes --output=views.png
"""

from __future__ import annotations

import numpy as np
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("stack", "simclr", "Registered augmentation stack.")
flags.DEFINE_string("dataset", "synthetic_shapes", "Dataset name (see keras_ssl.datasets).")
flags.DEFINE_string("split", "train", "Split.")
flags.DEFINE_string("data_dir", None, "TFDS data directory.")
flags.DEFINE_integer("image_size", None, "Resize images to this square size (None keeps them).")
flags.DEFINE_integer("num_images", 6, "Rows: source images.")
flags.DEFINE_integer("num_views", 6, "Columns: views per image.")
flags.DEFINE_integer("cell", 96, "Pixel size of one cell of the sheet.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_multi_string("gin_file", [], "gin files (stack parameters).")
flags.DEFINE_multi_string("gin_bindings", [], "gin bindings, e.g. \"simclr.blur_probability = 0\".")
flags.DEFINE_string("output", "views.png", "PNG to write.")


def draw_views(images: np.ndarray, stack, num_views: int, seed: int = 0) -> np.ndarray:
    """Applies `stack` `num_views` times to each image inside tf.data.

    Image i's views are seeded by `(seed, i)` as training seeds an example
    (`keras_ssl.random`), so the same seed draws the same sheet.

    Args:
      images: float32 `[N, H, W, 3]` in [0, 1].
      stack: `image -> image`.
      num_views: M.
      seed: Seed of the draws.

    Returns:
      float32 `[N, M, H, W, 3]`.
    """
    import tensorflow as tf

    from keras_ssl import random

    def views(index, image):
        with random.seeded(random.example_seed(seed, index)):
            return tf.stack([stack(image) for _ in range(num_views)])

    dataset = tf.data.Dataset.from_tensor_slices(images).enumerate().map(views)
    return np.stack([v.numpy() for v in dataset])


def contact_sheet(images: np.ndarray, views: np.ndarray, cell: int = 96, gap: int = 4) -> np.ndarray:
    """uint8 sheet: one row per image, the source then its views, upscaled to `cell`."""
    from PIL import Image

    n, m = views.shape[:2]
    height = n * cell + (n + 1) * gap
    width = (m + 1) * cell + (m + 2) * gap + gap  # an extra gap after the source column
    sheet = np.full((height, width, 3), 255, np.uint8)

    def put(row, col, image, framed=False):
        tile = Image.fromarray(np.uint8(np.clip(image, 0, 1) * 255 + 0.5))
        tile = np.asarray(tile.resize((cell, cell), Image.NEAREST))
        y = gap + row * (cell + gap)
        x = gap + col * (cell + gap) + (gap if col > 0 else 0)
        sheet[y:y + cell, x:x + cell] = tile
        if framed:
            sheet[y:y + 2, x:x + cell] = sheet[y + cell - 2:y + cell, x:x + cell] = (200, 30, 30)
            sheet[y:y + cell, x:x + 2] = sheet[y:y + cell, x + cell - 2:x + cell] = (200, 30, 30)

    for i in range(n):
        put(i, 0, images[i], framed=True)
        for j in range(m):
            put(i, j + 1, views[i, j])
    return sheet


def main(argv):
    del argv
    from PIL import Image

    from keras_ssl import config, registry
    from keras_ssl.datasets import load_dataset

    config.parse_gin(FLAGS.gin_file, FLAGS.gin_bindings)
    stack = registry.AUGMENTATIONS.get(FLAGS.stack)
    dataset, _ = load_dataset(
        FLAGS.dataset, FLAGS.split, data_dir=FLAGS.data_dir, image_size=FLAGS.image_size
    )
    images = np.stack([e["image"].numpy() for e in dataset.take(FLAGS.num_images)])
    views = draw_views(images, stack, FLAGS.num_views, FLAGS.seed)
    Image.fromarray(contact_sheet(images, views, FLAGS.cell)).save(FLAGS.output)
    print(
        f"wrote {FLAGS.output}: {len(images)} images x {FLAGS.num_views} views of stack "
        f"{FLAGS.stack!r} ({images.shape[1]}x{images.shape[2]} px; source framed in red)"
    )


def run():
    from keras_ssl.cli_errors import run_binary

    run_binary("keras-ssl-show-views", main)
