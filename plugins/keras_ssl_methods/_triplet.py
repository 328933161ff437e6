"""Triplet losses with online mining (batch-hard and semi-hard), in TensorFlow.

Private to keras_ssl_methods (Exemplar); the lead may merge it with
`keras_ssl.losses` later. Distances are Euclidean (not squared) between the
embeddings as given; Exemplar l2-normalises each embedding before calling.

- batch-hard (Hermans et al. 2017): for every anchor, the farthest positive and
  the closest negative; loss = mean_a max(d(a, p*) - d(a, n*) + margin, 0).
- semi-hard (Schroff et al. 2015, FaceNet; the form of TF-Addons'
  `triplet_semihard_loss`): for every anchor-positive pair (a, p), a != p, the
  closest negative farther than p, d(a, n) > d(a, p); when there is none, the
  farthest negative. loss = mean over pairs of max(d(a, p) - d(a, n) + margin, 0).
"""

from __future__ import annotations

import tensorflow as tf

TRIPLET_VARIANTS = ("batch_hard", "semi_hard")


def pairwise_distances(embeddings: tf.Tensor) -> tf.Tensor:
    """Euclidean distances `[n, n]`, exactly 0 on the diagonal, finite gradient."""
    embeddings = tf.cast(embeddings, tf.float32)
    squared_norms = tf.reduce_sum(tf.square(embeddings), axis=1)
    squared = (
        squared_norms[:, None]
        - 2.0 * tf.matmul(embeddings, embeddings, transpose_b=True)
        + squared_norms[None, :]
    )
    squared = tf.maximum(squared, 0.0)
    zero = tf.cast(squared <= 1e-12, tf.float32)
    # sqrt has an infinite gradient at 0: take it of a positive stand-in there.
    distances = tf.sqrt(squared + zero * 1e-12) * (1.0 - zero)
    n = tf.shape(embeddings)[0]
    return distances * (1.0 - tf.eye(n))


def _masks(labels):
    labels = tf.reshape(labels, [-1])
    same = tf.equal(labels[:, None], labels[None, :])
    not_self = tf.logical_not(tf.eye(tf.shape(labels)[0], dtype=tf.bool))
    return tf.logical_and(same, not_self), tf.logical_not(same)


def batch_hard_triplet_loss(labels, embeddings, margin: float = 0.5) -> tf.Tensor:
    """Batch-hard triplet loss; anchors without a positive or negative are skipped."""
    distances = pairwise_distances(embeddings)
    positive, negative = _masks(labels)
    positive_f, negative_f = tf.cast(positive, tf.float32), tf.cast(negative, tf.float32)
    hardest_positive = tf.reduce_max(distances * positive_f, axis=1)
    big = tf.reduce_max(distances) + 1.0
    hardest_negative = tf.reduce_min(distances + big * (1.0 - negative_f), axis=1)
    valid = tf.cast(
        tf.logical_and(tf.reduce_any(positive, 1), tf.reduce_any(negative, 1)), tf.float32
    )
    losses = tf.maximum(hardest_positive - hardest_negative + margin, 0.0) * valid
    return tf.math.divide_no_nan(tf.reduce_sum(losses), tf.reduce_sum(valid))


def semi_hard_triplet_loss(labels, embeddings, margin: float = 0.5) -> tf.Tensor:
    """Semi-hard triplet loss over all anchor-positive pairs."""
    distances = pairwise_distances(embeddings)
    positive, negative = _masks(labels)
    negative_f = tf.cast(negative, tf.float32)
    # d_an[a, n] broadcast against d_ap[a, p]: [a, p, n].
    d_ap = distances[:, :, None]
    d_an = distances[:, None, :]
    outside = tf.logical_and(negative[:, None, :], d_an > d_ap)
    big = tf.reduce_max(distances) + 1.0
    closest_outside = tf.reduce_min(tf.where(outside, d_an, big + d_an * 0.0), axis=2)
    farthest = tf.reduce_max(distances * negative_f - big * (1.0 - negative_f), axis=1)
    has_outside = tf.reduce_any(outside, axis=2)
    chosen = tf.where(has_outside, closest_outside, farthest[:, None] + 0.0 * closest_outside)
    losses = tf.maximum(distances - chosen + margin, 0.0)
    valid = tf.logical_and(positive, tf.reduce_any(negative, 1)[:, None])
    valid_f = tf.cast(valid, tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(losses * valid_f), tf.reduce_sum(valid_f))


def triplet_loss(labels, embeddings, margin: float = 0.5, variant: str = "batch_hard"):
    """Dispatches to `batch_hard_triplet_loss` or `semi_hard_triplet_loss`."""
    if variant == "batch_hard":
        return batch_hard_triplet_loss(labels, embeddings, margin)
    if variant == "semi_hard":
        return semi_hard_triplet_loss(labels, embeddings, margin)
    raise ValueError(f"triplet variant must be one of {TRIPLET_VARIANTS}, got {variant!r}.")
