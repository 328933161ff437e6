"""Counting visual primitives (Noroozi, Pirsiavash & Favaro, 2017).

A network phi maps an image to a vector of non-negative "counts" (the
backbone's pre-logits, a dense layer and a ReLU). Counts are additive: the
image downsampled 2x holds what its four tiles hold together, so

    phi(D x) = phi(T_1 x) + phi(T_2 x) + phi(T_3 x) + phi(T_4 x).

Alone, that equation is solved by phi = 0. A contrastive term keeps the
tiles' sum at least a margin M away from the downsampled view of another
image y:

    loss = ||phi(D x) - sum_i phi(T_i x)||^2
           + max(0, M - ||phi(D y) - sum_i phi(T_i x)||^2).

y is the next image of the global batch (the last one's is the first), so
the pairs, and the loss, do not depend on how the batch is split over
replicas. The 2x downsampling draws its interpolation per image (bilinear,
bicubic, area or Lanczos), as the paper does, so that the network cannot
tell the downsampled view from the tiles by the resampling's artefacts.
Kolesnikov et al. (2019, Table 2) quote 34.3% ImageNet linear accuracy for it.
"""

from __future__ import annotations

import keras
import tensorflow as tf

import keras_ssl.random
from keras_ssl import Method, cross_replica
from keras_ssl.testing.tiny import TINY_IMAGE_SIZE

# The interpolations the downsampled view is drawn from.
DOWNSAMPLING_METHODS = ("bilinear", "bicubic", "area", "lanczos3")


def counting_loss(downsampled: tf.Tensor, tiles_sum: tf.Tensor, other_downsampled: tf.Tensor,
                  margin: float) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The counting loss of a batch, and its two distances.

    Args:
      downsampled: `[B, K]` counts of the downsampled images.
      tiles_sum: `[B, K]` the sum of each image's four tiles' counts.
      other_downsampled: `[B, K]` counts of another image's downsampled view.
      margin: M, the squared distance the other image must keep.

    Returns:
      `(loss, equation distance, contrast distance)`, each a mean over the batch.

    Example:
      >>> loss, _, _ = counting_loss(tf.ones([2, 3]), tf.ones([2, 3]), tf.ones([2, 3]), 10.0)
      >>> float(loss)
      10.0
    """
    equation = tf.reduce_sum(tf.square(downsampled - tiles_sum), axis=-1)
    contrast = tf.reduce_sum(tf.square(other_downsampled - tiles_sum), axis=-1)
    loss = equation + tf.nn.relu(margin - contrast)
    return tf.reduce_mean(loss), tf.reduce_mean(equation), tf.reduce_mean(contrast)


def _downsample(image: tf.Tensor, size: int) -> tf.Tensor:
    """`image` resized to `size` with an interpolation drawn from `DOWNSAMPLING_METHODS`."""
    choice = keras_ssl.random.uniform([], 0, len(DOWNSAMPLING_METHODS), dtype=tf.int32)
    branches = [
        lambda method=method: tf.image.resize(image, [size, size], method=method)
        for method in DOWNSAMPLING_METHODS
    ]
    # Bicubic and Lanczos overshoot at edges; the tiles stay in [0, 1].
    return tf.clip_by_value(tf.switch_case(choice, branches), 0.0, 1.0)


class Counting(Method):
    """Learns counts that the four tiles of an image sum to.

    Args:
      backbone: The backbone (see `keras_ssl.backbones`), applied to tiles
        and downsampled images alike.
      tile_size: Side of the tiles and of the downsampled view; each image is
        resized to twice this first.
      num_counts: Length of the count vector (the paper: 1000).
      margin: M of the contrastive term (the paper: 10).
      augmentation: Augmentation stack applied once per image, before the
        tiles are cut, so tiles and downsampled view show the same image.
      **kwargs: Passed to `keras_ssl.Method`.

    Example:

    >>> from keras_ssl.backbones import build_backbone
    >>> net = build_backbone("resnet_v2", depth=10, widening_factor=1,
    ...                      small_image_stem=True)
    >>> method = Counting(net, tile_size=8)
    >>> inputs = method.preprocess({"image": tf.zeros((32, 32, 3)),
    ...                             "label": tf.constant(0, tf.int64),
    ...                             "index": tf.constant(0, tf.int64)})
    >>> inputs["tiles"].shape, inputs["downsampled"].shape
    (TensorShape([4, 8, 8, 3]), TensorShape([8, 8, 3]))
    """

    @classmethod
    def tiny_settings(cls):
        # Tiles of half the tiny image.
        return dict(tile_size=TINY_IMAGE_SIZE // 2, num_counts=16)

    def __init__(self, backbone, tile_size: int = 114, num_counts: int = 1000,
                 margin: float = 10.0, augmentation="none", **kwargs):
        super().__init__(backbone, augmentation=augmentation, **kwargs)
        if tile_size < 2:
            raise ValueError(f"counting: tile_size must be at least 2 px, got {tile_size}.")
        if num_counts < 1:
            raise ValueError(f"counting: num_counts must be positive, got {num_counts}.")
        if margin <= 0:
            raise ValueError(f"counting: margin must be positive, got {margin}.")
        self.tile_size = int(tile_size)
        self.num_counts = int(num_counts)
        self.margin = float(margin)
        self.counts = keras.layers.Dense(num_counts, name="counts")

    def check_training_setup(self, global_batch_size, image_size):
        if global_batch_size < 2:
            raise ValueError(
                "counting: the contrastive term pairs each image with another one of the "
                f"batch and needs at least 2 images per step, got keras_ssl.train.batch_size = "
                f"{global_batch_size}; raise the batch size."
            )

    def preprocess(self, example):
        size = self.tile_size
        image = tf.image.resize(self.augment(example["image"]), [2 * size, 2 * size])
        image = tf.clip_by_value(image, 0.0, 1.0)
        tiles = tf.stack([
            image[row * size:(row + 1) * size, column * size:(column + 1) * size]
            for row in range(2) for column in range(2)
        ])
        return {"tiles": tiles, "downsampled": _downsample(image, size)}

    def count(self, images: tf.Tensor, training: bool) -> tf.Tensor:
        """phi: `[N, h, w, 3]` -> `[N, num_counts]` non-negative counts."""
        features = self.backbone(images, training=training)["pre_logits"]
        return tf.nn.relu(tf.cast(self.counts(features), tf.float32))

    def compute_pretext_loss(self, batch, training):
        tiles, downsampled = batch["tiles"], batch["downsampled"]
        rows = tf.shape(downsampled)[0]
        # Tiles and downsampled views share one backbone call (one set of BN statistics).
        flat_tiles = tf.reshape(tiles, tf.concat([[-1], tf.shape(tiles)[2:]], 0))
        counts = self.count(tf.concat([flat_tiles, downsampled], 0), training)
        tiles_sum = tf.reduce_sum(tf.reshape(counts[:4 * rows], [rows, 4, self.num_counts]), 1)
        downsampled_counts = counts[4 * rows:]
        # The next image of the global batch is each image's "other" image.
        others = cross_replica.replica_rows(
            tf.roll(cross_replica.gather(downsampled_counts), shift=-1, axis=0))
        loss, equation, contrast = counting_loss(downsampled_counts, tiles_sum, others,
                                                 self.margin)
        active = tf.reduce_mean(tf.cast(counts > 0.0, tf.float32))
        return loss, {"equation_distance": equation, "contrast_distance": contrast,
                      "active_counts": active}
