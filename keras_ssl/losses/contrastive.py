"""Contrastive losses: NT-Xent (SimCLR), InfoNCE (MoCo), NCE (NPID).

Each is written from its paper's formula and tested against a brute-force
numpy version (tests/core/losses/test_losses.py). They return the mean over this
replica's rows, the convention of `keras_ssl.Method.compute_pretext_loss`
(the train step divides by the number of replicas). `nt_xent_loss` gathers
the negatives of every replica (`keras_ssl.cross_replica.gather`, which is
differentiable), so one step on N replicas equals one step on the
concatenated batch on one device.
"""

from __future__ import annotations

import tensorflow as tf

from keras_ssl import cross_replica

LARGE_NUM = 1e9


def nt_xent_loss(
    projections_1: tf.Tensor,
    projections_2: tf.Tensor,
    temperature: float = 0.1,
    normalize: bool = True,
    cross_replica_negatives: bool = True,
):
    """NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR.

    For rows i of view 1 and view 2 (the local batch B), with h = l2-normalised
    projections gathered over all replicas (global batch N):
    `logits_ab = h1 @ h2_all^T / tau`, `logits_aa = h1 @ h1_all^T / tau` with
    the self-similarity masked out; the label of row i is its own global index
    in the other view; the loss is `CE([ab, aa]) + CE([ba, bb])`, each the mean
    over the local batch (as the SimCLR reference code computes it).

    Args:
      projections_1: `[B, D]`, the first view's projections.
      projections_2: `[B, D]`, the second view's (row i = same image).
      temperature: tau.
      normalize: l2-normalise the projections first.
      cross_replica_negatives: Use the other replicas' rows as negatives too.

    Returns:
      `(loss, logits_ab, labels)`: the scalar loss, the `[B, N]` view-1 vs
      view-2 logits and the `[B]` positive indices (for a contrastive
      accuracy metric).
    """
    h1 = tf.cast(projections_1, tf.float32)
    h2 = tf.cast(projections_2, tf.float32)
    if normalize:
        h1 = tf.math.l2_normalize(h1, axis=-1)
        h2 = tf.math.l2_normalize(h2, axis=-1)
    batch = tf.shape(h1)[0]
    if cross_replica_negatives:
        replicas, replica_id = cross_replica.replica_position()
        h1_all = cross_replica.gather(h1)
        h2_all = cross_replica.gather(h2)
    else:
        replicas, replica_id = 1, 0
        h1_all, h2_all = h1, h2
    labels = tf.range(batch) + replica_id * batch
    masks = tf.one_hot(labels, batch * replicas)
    logits_aa = tf.matmul(h1, h1_all, transpose_b=True) / temperature - masks * LARGE_NUM
    logits_bb = tf.matmul(h2, h2_all, transpose_b=True) / temperature - masks * LARGE_NUM
    logits_ab = tf.matmul(h1, h2_all, transpose_b=True) / temperature
    logits_ba = tf.matmul(h2, h1_all, transpose_b=True) / temperature
    loss_a = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labels, logits=tf.concat([logits_ab, logits_aa], 1)
    )
    loss_b = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labels, logits=tf.concat([logits_ba, logits_bb], 1)
    )
    loss = tf.reduce_mean(loss_a) + tf.reduce_mean(loss_b)
    return loss, logits_ab, labels


def info_nce_loss(
    queries: tf.Tensor,
    positive_keys: tf.Tensor,
    negative_keys: tf.Tensor,
    temperature: float = 0.2,
    normalize: bool = True,
):
    """InfoNCE (MoCo): classify each query's positive key among the negatives.

    `logits = [q . k+, q . K^T] / tau`, the positive at index 0; the loss is
    the mean cross-entropy. No gradient flows into the keys when they come
    from a momentum encoder or a queue (wrap them in `tf.stop_gradient`).

    Args:
      queries: `[B, D]`.
      positive_keys: `[B, D]`, row i is the positive of query i.
      negative_keys: `[K, D]`, shared by every query (MoCo's queue).
      temperature: tau (0.2 for MoCo v2 with an MLP head).
      normalize: l2-normalise queries and keys first.

    Returns:
      `(loss, logits)` with logits `[B, 1 + K]` (label 0 is the positive).
    """
    q = tf.cast(queries, tf.float32)
    k = tf.cast(positive_keys, tf.float32)
    negatives = tf.cast(negative_keys, tf.float32)
    if normalize:
        q = tf.math.l2_normalize(q, axis=-1)
        k = tf.math.l2_normalize(k, axis=-1)
        negatives = tf.math.l2_normalize(negatives, axis=-1)
    positive = tf.reduce_sum(q * k, axis=-1, keepdims=True)
    negative = tf.matmul(q, negatives, transpose_b=True)
    logits = tf.concat([positive, negative], axis=1) / temperature
    labels = tf.zeros(tf.shape(q)[:1], tf.int32)
    loss = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    )
    return loss, logits


def nce_loss(
    positive_scores: tf.Tensor,
    noise_scores: tf.Tensor,
    num_examples: int,
    temperature: float = 0.07,
    normalization_constant=None,
):
    """NCE approximation of NPID's non-parametric softmax (Wu et al. 2018).

    `P(i | v) = exp(v_i . f / tau) / Z` over all `n` instances; noise is
    uniform, `P_n = 1 / n`, with `K` noise samples per example. With
    `h(i, v) = P(i | v) / (P(i | v) + K / n)`, the loss is
    `-log h(pos) - sum_k log(1 - h(noise_k))`, averaged over the batch.

    Args:
      positive_scores: `[B]`, `f_i . v_i` (feature . its own bank entry).
      noise_scores: `[B, K]`, `f_i . v_j` for K uniformly drawn instances j.
      num_examples: n, the size of the memory bank (the dataset).
      temperature: tau.
      normalization_constant: Z. When None it is estimated from this batch as
        `n * mean(exp(noise / tau))` without gradient (the NPID reference
        code estimates it once, from the first batch).

    Returns:
      `(loss, Z)`.
    """
    positive = tf.cast(positive_scores, tf.float32) / temperature
    noise = tf.cast(noise_scores, tf.float32) / temperature
    k = tf.cast(tf.shape(noise)[1], tf.float32)
    n = tf.cast(num_examples, tf.float32)
    if normalization_constant is None:
        z = tf.stop_gradient(tf.reduce_mean(tf.exp(noise)) * n)
    else:
        z = tf.cast(normalization_constant, tf.float32)
    log_noise_mass = tf.math.log(k / n)  # log(K * P_n)
    # log h = log P - log(P + K P_n) = -softplus(log K P_n - log P)
    log_p_positive = positive - tf.math.log(z)
    log_p_noise = noise - tf.math.log(z)
    log_h_positive = -tf.nn.softplus(log_noise_mass - log_p_positive)
    # log(1 - h) = log(K P_n) - log(P + K P_n) = -softplus(log P - log K P_n)
    log_one_minus_h_noise = -tf.nn.softplus(log_p_noise - log_noise_mass)
    loss = -tf.reduce_mean(log_h_positive + tf.reduce_sum(log_one_minus_h_noise, axis=1))
    return loss, z
