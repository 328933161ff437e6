"""DeepCluster's epoch hook in the training loop on 2 mirrored CPUs against one device.

    python deepcluster_replicas.py

Prints one JSON line: each run's assignments and clustered epoch after the
steps, and the largest state difference. Runs in its own process (logical
devices are configured by `registry_steps` when imported). With the tiny
split of 8 examples and a global batch of 8, every step starts an epoch, so
the hook runs before each of the steps.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import registry_steps as steps  # noqa: E402  (configures the 2 logical CPUs first)
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from tiny import tiny_examples  # noqa: E402

from keras_ssl.training import MethodTrainer  # noqa: E402

NAME = "deepcluster"
STEPS = 3


def run(strategy, weights):
    method, (strategy, batches, metrics, step) = steps._build(NAME, strategy, weights)
    initial = method.get_weights()
    trainer = MethodTrainer(
        method, batches, strategy, step, ["loss", "regularization_loss", *metrics], steps.BATCH,
        STEPS, verbose=False, examples=tiny_examples(NAME, steps.BATCH), num_examples=steps.BATCH,
    )
    trainer.train(tf.constant(STEPS))
    return method, initial


if __name__ == "__main__":
    keras.utils.set_random_seed(0)
    single, initial = run(steps.ONE_DEVICE, None)
    mirrored, _ = run(steps.MIRRORED, initial)
    print(json.dumps({
        "one_device": single.assignments.numpy().tolist(),
        "mirrored": mirrored.assignments.numpy().tolist(),
        "epochs": [int(single.clustered_epoch.numpy()), int(mirrored.clustered_epoch.numpy())],
        "max_state_difference": steps._max_difference(steps._state(single), steps._state(mirrored)),
    }))
