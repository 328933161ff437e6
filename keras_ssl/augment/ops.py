"""Batched image ops: each image of a batch transformed with its own parameters.

The ops draw nothing: the parameters come from a `keras_ssl.augment.stacks.Stack`'s
per-image draws. None branches per image (`tf.cond` or `tf.switch_case`
costs a function call per image in tf.data); an image that should be left
alone gets identity parameters instead (a flip flag off, jitter factors
`(1, 1, 1, 0)`, a blur sigma of 0).

Example:

>>> images = tf.zeros([2, 32, 32, 3])
>>> color_jitter(images, tf.constant([[1.0, 1.0, 1.0, 0.0], [1.2, 0.8, 1.0, 0.1]])).shape
TensorShape([2, 32, 32, 3])
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

# Luma weights of tf.image.rgb_to_grayscale (ITU-R BT.601).
LUMA = (0.2989, 0.587, 0.114)
# RGB -> YIQ; the hue shift is a rotation of the (I, Q) chroma plane.
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_INV = np.linalg.inv(_YIQ)
# The width axis of one `[H, W, C]` image, as `tf.reverse` takes it.
_WIDTH_AXIS = np.array([1], np.int32)


def shape_list(images: tf.Tensor) -> list:
    """Each dimension static where known (fewer ops per image in tf.data), else dynamic."""
    static = images.shape.as_list()
    if None not in static:
        return static
    dynamic = tf.shape(images)
    return [d if d is not None else dynamic[i] for i, d in enumerate(static)]


def crop_resize(images: tf.Tensor, boxes: tf.Tensor, flips: tf.Tensor | None = None,
                size=None) -> tf.Tensor:
    """Crops box i of image i and resizes it (bilinear) to `size`.

    Args:
      images: float32 `[B, H, W, C]`.
      boxes: float32 `[B, 4]`, `(y1, x1, y2, x2)` in `tf.image.crop_and_resize`'s
        normalised coordinates (1 is the last pixel's centre).
      flips: Optional bool `[B]`: mirror image i left-right.
      size: `(height, width)` of the output; default the images' own.

    Returns:
      float32 `[B, height, width, C]`.
    """
    if flips is not None:
        # crop_and_resize samples a box with x1 > x2 mirrored: the flip is free.
        boxes = tf.where(flips[:, None], tf.gather(boxes, [0, 3, 2, 1], axis=1), boxes)
    shape = shape_list(images)
    size = shape[1:3] if size is None else size
    return tf.image.crop_and_resize(images, boxes, tf.range(shape[0]), size)


def flip(images: tf.Tensor, flips: tf.Tensor) -> tf.Tensor:
    """Mirrors image i left-right where `flips[i]`.

    Args:
      images: `[B, H, W, C]`.
      flips: bool `[B]`.
    """
    return tf.where(flips[:, None, None, None], tf.reverse(images, [2]), images)


def flip_image(image: tf.Tensor, flipped: tf.Tensor) -> tf.Tensor:
    """Mirrors one image `[H, W, C]` where `flipped` (a scalar bool) is true.

    A reverse over the axes `[1][:flipped]`: reversing over no axis leaves
    the image as it is. Neither a `tf.where` (a scalar condition broadcast
    over the image ran the `flip` stack at half the speed of plain tf.data)
    nor a `tf.cond` (a function call per image in tf.data), which measured
    0.92x and 0.87x plain in benchmarks/augmentation.py's setting.
    """
    axes = tf.slice(_WIDTH_AXIS, [0], tf.reshape(tf.cast(flipped, tf.int32), [1]))
    return tf.reverse(image, axes)


def _row_form(matrix) -> np.ndarray:
    """The 3x3 matrix that maps pixel rows `x` (`[N, 3]`) as `matrix` maps columns."""
    return np.asarray(matrix, np.float64).T


# A colour transform acting on YIQ as `diag(1, 0, 0)`, `diag(0, 1, 1)` and a
# quarter turn of the (I, Q) plane, written for pixel rows; brightness b,
# saturation s and hue h combine them as `b * (E0 + s cos(2 pi h) E1 + s sin(2 pi h) E2)`.
_JITTER_BASIS = np.stack([
    _row_form(_YIQ_INV @ np.diag([1.0, 0.0, 0.0]) @ _YIQ),
    _row_form(_YIQ_INV @ np.diag([0.0, 1.0, 1.0]) @ _YIQ),
    _row_form(_YIQ_INV @ np.array([[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]) @ _YIQ),
]).reshape(3, 9).astype(np.float32)


def color_jitter(images: tf.Tensor, factors: tf.Tensor) -> tf.Tensor:
    """Brightness, contrast, saturation and hue, each image its own factors.

    With factors `(b, c, s, h)` per image:

    - brightness: `b * x`;
    - contrast: `c * x + (1 - c) * mean(x)`, the mean per channel over the
      image (as `tf.image.adjust_contrast`);
    - saturation: scales the chroma (I, Q) of YIQ by `s`, keeping luma (a
      blend with the grayscale image, as torchvision's `adjust_saturation`);
    - hue: rotates the chroma plane by `2 pi h` (a linear stand-in for HSV's
      hue shift), `h` in [-0.5, 0.5].

    All four are linear maps of the colour (contrast too: the mean of a
    linearly mapped image is the mapped mean), so they commute, and the
    image is clipped to [0, 1] once, after their product: one 3x3 matrix and
    one offset per image, the same for any order. (torchvision and SimCLR's
    code clip after each transform, which is why they shuffle the order;
    here no order is privileged.) Factors `(1, 1, 1, 0)` leave an image in
    [0, 1] unchanged.

    Args:
      images: float32 `[B, H, W, 3]` in [0, 1].
      factors: float32 `[B, 4]`: `(b, c, s, h)` per image.

    Returns:
      float32 `[B, H, W, 3]` in [0, 1].
    """
    shape = shape_list(images)
    pixels = tf.reshape(images, [shape[0], -1, 3])
    b, c, s, h = tf.unstack(factors, axis=1)
    theta = 2.0 * math.pi * h
    weights = b[:, None] * tf.stack([tf.ones_like(s), s * tf.cos(theta), s * tf.sin(theta)], 1)
    colour = tf.reshape(weights @ tf.constant(_JITTER_BASIS), [-1, 3, 3])  # [B, 3, 3]
    mean = tf.reduce_mean(pixels, axis=1, keepdims=True)  # [B, 1, 3]
    offset = (1.0 - c)[:, None, None] * (mean @ colour)
    jittered = pixels @ (c[:, None, None] * colour) + offset
    return tf.reshape(tf.clip_by_value(jittered, 0.0, 1.0), shape)


def grayscale(images: tf.Tensor, flags: tf.Tensor) -> tf.Tensor:
    """Luma in three channels where `flags[i]` (bool `[B]`), else the image.

    One matrix product per image (the luma matrix or the identity), not a
    conversion of every image and a selection.
    """
    luma = tf.constant(np.repeat(np.array(LUMA, np.float32)[:, None], 3, axis=1))
    matrices = tf.where(flags[:, None, None], luma[None], tf.eye(3)[None])
    shape = shape_list(images)
    return tf.reshape(tf.reshape(images, [shape[0], -1, 3]) @ matrices, shape)


def solarize(images: tf.Tensor, flags: tf.Tensor, threshold: float = 0.5) -> tf.Tensor:
    """Inverts values at or above `threshold` where `flags[i]` (bool `[B]`)."""
    solarized = tf.where(images < threshold, images, 1.0 - images)
    return tf.where(flags[:, None, None, None], solarized, images)


def blur_kernel_size(height: int) -> int:
    """The default odd kernel size: about 10% of the height (`2 * (H // 20) + 1`)."""
    return 2 * (int(height) // 20) + 1


def gaussian_blur(images: tf.Tensor, sigmas: tf.Tensor, kernel_size: int | None = None) -> tf.Tensor:
    """Separable Gaussian blur with reflection padding, a sigma per image.

    A sigma <= 0 leaves that image unchanged (its kernel is a unit impulse).
    The images are laid side by side as channels of one image, so one
    depthwise convolution gives each its own kernel.

    Args:
      images: float32 `[B, H, W, C]` with static H, W and C.
      sigmas: float32 `[B]`, in pixels.
      kernel_size: Odd kernel size; default `blur_kernel_size(H)`. A size of
        1 leaves the images as they are.

    Returns:
      float32 `[B, H, W, C]`.
    """
    _, height, width, channels = shape_list(images)
    if kernel_size is None:
        kernel_size = blur_kernel_size(height)
    radius = kernel_size // 2
    if radius < 1:
        return images
    x = tf.cast(tf.range(-radius, radius + 1), tf.float32)
    safe = tf.maximum(sigmas, 1e-3)[:, None]
    kernels = tf.exp(-tf.square(x)[None] / (2.0 * tf.square(safe)))
    kernels = kernels / tf.reduce_sum(kernels, axis=1, keepdims=True)
    impulse = tf.one_hot(radius, kernel_size)[None]
    kernels = tf.where((sigmas > 0)[:, None], kernels, impulse)  # [B, K]
    batch = shape_list(images)[0]
    # [B, K] -> one kernel per (image, channel), in the order of the stacked channels.
    per_channel = tf.reshape(tf.repeat(kernels, channels, axis=0), [-1, kernel_size])
    # One image is already laid out so (the per-image path in tf.data).
    single = images.shape[0] == 1
    stacked = images if single else tf.reshape(
        tf.transpose(images, [1, 2, 0, 3]), [1, height, width, -1])
    padded = tf.pad(stacked, [[0, 0], [radius, radius], [radius, radius], [0, 0]], "REFLECT")
    horizontal = tf.transpose(per_channel)[None, :, :, None]
    vertical = tf.transpose(per_channel)[:, None, :, None]
    blurred = tf.nn.depthwise_conv2d(padded, horizontal, [1, 1, 1, 1], "VALID")
    blurred = tf.nn.depthwise_conv2d(blurred, vertical, [1, 1, 1, 1], "VALID")
    if single:
        return blurred
    blurred = tf.reshape(blurred, [height, width, batch, channels])
    return tf.transpose(blurred, [2, 0, 1, 3])
