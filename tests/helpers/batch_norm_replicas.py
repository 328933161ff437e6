"""Synchronized batch norm on two mirrored logical CPUs against one device.

For keras_ssl's `BatchNormalization` and Keras' own, on activations whose
mean is large against their spread: the largest differences of the output
and of the gradients (input, gamma, beta) between the batch split over two
replicas and the whole batch on one device, each relative to that
quantity's largest magnitude. Prints one JSON line. Runs in its own
process: logical devices must be set before TensorFlow starts.
"""

import json

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_ssl.normalization import BatchNormalization  # noqa: E402

BATCH, SHAPE = 8, (4, 4, 3)


def _forward_and_gradients(layer, x, weights):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        # Replicas' losses are summed, as the train step's scaled losses are.
        loss = tf.reduce_sum(y * weights)
    gradients = tape.gradient(loss, [x, layer.gamma.value, layer.beta.value])
    return y, gradients


def _compare(layer_class, x, weights, strategy):
    single = layer_class(synchronized=True)
    single_y, single_gradients = _forward_and_gradients(single, tf.constant(x), weights)
    with strategy.scope():
        mirrored = layer_class(synchronized=True)
        mirrored.build(x.shape)

    def rows(context, array):
        share = BATCH // strategy.num_replicas_in_sync
        return array[context.replica_id_in_sync_group * share:][:share]

    xs = strategy.experimental_distribute_values_from_function(lambda c: rows(c, x))
    ws = strategy.experimental_distribute_values_from_function(lambda c: rows(c, weights))
    y, (dx, dgamma, dbeta) = strategy.run(
        tf.function(lambda a, b: _forward_and_gradients(mirrored, a, b)), args=(xs, ws)
    )
    local = strategy.experimental_local_results
    replica_values = [
        np.concatenate([v.numpy() for v in local(y)]),
        np.concatenate([v.numpy() for v in local(dx)]),
        sum(v.numpy() for v in local(dgamma)),
        sum(v.numpy() for v in local(dbeta)),
    ]
    single_values = [single_y, *single_gradients]
    names = ["output", "input_gradient", "gamma_gradient", "beta_gradient"]
    return {
        name: float(np.max(np.abs(a - np.asarray(b))) / np.max(np.abs(np.asarray(b))))
        for name, a, b in zip(names, replica_values, single_values)
    }


def main():
    rng = np.random.RandomState(0)
    # A channel mean of 30 against a spread of 0.05: E[x^2] - E[x]^2 keeps 2 digits.
    x = (30.0 + 0.05 * rng.randn(BATCH, *SHAPE)).astype(np.float32)
    weights = rng.randn(BATCH, *SHAPE).astype(np.float32)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    report = {
        "replicas": strategy.num_replicas_in_sync,
        "keras_ssl": _compare(BatchNormalization, x, weights, strategy),
        "keras": _compare(keras.layers.BatchNormalization, x, weights, strategy),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
