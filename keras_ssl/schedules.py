"""Schedules of non-gradient hyper-parameters, as functions of the training progress.

`Method.training_progress()` gives the fraction of the run done (the
optimizer's step over `train_steps`), the same on every replica and after a
resume; these map it to a value for the current step.
"""

from __future__ import annotations

import math

import tensorflow as tf


def cosine_momentum(base_momentum: float, progress, final_momentum: float = 1.0) -> tf.Tensor:
    """BYOL's target momentum: from `base_momentum` to `final_momentum` along a half cosine.

    `tau = final - (final - base) * (cos(pi * progress) + 1) / 2` (Grill et
    al. 2020 use base 0.996, final 1; DINO's teacher follows the same rule).

    Args:
      base_momentum: tau at the first step.
      progress: Fraction of the run done, a float or scalar tensor in [0, 1].
      final_momentum: tau at the last step.

    Returns:
      A float32 scalar tensor.

    Example:

    >>> float(cosine_momentum(0.996, 0.0)), float(cosine_momentum(0.996, 1.0))
    (0.9959999918937683, 1.0)
    """
    progress = tf.cast(progress, tf.float32)
    weight = (tf.cos(math.pi * progress) + 1.0) / 2.0
    return final_momentum - (final_momentum - base_momentum) * weight


def linear_warmup(start: float, end: float, step, warmup_steps: int) -> tf.Tensor:
    """`start` at step 0, rising linearly to `end` at `warmup_steps`, then `end`.

    Args:
      start: The value at step 0.
      end: The value from `warmup_steps` on.
      step: The current step (int or scalar tensor).
      warmup_steps: Length of the ramp (0: `end` from the start).

    Returns:
      A float32 scalar tensor.
    """
    if warmup_steps <= 0:
        return tf.constant(end, tf.float32)
    fraction = tf.clip_by_value(tf.cast(step, tf.float32) / float(warmup_steps), 0.0, 1.0)
    return start + (end - start) * fraction
