"""Metric-learning losses: triplet (Exemplar) and N-pair.

Keras 3 ships neither (TensorFlow Addons, which had both, does not import
with Keras 3); each is written from its paper's formula and tested against
a brute-force numpy version (tests/core/losses/test_losses.py).
"""

from __future__ import annotations

import tensorflow as tf

# The hard-example mining `triplet_loss` knows.
TRIPLET_MINING = ("batch_hard", "semi_hard")


def pairwise_distances(embeddings: tf.Tensor, squared: bool = False) -> tf.Tensor:
    """`[N, N]` Euclidean distances between rows (0 on the diagonal)."""
    e = tf.cast(embeddings, tf.float32)
    norms = tf.reduce_sum(tf.square(e), axis=1)
    d2 = norms[:, None] - 2.0 * tf.matmul(e, e, transpose_b=True) + norms[None, :]
    d2 = tf.maximum(d2, 0.0)
    d2 = d2 * (1.0 - tf.eye(tf.shape(e)[0]))
    if squared:
        return d2
    # Gradient-safe sqrt: zero distances get a zero gradient.
    zero = tf.cast(tf.equal(d2, 0.0), tf.float32)
    return tf.sqrt(d2 + zero * 1e-16) * (1.0 - zero)


def triplet_loss(
    embeddings: tf.Tensor,
    labels: tf.Tensor,
    margin: float = 0.5,
    mining: str = "batch_hard",
    normalize: bool = True,
) -> tf.Tensor:
    """Triplet loss with batch-hard or semi-hard mining (Exemplar's loss).

    Distances are Euclidean between embeddings, each l2-normalised on its
    own (not across the batch) when `normalize`.

    - `batch_hard` (Hermans et al. 2017): per anchor, the farthest positive
      and the nearest negative; `mean(relu(d_ap - d_an + margin))`.
    - `semi_hard` (Schroff et al. 2015, as TF Addons computed it): per
      positive pair (a, p), the nearest negative farther than p
      (`d_an > d_ap`), or the farthest negative when none is; the mean of
      `relu(d_ap - d_an + margin)` over positive pairs.

    Args:
      embeddings: `[N, D]`.
      labels: `[N]` integer identities (for Exemplar: the source image).
      margin: The margin.
      mining: `batch_hard` or `semi_hard`.
      normalize: l2-normalise each embedding first.

    Returns:
      The scalar loss (0 if the batch has no positive pair).
    """
    e = tf.cast(embeddings, tf.float32)
    if normalize:
        e = tf.math.l2_normalize(e, axis=-1)
    labels = tf.reshape(labels, [-1])
    d = pairwise_distances(e)
    n = tf.shape(e)[0]
    same = tf.equal(labels[:, None], labels[None, :])
    not_self = tf.logical_not(tf.cast(tf.eye(n), tf.bool))
    positive = tf.cast(tf.logical_and(same, not_self), tf.float32)
    negative = tf.cast(tf.logical_not(same), tf.float32)
    if mining == "batch_hard":
        hardest_positive = tf.reduce_max(d * positive, axis=1)
        max_d = tf.reduce_max(d)
        hardest_negative = tf.reduce_min(d + (1.0 - negative) * (max_d + 1.0), axis=1)
        valid = tf.cast(
            tf.logical_and(tf.reduce_any(positive > 0, 1), tf.reduce_any(negative > 0, 1)),
            tf.float32,
        )
        losses = tf.nn.relu(hardest_positive - hardest_negative + margin) * valid
        return tf.reduce_sum(losses) / tf.maximum(tf.reduce_sum(valid), 1.0)
    if mining == "semi_hard":
        # [a, p, n]: is n a negative of a farther from a than p?
        d_ap = d[:, :, None]
        d_an = d[:, None, :]
        neg = negative[:, None, :]
        outside = neg * tf.cast(d_an > d_ap, tf.float32)
        big = tf.reduce_max(d) + 1.0
        nearest_outside = tf.reduce_min(d_an + (1.0 - outside) * big, axis=2)
        farthest_negative = tf.reduce_max(d * negative, axis=1, keepdims=True)
        has_outside = tf.reduce_any(outside > 0, axis=2)
        chosen = tf.where(has_outside, nearest_outside, tf.broadcast_to(farthest_negative, tf.shape(d)))
        has_negative = tf.cast(tf.reduce_any(negative > 0, 1, keepdims=True), tf.float32)
        pairs = positive * has_negative
        losses = tf.nn.relu(d - chosen + margin) * pairs
        return tf.reduce_sum(losses) / tf.maximum(tf.reduce_sum(pairs), 1.0)
    raise ValueError(f"mining must be one of {TRIPLET_MINING}, got {mining!r}.")


def npair_loss(anchors: tf.Tensor, positives: tf.Tensor, labels=None, l2_regularization: float = 0.002):
    """N-pair loss (Sohn 2016): softmax over anchor . positive similarities.

    `logits = anchors @ positives^T`; the target of row i is uniform over the
    positives with anchor i's label (row i itself when `labels` is None);
    plus `0.25 * l2_regularization * (mean ||a||^2 + mean ||p||^2)` on the
    raw embeddings, as in the paper's reference implementation.

    Args:
      anchors: `[N, D]`.
      positives: `[N, D]`, row i pairs with anchor i.
      labels: Optional `[N]` class ids (several pairs may share a class).
      l2_regularization: Weight of the embedding-norm penalty.

    Returns:
      The scalar loss.
    """
    a = tf.cast(anchors, tf.float32)
    p = tf.cast(positives, tf.float32)
    if labels is None:
        labels = tf.range(tf.shape(a)[0])
    labels = tf.reshape(labels, [-1])
    targets = tf.cast(tf.equal(labels[:, None], labels[None, :]), tf.float32)
    targets = targets / tf.reduce_sum(targets, axis=1, keepdims=True)
    logits = tf.matmul(a, p, transpose_b=True)
    cross_entropy = tf.reduce_mean(
        tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    )
    regularization = 0.25 * l2_regularization * (
        tf.reduce_mean(tf.reduce_sum(tf.square(a), 1)) + tf.reduce_mean(tf.reduce_sum(tf.square(p), 1))
    )
    return cross_entropy + regularization
