"""VICReg's variance-invariance-covariance loss (Bardes et al. 2022), statistics over the global batch."""

from __future__ import annotations

import tensorflow as tf

from keras_ssl import cross_replica


def variance_term(embeddings: tf.Tensor, epsilon: float = 1e-4) -> tf.Tensor:
    """`mean_j relu(1 - sqrt(Var(z_j) + eps))`, the variance unbiased over the global batch."""
    z = tf.cast(embeddings, tf.float32)
    rows = tf.cast(tf.shape(z)[0] * cross_replica.num_replicas(), tf.float32)
    centred = z - cross_replica.global_mean(z)
    variance = cross_replica.global_sum(tf.reduce_sum(tf.square(centred), 0)) / (rows - 1.0)
    return tf.reduce_mean(tf.nn.relu(1.0 - tf.sqrt(variance + epsilon)))


def covariance_term(embeddings: tf.Tensor) -> tf.Tensor:
    """`sum_{i != j} Cov(z)_ij^2 / D`, the covariance unbiased over the global batch."""
    z = tf.cast(embeddings, tf.float32)
    rows = tf.cast(tf.shape(z)[0] * cross_replica.num_replicas(), tf.float32)
    dims = tf.cast(tf.shape(z)[1], tf.float32)
    centred = z - cross_replica.global_mean(z)
    covariance = cross_replica.global_sum(tf.matmul(centred, centred, transpose_a=True)) / (rows - 1.0)
    off_diagonal = tf.reduce_sum(tf.square(covariance)) - tf.reduce_sum(
        tf.square(tf.linalg.diag_part(covariance))
    )
    return off_diagonal / dims


def vicreg_loss(
    embeddings_1: tf.Tensor,
    embeddings_2: tf.Tensor,
    invariance_weight: float = 25.0,
    variance_weight: float = 25.0,
    covariance_weight: float = 1.0,
):
    """`lambda s(Z, Z') + mu [v(Z) + v(Z')] + nu [c(Z) + c(Z')]` (the paper's Eq. 6).

    s is the mean squared error between the two views' embeddings (over
    this replica's rows: its mean over replicas is the global mean); v and
    c use the global batch's statistics, the same on every replica.

    Args:
      embeddings_1: `[B, D]`, the expander's output for view 1.
      embeddings_2: `[B, D]`, for view 2 (row i = the same image).
      invariance_weight: lambda (25).
      variance_weight: mu (25).
      covariance_weight: nu (1).

    Returns:
      `(loss, terms)` with `terms = {"invariance", "variance", "covariance"}`,
      each unweighted and summed over the two branches.
    """
    z1 = tf.cast(embeddings_1, tf.float32)
    z2 = tf.cast(embeddings_2, tf.float32)
    invariance = tf.reduce_mean(tf.square(z1 - z2))
    variance = variance_term(z1) + variance_term(z2)
    covariance = covariance_term(z1) + covariance_term(z2)
    loss = invariance_weight * invariance + variance_weight * variance + covariance_weight * covariance
    return loss, {"invariance": invariance, "variance": variance, "covariance": covariance}
