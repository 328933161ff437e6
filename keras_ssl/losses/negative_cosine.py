"""The negative cosine similarity to a stop-gradient target (BYOL, SimSiam)."""

from __future__ import annotations

import tensorflow as tf


def negative_cosine_similarity(predictions: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """`-mean_i cos(p_i, stopgrad(z_i))`: SimSiam's D, and BYOL's loss up to `2 + 2 D`.

    BYOL's `||p/||p|| - z/||z|| ||^2 = 2 - 2 cos(p, z)`; SimSiam's
    `D(p, z) = -cos(p, stopgrad(z))`. Both stop the gradient at the target
    (the target network's projection, or the other branch's projection).

    Args:
      predictions: `[B, D]`, the online branch's predictions.
      targets: `[B, D]`, row i the target of prediction i (no gradient flows
        into it).

    Returns:
      The scalar mean over this replica's rows, in [-1, 1].
    """
    p = tf.math.l2_normalize(tf.cast(predictions, tf.float32), axis=-1)
    z = tf.math.l2_normalize(tf.stop_gradient(tf.cast(targets, tf.float32)), axis=-1)
    return -tf.reduce_mean(tf.reduce_sum(p * z, axis=-1))
