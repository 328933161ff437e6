"""`keras-ssl-show-views`: a contact sheet of an augmentation stack's or a method's views.

Row i shows source image i (left, framed) and `--num_views` independent
views of it drawn by the stack, as the training input pipeline would draw
them (per image, inside `tf.data`). Look at it before training: crops too
small, colours gone, blur on tiny images all show at once.

With `--method`, a row shows the views that method's `preprocess` draws from
the image, in order and at their relative sizes: BYOL's asymmetric pair, or
the global and the smaller local views of multi-crop (DINO, SwAV).

    keras-ssl-show-views --stack=simclr --dataset=synthetic_shapes --output=views.png
    keras-ssl-show-views --method=dino --gin_file=gin_configs/dino/synthetic_shapes.gin \
        --dataset=synthetic_shapes/TCV- --image_size=32 --output=dino_views.png
"""

from __future__ import annotations

import numpy as np
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("stack", "simclr", "Registered augmentation stack.")
flags.DEFINE_string("method", None, "Show this registered method's views instead of a stack's "
                    "(configured by --gin_file/--gin_bindings).")
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


def draw_method_views(images: np.ndarray, method, seed: int = 0) -> list:
    """The image-shaped outputs of `method.preprocess` for each image, seeded as training seeds them.

    Args:
      images: float32 `[N, H, W, 3]` in [0, 1].
      method: A `keras_ssl.Method`.
      seed: Seed of the draws.

    Returns:
      A list per image of `[h, w, 3]` arrays (the method's views, in order).
    """
    import tensorflow as tf

    from keras_ssl import random

    rows = []
    for index, image in enumerate(images):
        example = {"image": tf.constant(image), "label": tf.constant(0, tf.int64),
                   "index": tf.constant(index, tf.int64)}
        with random.seeded(random.example_seed(seed, index)):
            outputs = method.preprocess(example)
        rows.append([v.numpy() for v in outputs.values()
                     if v.shape.rank == 3 and v.shape[-1] == 3 and v.dtype.is_floating])
    return rows


def contact_sheet(images: np.ndarray, views, cell: int = 96, gap: int = 4) -> np.ndarray:
    """uint8 sheet: one row per image, the source then its views.

    The source is drawn `cell` pixels wide; each view in proportion to its
    size relative to the source (a 16-px local crop of a 32-px image at half
    the cell).

    Args:
      images: `[N, H, W, 3]` in [0, 1].
      views: `[N, M, h, w, 3]`, or a list per image of `[h, w, 3]` views.
      cell: Pixel size of a source image on the sheet.
      gap: Pixels between cells.
    """
    from PIL import Image

    n, m = len(views), max(len(row) for row in views)
    height = n * cell + (n + 1) * gap
    width = (m + 1) * cell + (m + 2) * gap + gap  # an extra gap after the source column
    sheet = np.full((height, width, 3), 255, np.uint8)

    def put(row, col, image, framed=False):
        side = max(1, round(cell * image.shape[0] / images.shape[1]))
        tile = Image.fromarray(np.uint8(np.clip(image, 0, 1) * 255 + 0.5))
        tile = np.asarray(tile.resize((side, side), Image.NEAREST))[:cell, :cell]
        y = gap + row * (cell + gap)
        x = gap + col * (cell + gap) + (gap if col > 0 else 0)
        sheet[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
        if framed:
            sheet[y:y + 2, x:x + cell] = sheet[y + cell - 2:y + cell, x:x + cell] = (200, 30, 30)
            sheet[y:y + cell, x:x + 2] = sheet[y:y + cell, x + cell - 2:x + cell] = (200, 30, 30)

    for i in range(n):
        put(i, 0, images[i], framed=True)
        for j, view in enumerate(views[i]):
            put(i, j + 1, view)
    return sheet


def main(argv):
    del argv
    from PIL import Image

    from keras_ssl import config, registry
    from keras_ssl.datasets import load_dataset

    config.parse_gin(FLAGS.gin_file, FLAGS.gin_bindings)
    dataset, _ = load_dataset(
        FLAGS.dataset, FLAGS.split, data_dir=FLAGS.data_dir, image_size=FLAGS.image_size
    )
    images = np.stack([e["image"].numpy() for e in dataset.take(FLAGS.num_images)])
    if FLAGS.method:
        from keras_ssl.training import build_method

        method = build_method(method=FLAGS.method)
        method.check_training_setup(1 << 30, images.shape[1])
        views = draw_method_views(images, method, FLAGS.seed)
        sizes = " ".join(f"{v.shape[0]}" for v in views[0])
        what = f"{len(views[0])} views of method {FLAGS.method!r} (sizes {sizes} px)"
    else:
        views = draw_views(images, registry.AUGMENTATIONS.get(FLAGS.stack), FLAGS.num_views,
                           FLAGS.seed)
        what = f"{FLAGS.num_views} views of stack {FLAGS.stack!r}"
    Image.fromarray(contact_sheet(images, views, FLAGS.cell)).save(FLAGS.output)
    print(
        f"wrote {FLAGS.output}: {len(images)} images x {what} "
        f"({images.shape[1]}x{images.shape[2]} px; source framed in red)"
    )


def run():
    from keras_ssl.cli_errors import run_binary

    run_binary("keras-ssl-show-views", main)
