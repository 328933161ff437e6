"""`cross_replica.clip_by_global_norm` on two mirrored logical CPUs and on one device.

Each replica holds its share of a gradient (rows 0-1 and 2-3 of two
tensors); prints one JSON line with the clipped sum over replicas, the
clipped full gradient on one device, and what Keras' own `global_clipnorm`
gives on the two replicas. Runs in its own process: logical devices must be
set before TensorFlow starts.
"""

import json

from keras_ssl.testing.replicas import strategies, use_two_cpus

use_two_cpus()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_ssl import cross_replica  # noqa: E402

CLIP = 1.0


def shares():
    rng = np.random.default_rng(0)
    return [rng.normal(size=(2, 4, 3)).astype(np.float32), rng.normal(size=(2, 4)).astype(np.float32)]


def main():
    mirrored = strategies()[1]
    full = shares()
    totals = [x.sum(axis=0) for x in full]
    single = [g.numpy() for g in cross_replica.clip_by_global_norm(
        [tf.constant(t) for t in totals], CLIP)]

    def per_replica(context):
        return [tf.constant(x[context.replica_id_in_sync_group]) for x in full]

    values = mirrored.experimental_distribute_values_from_function(per_replica)

    @tf.function
    def clipped_sum(values):
        clipped = mirrored.run(lambda *g: cross_replica.clip_by_global_norm(list(g), CLIP),
                               args=tuple(values))
        return [mirrored.reduce("SUM", g, axis=None) for g in clipped]

    with mirrored.scope():
        variables = [keras.Variable(np.zeros_like(t)) for t in totals]
        optimizer = keras.optimizers.SGD(1.0, global_clipnorm=CLIP)
        optimizer.build(variables)

    @tf.function
    def keras_clipped(values):
        mirrored.run(lambda *g: optimizer.apply_gradients(zip(g, variables)), args=tuple(values))

    keras_clipped(values)
    print(json.dumps({
        "single": [x.tolist() for x in single],
        "mirrored": [x.numpy().tolist() for x in clipped_sum(values)],
        "keras_mirrored": [(-v.numpy()).tolist() for v in variables],
        "norm": float(np.sqrt(sum((t ** 2).sum() for t in totals))),
    }))


if __name__ == "__main__":
    main()
