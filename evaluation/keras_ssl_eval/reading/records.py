"""What every image source returns: the split's description, its random access, RGB in [0, 1].

Shared by the folder reader (`keras_ssl_eval.reading.data`) and the TFDS one
(`keras_ssl_eval.reading._tfds_source`), which `data` imports only when a
TFDS name is read; `data` exports these names too.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import tensorflow as tf

__all__ = ["DatasetInfo", "RandomAccess", "to_rgb_float"]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What `load_images` knows about a split.

    Attributes:
        name: The name passed to `load_images`.
        split: The split read (TFDS slicing syntax is kept as given).
        num_examples: Number of examples in the split (readable files for folders).
        num_classes: Number of classes; 0 when the source has no labels (or, for
            a TFDS label that is not a ClassLabel, when their number is unknown).
        class_names: Class names, index = label.
        image_size: ``(height, width)`` of every image, or None when sizes vary.
        num_skipped: Image files of a folder source skipped because they do not
            decode, e.g. truncated (0 for TFDS).
    """

    name: str
    split: str
    num_examples: int
    num_classes: int
    class_names: tuple[str, ...]
    image_size: tuple[int, int] | None
    num_skipped: int = 0


@dataclasses.dataclass(frozen=True)
class RandomAccess:
    """How a split can be read in an order of the reader's choosing (training's permutations).

    Attributes:
        read: ``read(dataset)``: each element of `dataset` is a dict with an int64
            ``index`` (a position in the split's stored order); the returned
            dataset adds that example's ``image`` and ``label``, decoded exactly
            as `load_images` decodes them, and keeps the other keys. None when the
            split can only be read in its stored order.
        description: How the split is read, or why it cannot be read by index
            (for a run's log).
    """

    read: Callable[[tf.data.Dataset], tf.data.Dataset] | None
    description: str


def to_rgb_float(image: tf.Tensor, size: tuple[int, int] | None) -> tf.Tensor:
    """Converts a decoded [H, W, C] image to float32 RGB in [0, 1], resized.

    Args:
        image: An integer or float image with 1 (grey), 3 (RGB) or 4 (RGBA)
            channels; integer images are scaled by their dtype's maximum.
        size: ``(height, width)`` to resize to, or None.

    Returns:
        A float32 ``[H, W, 3]`` tensor with values in [0, 1].

    Example:
        >>> to_rgb_float(tf.zeros([28, 28, 1], tf.uint8), (32, 32)).shape
        TensorShape([32, 32, 3])
    """
    image = tf.image.convert_image_dtype(image, tf.float32)
    channels = image.shape[-1]
    if channels == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif channels == 4:
        image = image[..., :3]  # Alpha carries no appearance; drop it.
    if size is not None:
        image = tf.image.resize(image, size, antialias=True)
        image = tf.clip_by_value(image, 0.0, 1.0)  # Antialiasing overshoots.
    return image
