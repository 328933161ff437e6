"""DINO's self-distillation loss (Caron et al. 2021) across views."""

from __future__ import annotations

import tensorflow as tf


def dino_loss(
    student_logits, teacher_logits, center, student_temperature=0.1, teacher_temperature=0.04
) -> tf.Tensor:
    """`mean over pairs (t, s), t != s` of `CE(softmax((t - c) / tau_t), softmax(s / tau_s))`.

    The teacher sees the global views only; the student sees every view.
    View v of the teacher is view v of the student (the global views come
    first), and a pair of the same view is skipped.

    Args:
      student_logits: A list of `[B, K]`, one per view (global views first).
      teacher_logits: A list of `[B, K]`, one per global view (no gradient
        flows into them).
      center: `[K]`, the running mean of the teacher's outputs.
      student_temperature: tau_s (0.1).
      teacher_temperature: tau_t (0.04 warming up to 0.07).

    Returns:
      The scalar loss: the mean over pairs of the mean over this replica's rows.
    """
    center = tf.cast(center, tf.float32)
    targets = [
        tf.nn.softmax((tf.stop_gradient(tf.cast(t, tf.float32)) - center) / teacher_temperature, -1)
        for t in teacher_logits
    ]
    log_probabilities = [
        tf.nn.log_softmax(tf.cast(s, tf.float32) / student_temperature, -1) for s in student_logits
    ]
    total, pairs = 0.0, 0
    for t, target in enumerate(targets):
        for s, log_p in enumerate(log_probabilities):
            if s == t:
                continue
            total += tf.reduce_mean(-tf.reduce_sum(target * log_p, axis=-1))
            pairs += 1
    if not pairs:
        raise ValueError("dino_loss needs at least two views (one teacher view and another).")
    return total / pairs
