"""Small per-image ops shared by the classic pretext methods (private)."""

from __future__ import annotations

import tensorflow as tf

from keras_ssl import random


def to_grayscale3(image: tf.Tensor) -> tf.Tensor:
    """Luma grayscale repeated in three channels (works on [..., H, W, 3])."""
    gray = tf.image.rgb_to_grayscale(image)
    return tf.concat([gray, gray, gray], axis=-1)


def maybe_grayscale(images: tf.Tensor, probability: float, seed_draw=None) -> tf.Tensor:
    """Turns `images` (one image or a stack) gray with `probability`, ONE draw for all."""
    draw = random.uniform() if seed_draw is None else seed_draw
    return tf.cond(draw < probability, lambda: to_grayscale3(images), lambda: images)


def exemplar_augment(image: tf.Tensor, min_area: float = 0.3) -> tf.Tensor:
    """One random Exemplar-style view: crop-and-resize, flip and colour jitter.

    After Dosovitskiy et al. (2014): translation and scaling (a random crop of
    `min_area`..1 of the image, aspect 3/4..4/3, resized back), a horizontal
    flip and contrast/brightness/saturation/hue changes. Grayscale is decided
    outside, once for all the copies of an image.
    """
    height, width = image.shape[0], image.shape[1]
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        seed=random.next_seed(),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(min_area, 1.0),
        max_attempts=20,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, size)
    view = tf.image.resize(crop[None], [height, width])[0]
    view = tf.image.stateless_random_flip_left_right(view, random.next_seed())
    view = tf.image.stateless_random_brightness(view, 0.2, random.next_seed())
    view = tf.image.stateless_random_contrast(view, 0.6, 1.4, random.next_seed())
    view = tf.image.stateless_random_saturation(view, 0.6, 1.4, random.next_seed())
    view = tf.image.stateless_random_hue(view, 0.05, random.next_seed())
    return tf.clip_by_value(view, 0.0, 1.0)
