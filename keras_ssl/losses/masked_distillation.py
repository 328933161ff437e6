"""Masked self-distillation (iBOT, Zhou et al. 2022; DINOv2, Oquab et al. 2024).

- `teacher_targets`: the teacher's centred, sharpened distribution, by DINO's
  softmax centring (`softmax((t - c) / tau_t)`) or by DINOv2's Sinkhorn-Knopp
  centring (`sinkhorn_knopp_centering`, SwAV's equipartition over the global
  batch with tau_t as the entropy regularisation).
- `cross_view_loss`: DINO's cross-entropy over every pair of different views,
  from targets rather than teacher logits (so either centring feeds it).
- `masked_patch_loss`: iBOT's patch loss, the cross-entropy of each masked
  patch token's student distribution to the teacher's for the same patch of
  the unmasked view, averaged over the masked patches of an image, then over
  images.
- `koleo_loss`: DINOv2's Kozachenko-Leonenko regulariser, which spreads
  l2-normalised features by pushing each away from its nearest neighbour in
  the global batch.

Every function returns either the mean over this replica's rows or a value
that is the same on every replica (computed from global-batch sums or a
gather), so one step on N replicas equals one on the concatenated batch
(`keras_ssl.cross_replica`).
"""

from __future__ import annotations

import tensorflow as tf

from keras_ssl import cross_replica

CENTERINGS = ("softmax", "sinkhorn_knopp")


def sinkhorn_knopp_centering(teacher_logits, temperature, iterations: int = 3,
                             weights=None) -> tf.Tensor:
    """DINOv2's teacher targets: `exp(t / tau_t)` equipartitioned over the global batch.

    With `Q = exp(T / tau_t)^T` (`[K, n]`, n the rows of every replica that
    take part), `Q` is divided by its total, then `iterations` times each
    prototype row is scaled to total mass `1 / K` and each sample column to
    `1 / n`; the result times n has unit rows. The row totals are sums over
    every replica, so 2 replicas give the targets one device gives for the
    concatenated rows. No gradient flows through the targets.

    Args:
      teacher_logits: `[rows, K]` teacher outputs of this replica.
      temperature: tau_t (a float or scalar tensor).
      iterations: Normalisation rounds (3).
      weights: Optional `[rows]` 0/1 (or bool): the rows that take part (the
        masked patches of iBOT's loss); the others get all-zero targets and
        count in no sum. None: every row.

    Returns:
      `[rows, K]` float32 targets; each taking-part row sums to 1.
    """
    logits = tf.stop_gradient(tf.cast(teacher_logits, tf.float32))
    temperature = tf.cast(temperature, tf.float32)
    rows = tf.shape(logits)[0]
    if weights is None:
        weights = tf.ones([rows], tf.float32)
    weights = tf.cast(tf.reshape(weights, [rows]), tf.float32)
    # A constant shift cancels in the first normalisation; the global maximum
    # of the taking-part rows keeps exp from overflowing.
    lowest = tf.reduce_min(logits)
    local_max = tf.reduce_max(tf.where(weights[:, None] > 0, logits, lowest))
    shift = tf.reduce_max(cross_replica.gather(local_max[None]))
    q = tf.transpose(tf.exp((logits - shift) / temperature) * weights[:, None])  # [K, rows]
    prototypes = tf.cast(tf.shape(q)[0], tf.float32)
    samples = cross_replica.global_sum(tf.reduce_sum(weights))
    q = tf.math.divide_no_nan(q, cross_replica.global_sum(tf.reduce_sum(q)))
    for _ in range(iterations):
        q = tf.math.divide_no_nan(q, cross_replica.global_sum(tf.reduce_sum(q, 1, keepdims=True)))
        q = q / prototypes
        # A column is one sample, all on this replica: its sum needs no collective.
        q = tf.math.divide_no_nan(q, tf.reduce_sum(q, 0, keepdims=True)) / tf.maximum(samples, 1.0)
    return tf.stop_gradient(tf.transpose(q * samples))


