"""Batch normalisation whose synchronized statistics do not depend on the split.

Keras' `BatchNormalization(synchronized=True)` all-reduces the sums of `x`
and of `x^2` and takes the variance as `E[x^2] - E[x]^2`. Where a channel's
mean is large against its spread (a residual sum, a ReLU output with few
zeros), that difference cancels most of its digits, and the few-ulp change
a split of the global batch makes to the two sums becomes a relative error
of 1e-3 or more in the variance. Every normalised value and every gradient
below that layer then depends on how many replicas the batch ran on: NPID's
two-replica step moved its backbone 1e-2 away from the one-device step on
some CPUs (tests/core/test_scaleout.py).

`BatchNormalization` here computes the same statistics in two passes: the
global mean from all-reduced sums and counts, then the global sum of squared
deviations from that mean. That costs no more collectives than Keras' three
and keeps the variance accurate to a few ulps whatever the split. Outside a
strategy, on one replica and when unsynchronized it is Keras' layer.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_ssl import cross_replica

_HALF_PRECISION = (tf.float16, tf.bfloat16)


def global_moments(x: tf.Tensor, axes) -> tuple[tf.Tensor, tf.Tensor]:
    """Mean and variance of `x` over `axes` and the rows of every replica.

    Args:
      x: This replica's activations.
      axes: The axes to reduce (the batch axis among them).

    Returns:
      `(mean, variance)` with `axes` removed, in `x`'s dtype; computed in
      float32 for half-precision inputs, whose range is too small for them.

    Example:
      >>> mean, variance = global_moments(tf.ones([4, 3]), axes=[0])
      >>> mean.shape
      TensorShape([3])
    """
    dtype = x.dtype
    if dtype in _HALF_PRECISION:
        x = tf.cast(x, tf.float32)
    local_count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), axes)), x.dtype)
    local_sum = tf.reduce_sum(x, axis=axes, keepdims=True)
    total, count = cross_replica.global_sum((local_sum, local_count))
    mean = tf.math.divide_no_nan(total, count)
    squared = tf.reduce_sum(tf.square(x - mean), axis=axes, keepdims=True)
    variance = tf.math.divide_no_nan(cross_replica.global_sum(squared), count)
    mean, variance = tf.squeeze(mean, axes), tf.squeeze(variance, axes)
    if dtype in _HALF_PRECISION:
        limit = tf.float16.max  # the narrower of the two half types' ranges
        mean = tf.cast(tf.clip_by_value(mean, -limit, limit), dtype)
        variance = tf.cast(tf.minimum(variance, limit), dtype)
    return mean, variance


@keras.saving.register_keras_serializable(package="keras_ssl")
class BatchNormalization(keras.layers.BatchNormalization):
    """Keras' batch norm, with split-independent synchronized statistics.

    The arguments, weights and checkpoints are those of
    `keras.layers.BatchNormalization`; only the training-time moments of a
    `synchronized=True` layer without a mask differ (`global_moments`).

    Example:
      >>> bn = BatchNormalization(synchronized=True, name="final_bn")
      >>> bn(tf.ones([2, 4, 4, 3]), training=True).shape
      TensorShape([2, 4, 4, 3])
    """

    def _moments(self, inputs, mask):
        if not self.synchronized or mask is not None:
            return super()._moments(inputs, mask)
        return global_moments(inputs, self._reduction_axes)
