"""Barlow Twins' redundancy-reduction loss (Zbontar et al. 2021), over the global batch."""

from __future__ import annotations

import tensorflow as tf

from keras_ssl import cross_replica

BATCH_NORM_EPSILON = 1e-5  # PyTorch's BatchNorm1d default, which standardises the embeddings


def standardize(embeddings: tf.Tensor, epsilon: float = BATCH_NORM_EPSILON) -> tf.Tensor:
    """Each dimension standardised by its mean and (biased) variance over the global batch."""
    z = tf.cast(embeddings, tf.float32)
    mean = cross_replica.global_mean(z)
    variance = cross_replica.global_mean(tf.square(z - mean))
    return (z - mean) * tf.math.rsqrt(variance + epsilon)


def cross_correlation(embeddings_1: tf.Tensor, embeddings_2: tf.Tensor) -> tf.Tensor:
    """`C = z1n^T z2n / N`: the `[D, D]` cross-correlation of the standardised embeddings.

    N is the global batch; the sum over rows is taken over every replica, so
    C is the same on each and equals the one-device C of the whole batch.
    """
    z1 = standardize(embeddings_1)
    z2 = standardize(embeddings_2)
    rows = tf.cast(tf.shape(z1)[0] * cross_replica.num_replicas(), tf.float32)
    return cross_replica.global_sum(tf.matmul(z1, z2, transpose_a=True)) / rows


def barlow_twins_loss(
    embeddings_1: tf.Tensor, embeddings_2: tf.Tensor, redundancy_weight: float = 5e-3
):
    """`sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2`.

    Args:
      embeddings_1: `[B, D]`, the projector's output for view 1 (this replica's rows).
      embeddings_2: `[B, D]`, for view 2 (row i = the same image).
      redundancy_weight: lambda (5e-3 in the paper, for D = 8192).

    Returns:
      `(loss, C)`: the scalar loss (the same on every replica) and the `[D, D]`
      cross-correlation.
    """
    c = cross_correlation(embeddings_1, embeddings_2)
    diagonal = tf.linalg.diag_part(c)
    on_diagonal = tf.reduce_sum(tf.square(1.0 - diagonal))
    off_diagonal = tf.reduce_sum(tf.square(c)) - tf.reduce_sum(tf.square(diagonal))
    return on_diagonal + redundancy_weight * off_diagonal, c
