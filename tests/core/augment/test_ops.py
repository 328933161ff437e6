"""Batched image ops (`keras_ssl.augment.ops`): each image its own parameters, against their
definitions and the per-image ops."""

import numpy as np
import tensorflow as tf

from keras_ssl import augment
from keras_ssl.augment import ops

SIZE = 24


def _images(count, seed=0):
    """`[count, SIZE, SIZE, 3]` noise in [0.1, 0.9], a band of one colour across each image."""
    rng = np.random.RandomState(seed)
    images = rng.uniform(0.1, 0.9, (count, SIZE, SIZE, 3)).astype(np.float32)
    images[:, SIZE // 4: SIZE // 2] = rng.uniform(0, 1, (count, 1, 1, 3))
    return images


def test_color_jitter_matches_its_definition():
    image = 0.5 + 0.3 * (_images(1, 5)[0] - 0.5)  # low chroma: the hue turn below stays in gamut
    factors = tf.constant([[1.3, 0.7, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.5]])
    out = ops.color_jitter(tf.constant(np.stack([image] * 3)), factors).numpy()
    # brightness then contrast around the per-channel mean, clipped once
    bright = 1.3 * image
    expected = np.clip(0.7 * bright + 0.3 * bright.mean((0, 1)), 0, 1)
    np.testing.assert_allclose(out[0], expected, atol=1e-5)
    # saturation 0: the YIQ luma in every channel
    luma = image @ np.array([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(out[1], np.repeat(luma[..., None], 3, -1), atol=1e-5)
    # a half turn of hue keeps luma and negates chroma: x -> 2 luma - x
    np.testing.assert_allclose(out[2], 2 * luma[..., None] - image, atol=1e-4)
    identity = ops.color_jitter(tf.constant(image[None]), tf.constant([[1.0, 1.0, 1.0, 0.0]]))
    np.testing.assert_allclose(identity[0], image, atol=1e-5)


def test_blur_gives_each_image_its_own_sigma():
    images = _images(2, 6)
    out = ops.gaussian_blur(tf.constant(images), tf.constant([2.0, 0.0])).numpy()
    np.testing.assert_array_equal(out[1], images[1])  # sigma 0: untouched
    np.testing.assert_allclose(out[0], augment.gaussian_blur(tf.constant(images[0]), 2.0), atol=1e-5)
