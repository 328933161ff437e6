"""Small per-image ops shared by the classic pretext methods (private)."""

from __future__ import annotations

import tensorflow as tf

from keras_ssl import random
from keras_ssl.augment import inception_crop, to_grayscale


def maybe_grayscale(images: tf.Tensor, probability: float, seed_draw=None) -> tf.Tensor:
    """Turns `images` (one image or a stack) gray with `probability`, ONE draw for all."""
    draw = random.uniform() if seed_draw is None else seed_draw
    return tf.cond(draw < probability, lambda: to_grayscale(images), lambda: images)


def exemplar_augment(image: tf.Tensor, min_area: float = 0.3) -> tf.Tensor:
    """One random Exemplar-style view: crop-and-resize, flip and colour jitter.

    After Dosovitskiy et al. (2014): translation and scaling (a random crop of
    `min_area`..1 of the image, aspect 3/4..4/3, resized back), a horizontal
    flip and contrast/brightness/saturation/hue changes. Grayscale is decided
    outside, once for all the copies of an image.
    """
    view = inception_crop(image, (min_area, 1.0), (3 / 4, 4 / 3), max_attempts=20)
    view = tf.image.stateless_random_flip_left_right(view, random.next_seed())
    view = tf.image.stateless_random_brightness(view, 0.2, random.next_seed())
    view = tf.image.stateless_random_contrast(view, 0.6, 1.4, random.next_seed())
    view = tf.image.stateless_random_saturation(view, 0.6, 1.4, random.next_seed())
    view = tf.image.stateless_random_hue(view, 0.05, random.next_seed())
    return tf.clip_by_value(view, 0.0, 1.0)


def area_downsample(values, like):
    """`values` `[B, H, W, C]` area-resized to the spatial size of `like`.

    With static sizes that divide, an average pool: the same numbers as
    `tf.image.resize(method="area")`, and XLA compiles it (it has no
    ResizeArea kernel), which TPUs need.
    """
    (height, width), (rows, cols) = values.shape[1:3], like.shape[1:3]
    if None not in (height, width, rows, cols) and height % rows == 0 and width % cols == 0:
        factor = (height // rows, width // cols)
        return tf.nn.avg_pool2d(values, factor, factor, "VALID")
    return tf.image.resize(values, tf.shape(like)[1:3], method="area")
