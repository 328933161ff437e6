"""Training metrics for method authors."""

from __future__ import annotations

import tensorflow as tf

from keras_ssl import cross_replica


def normalized_embedding_std(embeddings: tf.Tensor) -> tf.Tensor:
    """The collapse metric: the mean over dimensions of the std of l2-normalised embeddings.

    Computed over the global batch (the same on every replica), without
    gradient. A collapsed representation (every image mapped to one point)
    gives 0; embeddings spread uniformly over the unit sphere of dimension
    D give about `1 / sqrt(D)`, so a value far below that warns of collapse
    (SimSiam's paper, Fig. 2, tracks the same statistic).

    Args:
      embeddings: `[B, D]`, this replica's rows.

    Returns:
      A float32 scalar.
    """
    z = tf.math.l2_normalize(tf.stop_gradient(tf.cast(embeddings, tf.float32)), axis=-1)
    mean = cross_replica.global_mean(z)
    variance = cross_replica.global_mean(tf.square(z - mean))
    return tf.reduce_mean(tf.sqrt(tf.maximum(variance, 0.0)))
