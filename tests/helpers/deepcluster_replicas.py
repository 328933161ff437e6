"""DeepCluster's epoch hook in the training loop on 2 mirrored CPUs against one device.

    python deepcluster_replicas.py

Prints one JSON line: each run's assignments and clustered epoch after the
steps, and the largest state difference. Runs in its own process (logical
devices must be configured before TensorFlow creates any). With the tiny
split of 8 examples and a global batch of 8, every step starts an epoch, so
the hook runs before each of the steps.
"""

import json

from keras_ssl.testing import replicas as steps
from keras_ssl.testing.tiny import tiny_examples

steps.use_two_cpus()

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_ssl.training import MethodTrainer  # noqa: E402

NAME = "deepcluster"
STEPS = 3


def run(strategy, weights):
    method, (strategy, batches, metrics, step) = steps.build_on(NAME, strategy, weights)
    initial = method.get_weights()
    trainer = MethodTrainer(
        method, batches, strategy, step, ["loss", "regularization_loss", *metrics], steps.BATCH,
        STEPS, verbose=False, examples=tiny_examples(NAME, steps.BATCH), num_examples=steps.BATCH,
    )
    trainer.train(tf.constant(STEPS))
    return method, initial


if __name__ == "__main__":
    keras.utils.set_random_seed(0)
    one_device, mirrored_cpus = steps.strategies()
    single, initial = run(one_device, None)
    mirrored, _ = run(mirrored_cpus, initial)
    print(json.dumps({
        "one_device": single.assignments.numpy().tolist(),
        "mirrored": mirrored.assignments.numpy().tolist(),
        "epochs": [int(single.clustered_epoch.numpy()), int(mirrored.clustered_epoch.numpy())],
        "max_state_difference": steps.max_difference(steps.state(single), steps.state(mirrored)),
    }))
