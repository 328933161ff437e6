"""The toolkit's memory bank and FIFO queue on two mirrored logical CPUs and on one device.

Three steps of 8 rows (4 per replica): each draws noise indices, moves bank
rows and enqueues keys into a queue of 12 (the second step wraps around, the
third is skipped with `when=False`). Prints one JSON line
`{"inputs": ..., "one": state, "two": state}`: the initial bank and each
step's index, features, keys and `when`; per strategy the bank, the queue,
the pointer and each step's noise indices (the replicas' rows concatenated). Runs in its own
process: logical devices must be set before TensorFlow starts.
"""

import json

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_ssl.toolkit import add_memory_bank, add_queue, enqueue, move_bank_rows, noise_index  # noqa: E402

ROWS, BANK_ROWS, QUEUE_ROWS, DIM, NEGATIVES, MOMENTUM = 8, 10, 12, 4, 3, 0.5
STEPS = 3


def inputs():
    """`(initial bank, [(index, features, keys, when)] per step)`, the same in every process."""
    rng = np.random.RandomState(0)
    bank = rng.randn(BANK_ROWS, DIM).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    steps = [(rng.permutation(BANK_ROWS)[:ROWS].astype(np.int32),
              rng.randn(ROWS, DIM).astype(np.float32), rng.randn(ROWS, DIM).astype(np.float32),
              step < 2) for step in range(STEPS)]
    return bank, steps


class Host(keras.layers.Layer):
    """A layer holding a bank and a queue, as a method does."""

    def __init__(self):
        super().__init__()
        self.bank = add_memory_bank(self, BANK_ROWS, DIM)
        self.queue, self.queue_pointer = add_queue(self, QUEUE_ROWS, DIM)


def run(strategy):
    bank, steps = inputs()
    with strategy.scope():
        host = Host()
    host.bank.assign(bank)

    @tf.function
    def step(index, features, keys, when):
        noise = noise_index(host, tf.shape(index)[0], NEGATIVES, BANK_ROWS, 5)
        move_bank_rows(host.bank, index, features, MOMENTUM)
        enqueue(host.queue, host.queue_pointer, keys, when=when)
        return noise

    def split(value):
        if strategy.num_replicas_in_sync == 1:
            return value
        share = len(value) // strategy.num_replicas_in_sync
        return strategy.experimental_distribute_values_from_function(
            lambda context: value[context.replica_id_in_sync_group * share:
                                  (context.replica_id_in_sync_group + 1) * share])

    noises = []
    for index, features, keys, when in steps:
        noise = strategy.run(step, args=(split(index), split(features), split(keys),
                                         tf.constant(when)))
        noises.append(np.concatenate(
            [n.numpy() for n in strategy.experimental_local_results(noise)]).tolist())
    return {"bank": host.bank.numpy().tolist(), "queue": host.queue.numpy().tolist(),
            "pointer": int(host.queue_pointer.numpy()), "noise": noises}


if __name__ == "__main__":
    bank, steps = inputs()
    print(json.dumps({
        "inputs": {"bank": bank.tolist(), "steps": [[i.tolist(), f.tolist(), k.tolist(), w]
                                                    for i, f, k, w in steps]},
        "one": run(tf.distribute.OneDeviceStrategy("/cpu:0")),
        "two": run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])),
    }))