def teacher_targets(teacher_logits, centering: str, center, temperature, weights=None):
    """The teacher's target distribution by `centering`.

    Args:
      teacher_logits: `[rows, K]`.
      centering: `"softmax"`: `softmax((t - center) / tau_t)` (DINO, iBOT);
        `"sinkhorn_knopp"`: `sinkhorn_knopp_centering` (DINOv2; `center` unused).
      center: `[K]` running mean of the teacher's outputs.
      temperature: tau_t.
      weights: `[rows]` rows that take part in Sinkhorn-Knopp's sums (see there).

    Returns:
      `[rows, K]` float32 targets, without gradient.
    """
    if centering == "sinkhorn_knopp":
        return sinkhorn_knopp_centering(teacher_logits, temperature, weights=weights)
    if centering != "softmax":
        raise ValueError(f"Unknown centering {centering!r}; choose one of {list(CENTERINGS)}.")
    logits = tf.stop_gradient(tf.cast(teacher_logits, tf.float32))
    return tf.nn.softmax((logits - tf.cast(center, tf.float32)) / temperature, -1)


def cross_view_loss(student_logits, targets, student_temperature=0.1) -> tf.Tensor:
    """`mean over pairs (t, s), t != s` of `CE(targets_t, softmax(s / tau_s))` (DINO's loss).

    `keras_ssl.losses.dino_loss` with the targets already made, so that
    either centring can feed it: `targets[v]` is the teacher's view v, which is
    the student's view v (global views first); a pair of one view is skipped.

    Args:
      student_logits: A list of `[B, K]`, one per view.
      targets: A list of `[B, K]` target distributions, one per global view.
      student_temperature: tau_s (0.1).

    Returns:
      The scalar mean over pairs of the mean over this replica's rows.
    """
    log_probabilities = [
        tf.nn.log_softmax(tf.cast(s, tf.float32) / student_temperature, -1) for s in student_logits
    ]
    terms = [
        tf.reduce_mean(-tf.reduce_sum(tf.stop_gradient(target) * log_p, axis=-1))
        for t, target in enumerate(targets)
        for s, log_p in enumerate(log_probabilities) if s != t
    ]
    if not terms:
        raise ValueError("cross_view_loss needs at least two views (one teacher view and another).")
    return tf.add_n(terms) / len(terms)


def masked_patch_loss(student_patch_logits, patch_targets, mask, student_temperature=0.1):
    """iBOT's loss: `mean_b [sum_n m_bn CE(target_bn, softmax(s_bn / tau_s)) / max(sum_n m_bn, 1)]`.

    Only masked patches count; an image with none contributes 0 (and still
    counts in the mean over images, as in iBOT's and DINOv2's code).

    Args:
      student_patch_logits: `[B, N, K]` the student's outputs for the patch
        tokens of the masked view.
      patch_targets: `[B, N, K]` the teacher's targets for the same patches
        of the unmasked view.
      mask: `[B, N]` bool, the masked patches.
      student_temperature: tau_s (0.1).

    Returns:
      The scalar mean over this replica's images.
    """
    log_p = tf.nn.log_softmax(tf.cast(student_patch_logits, tf.float32) / student_temperature, -1)
    cross_entropy = -tf.reduce_sum(tf.stop_gradient(tf.cast(patch_targets, tf.float32)) * log_p, -1)
    mask = tf.cast(mask, tf.float32)
    per_image = tf.reduce_sum(cross_entropy * mask, -1) / tf.maximum(tf.reduce_sum(mask, -1), 1.0)
    return tf.reduce_mean(per_image)


def koleo_loss(features, epsilon: float = 1e-8) -> tf.Tensor:
    """`-1/n sum_i log(min_{j != i} ||x_i - x_j|| + eps)`, x l2-normalised, over the global batch.

    The rows of every replica are gathered (differentiably), so the value is
    the same on every replica and does not depend on how the batch is split;
    DINOv2's code computes it per GPU instead (on its local batch).

    Args:
      features: `[rows, D]` this replica's features (the student's class tokens).
      epsilon: Added to the distance inside the log (and the floor of the
        distance, so identical rows give a finite loss and a zero gradient).

    Returns:
      A scalar, the mean over the global batch.
    """
    x = tf.math.l2_normalize(tf.cast(cross_replica.gather(features), tf.float32), axis=-1)
    n = tf.shape(x)[0]
    # The nearest neighbour of unit vectors is the one of largest dot product.
    similarities = tf.matmul(x, x, transpose_b=True) - 3.0 * tf.eye(n)
    nearest = tf.argmax(tf.stop_gradient(similarities), axis=-1, output_type=tf.int32)
    squared = tf.reduce_sum(tf.square(x - tf.gather(x, nearest)), -1)
    distance = tf.sqrt(tf.maximum(squared, epsilon ** 2))
    return -tf.reduce_mean(tf.math.log(distance + epsilon))
