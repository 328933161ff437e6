"""Augmentation stacks: per-image random transforms applied inside tf.data.

Each stack maps one float32 image `[H, W, 3]` in [0, 1] to an image of the
same shape and range. They run before batching (in `Dataset.map`), so every
image draws its own random parameters -- unlike Keras' preprocessing layers,
some of which draw one set per batch. Stacks are registered in the
`keras_ssl.augmentations` entry-point group and their parameters are
gin-bindable (`crop_flip.padding = 4`).
"""

from __future__ import annotations

import tensorflow as tf


def identity(image: tf.Tensor) -> tf.Tensor:
    """Returns the image unchanged (the `none` stack)."""
    return image


def random_flip(image: tf.Tensor) -> tf.Tensor:
    """Flips left-right with probability 0.5 (the `flip` stack).

    Args:
      image: float32 `[H, W, 3]`.

    Returns:
      The image, possibly mirrored.
    """
    return tf.image.random_flip_left_right(image)


def random_crop_flip(image: tf.Tensor, padding: int = 4) -> tf.Tensor:
    """Pads by reflection, crops back to size at a random offset, flips.

    The standard CIFAR-style augmentation (the `crop_flip` stack).

    Args:
      image: float32 `[H, W, 3]` with a static shape.
      padding: Pixels of reflection padding on each side.

    Returns:
      The augmented image, same shape.

    Example:

    >>> out = random_crop_flip(tf.zeros((32, 32, 3)), padding=4)
    >>> out.shape
    TensorShape([32, 32, 3])
    """
    shape = tf.shape(image)
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]], "REFLECT")
    cropped = tf.image.random_crop(padded, shape)
    return tf.image.random_flip_left_right(cropped)


def build_augmentation(name_or_fn):
    """Returns the stack registered as `name_or_fn`, or the callable itself."""
    if callable(name_or_fn):
        return name_or_fn
    from keras_ssl.registry import AUGMENTATIONS

    return AUGMENTATIONS.get(name_or_fn)
