"""SwAV's swapped prediction (Caron et al. 2020) with Sinkhorn-Knopp codes over the global batch."""

from __future__ import annotations

import tensorflow as tf

from keras_ssl import cross_replica


def sinkhorn_knopp(scores: tf.Tensor, epsilon: float = 0.05, iterations: int = 3) -> tf.Tensor:
    """Soft codes: the equipartitioned assignment of rows to prototypes.

    `Q = exp(scores / eps)^T`, then alternately normalised so that each
    prototype receives the same total mass and each row a unit mass; row
    and column sums run over the global batch (every replica's rows), so
    the codes of one replica's rows are those of the whole batch on one
    device. No gradient flows through the codes.

    Args:
      scores: `[B, K]` cosine similarities of this replica's rows to the
        prototypes (with any queued rows this replica holds).
      epsilon: The entropy regularisation (0.05).
      iterations: Normalisation rounds (3).

    Returns:
      `[B, K]` codes; each row sums to 1.
    """
    scores = tf.stop_gradient(tf.cast(scores, tf.float32))
    # Shifted by the global maximum so exp cannot overflow; a constant shift
    # cancels in the first normalisation.
    shift = tf.reduce_max(cross_replica.gather(tf.reduce_max(scores)[None]))
    q = tf.transpose(tf.exp((scores - shift) / epsilon))  # [K, B]
    prototypes = tf.cast(tf.shape(q)[0], tf.float32)
    rows = tf.cast(tf.shape(q)[1] * cross_replica.num_replicas(), tf.float32)
    q = q / cross_replica.global_sum(tf.reduce_sum(q))
    for _ in range(iterations):
        q = q / cross_replica.global_sum(tf.reduce_sum(q, axis=1, keepdims=True)) / prototypes
        q = q / tf.reduce_sum(q, axis=0, keepdims=True) / rows
    return tf.stop_gradient(tf.transpose(q * rows))


def swapped_prediction_loss(scores, codes, temperature: float = 0.1) -> tf.Tensor:
    """`mean over (code view a, other view b)` of `-sum_k q_a log softmax(s_b / tau)`.

    Args:
      scores: A list of `[B, K]` prototype scores, one per view.
      codes: A dict `{view index: [B, K] codes}` for the views codes are
        computed from (SwAV's `crops_for_assign`, the global views).
      temperature: tau (0.1).

    Returns:
      The scalar loss: for each coded view, the mean over the other views
      of the batch-mean cross-entropy, averaged over coded views.
    """
    log_probabilities = [tf.nn.log_softmax(tf.cast(s, tf.float32) / temperature, -1) for s in scores]
    total = 0.0
    for a, q in codes.items():
        others = [b for b in range(len(scores)) if b != a]
        subtotal = 0.0
        for b in others:
            subtotal += tf.reduce_mean(-tf.reduce_sum(q * log_probabilities[b], axis=-1))
        total += subtotal / len(others)
    return total / len(codes)
