"""Contrastive and metric-learning losses: NT-Xent, InfoNCE, NCE, triplet, N-pair.

Keras 3 ships none of these (TensorFlow Addons, which had triplet and
N-pair, does not import with Keras 3). Each is written from its paper's
formula and tested against a brute-force numpy version
(tests/test_losses.py).

All functions take float tensors of embeddings in the replica's batch and
return a scalar: the mean over this replica's rows, the convention of
`keras_ssl.Method.compute_pretext_loss` (the train step divides by the
number of replicas). `nt_xent_loss` gathers the negatives of every replica
with `tf.distribute.get_replica_context().all_gather`, which is
differentiable, so one step on N replicas equals one step on the
concatenated batch on one device.
"""

from __future__ import annotations

import tensorflow as tf

LARGE_NUM = 1e9


def _replica_info():
    """(number of replicas, this replica's id, replica context or None)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return 1, 0, context
    return context.num_replicas_in_sync, context.replica_id_in_sync_group, context


def gather_across_replicas(tensor: tf.Tensor) -> tf.Tensor:
    """Concatenates `tensor` of every replica along axis 0 (differentiable).

    Outside a strategy, or with one replica, returns `tensor`. Replica r's
    rows come at offset `r * batch`.
    """
    replicas, _, context = _replica_info()
    if replicas == 1:
        return tensor
    return context.all_gather(tensor, axis=0)


def nt_xent_loss(
    projections_1: tf.Tensor,
    projections_2: tf.Tensor,
    temperature: float = 0.1,
    normalize: bool = True,
    cross_replica: bool = True,
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
      cross_replica: Use the other replicas' rows as negatives too.

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
    if cross_replica:
        replicas, replica_id, _ = _replica_info()
        h1_all = gather_across_replicas(h1)
        h2_all = gather_across_replicas(h2)
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
    raise ValueError(f"mining must be 'batch_hard' or 'semi_hard', got {mining!r}.")


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
