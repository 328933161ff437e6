"""A contact sheet of an augmentation stack's or a method's views (`keras-ssl-show-views`).

`draw_stack_views` applies a stack to each image as the training input
pipeline would (per image, inside `tf.data`); `draw_method_views` draws the
views a method's `preprocess` makes; `contact_sheet` puts them side by side,
one row per source image. The binary is `keras_ssl.cli.show_views`.
"""

from __future__ import annotations

import numpy as np


def draw_stack_views(images: np.ndarray, stack, num_views: int, seed: int = 0) -> np.ndarray:
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
