"""keras_ssl.normalization: synchronized batch-norm statistics that do not depend on the split."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.normalization import BatchNormalization, global_moments
from tests.helpers import HELPERS


def _offset_activations(shape, mean=30.0, spread=0.05, seed=0):
    """Activations whose mean is large against their spread (a residual sum)."""
    return (mean + spread * np.random.RandomState(seed).randn(*shape)).astype(np.float32)


def test_global_moments_match_numpy_where_the_mean_dwarfs_the_spread():
    x = _offset_activations([8, 4, 4, 3])
    mean, variance = global_moments(tf.constant(x), [0, 1, 2])
    reference = x.astype(np.float64)
    np.testing.assert_allclose(mean.numpy(), reference.mean((0, 1, 2)), rtol=1e-6)
    # E[x^2] - E[x]^2 in float32 keeps about two digits of this variance.
    np.testing.assert_allclose(variance.numpy(), reference.var((0, 1, 2)), rtol=1e-3)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_global_moments_of_half_precision_are_computed_in_float32(dtype):
    x = _offset_activations([8, 5], mean=3.0, spread=0.5)
    mean, variance = global_moments(tf.constant(x, dtype), [0])
    assert mean.dtype == variance.dtype == dtype
    rounded = tf.cast(tf.constant(x, dtype), tf.float64).numpy()
    np.testing.assert_allclose(tf.cast(mean, tf.float64), rounded.mean(0), rtol=1e-2)
    np.testing.assert_allclose(tf.cast(variance, tf.float64), rounded.var(0), rtol=2e-2)


def test_layer_trains_like_keras_batch_norm_and_round_trips_its_config():
    x = tf.constant(np.random.RandomState(1).randn(6, 3, 3, 4).astype(np.float32))
    ours, keras_bn = BatchNormalization(synchronized=True), keras.layers.BatchNormalization()
    np.testing.assert_allclose(ours(x, training=True), keras_bn(x, training=True), atol=1e-5)
    np.testing.assert_allclose(ours.moving_variance.numpy(), keras_bn.moving_variance.numpy(),
                               rtol=1e-5)
    np.testing.assert_allclose(ours(x, training=False), keras_bn(x, training=False), atol=1e-5)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(ours))
    assert type(restored) is BatchNormalization and restored.synchronized


@pytest.mark.slow
def test_synchronized_batch_norm_on_two_replicas_equals_one_device():
    result = subprocess.run(
        [sys.executable, os.path.join(HELPERS, "batch_norm_replicas.py")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    # The floor is the inputs' own float32 rounding (1e-6 of 30 is 4e-5 of the spread);
    # Keras' E[x^2] - E[x]^2 differs by ~8e-2 on the same activations.
    for quantity, difference in report["keras_ssl"].items():
        assert difference < 1e-3, f"{quantity} differs by {difference} (Keras: {report['keras']})"
