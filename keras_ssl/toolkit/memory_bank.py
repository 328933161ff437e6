"""A memory bank: one l2-normalised feature per training example (Wu et al. 2018).

NPID, PIRL and CMC keep such a bank. Its rows are indexed by each example's
`index` (0 .. n-1; `keras_ssl.toolkit.per_example` checks it), read with their
gradient stopped, and after each optimizer step the rows of the batch move by
a moving average towards the new features:
`v_i <- l2norm(m v_i + (1 - m) f_i)`. Noise rows are drawn uniformly.

The bank is a plain non-trainable variable of the method (`add_memory_bank`),
so checkpoints hold it under the attribute it is assigned to. The functions
here work unchanged on one device and on any number of replicas:
`move_bank_rows` gathers the indices and features of the global batch before
writing, and `noise_index` draws for the global batch and keeps this replica's
rows, so R replicas draw what one device draws for the concatenated batch.

Example (inside a `keras_ssl.Method`):

    self.memory_bank = add_memory_bank(self, num_examples, 128)      # __init__
    positives = bank_rows(self.memory_bank, index)                   # compute_pretext_loss
    noise = bank_rows(self.memory_bank, noise_index(self, batch, 4096, num_examples, 0))
    positive_scores, noise_scores = bank_scores(features, positives, noise)
    move_bank_rows(self.memory_bank, index, features, 0.5)           # after_update
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_ssl import cross_replica
from keras_ssl.random import step_seed


def unit_rows(shape, dtype=None):
    """Initializer of a memory bank: random rows of unit length (`keras.random.normal`, normalised)."""
    rows = keras.random.normal(shape, dtype=dtype or "float32")
    return rows / keras.ops.sqrt(keras.ops.sum(rows * rows, axis=-1, keepdims=True))


def add_memory_bank(method: keras.layers.Layer, num_rows: int, dim: int,
                    name: str = "memory_bank") -> keras.Variable:
    """A `[num_rows, dim]` non-trainable variable of `method`, rows of unit length (`unit_rows`).

    Assign it to an attribute of the method (`self.memory_bank = ...`) so that
    checkpoints track it.
    """
    return method.add_weight(
        shape=(num_rows, dim), initializer=unit_rows, trainable=False, name=name
    )


def bank_rows(bank, index) -> tf.Tensor:
    """`bank[index]` with its gradient stopped; `index` of any shape, rows gathered one by one.

    Args:
      bank: The `[n, D]` bank variable.
      index: int32 rows, e.g. `[B]` (positives) or `[B, K]` (noise).

    Returns:
      `index.shape + [D]`.
    """
    return tf.stop_gradient(tf.gather(bank.value, index))  # never copied whole


def bank_scores(features, positives, noise):
    """`([B] features . positives, [B, K] features . noise)`: dot products with bank rows.

    Args:
      features: `[B, D]`.
      positives: `[B, D]`, row i is feature i's positive.
      noise: `[B, K, D]`, the noise rows of each feature.
    """
    return tf.reduce_sum(features * positives, axis=-1), tf.einsum("bd,bkd->bk", features, noise)


def move_bank_rows(bank, index, features, momentum) -> None:
    """`bank[i] <- l2norm(momentum bank[i] + (1 - momentum) f_i)` for the global batch's rows.

    Call it from `after_update` with this replica's `index` `[B]` and features
    `[B, D]`: both are gathered across replicas, so every replica writes the
    same rows.
    """
    index = cross_replica.gather(index)
    old = tf.gather(bank.value, index)
    new = momentum * old + (1.0 - momentum) * cross_replica.gather(features)
    cross_replica.scatter(bank, index, tf.math.l2_normalize(new, axis=-1))


def noise_index(method, batch_size, num_negatives: int, num_examples: int, noise_seed: int):
    """`[batch_size, num_negatives]` uniform bank rows for this replica's examples.

    Drawn for the whole global batch from a seed keyed by `method`'s optimizer
    step (`keras_ssl.random.step_seed`); each replica takes its own rows, so
    R replicas draw exactly what one device draws for the concatenated batch.

    Args:
      method: The `keras_ssl.Method` (its optimizer step keys the draw).
      batch_size: This replica's batch size.
      num_negatives: K, noise rows per example.
      num_examples: n, the rows of the bank.
      noise_seed: The method's seed of the noise draws.
    """
    replicas, replica = cross_replica.replica_position()
    draw = tf.random.stateless_uniform(
        [batch_size * replicas, num_negatives], step_seed(method, noise_seed),
        0, num_examples, tf.int32,
    )
    start = tf.cast(replica, tf.int32) * batch_size
    return draw[start:start + batch_size]
