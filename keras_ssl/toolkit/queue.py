"""A FIFO queue of rows from earlier steps (MoCo's keys, SwAV's embeddings, NNCLR's support set).

The queue is a ring buffer: a non-trainable `[size, ...]` variable and an int32
pointer to the row the next write starts at (`add_queue`). `enqueue` gathers
the rows of the global batch across replicas and writes them at the pointer,
wrapping around, so the oldest rows are overwritten first and every replica
holds the same queue. Reading is plain: the variable's rows in storage order,
or `oldest_first`; `nearest_neighbour` finds each query's most similar row
(NNCLR's positive).

Example (inside a `keras_ssl.Method`):

    self.queue, self.queue_pointer = add_queue(self, 4096, 128)      # __init__
    negatives = tf.stop_gradient(tf.convert_to_tensor(self.queue))   # compute_pretext_loss
    enqueue(self.queue, self.queue_pointer, saved["keys"])           # after_update
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_ssl import cross_replica


def add_queue(method: keras.layers.Layer, size: int, row_shape, initializer="zeros",
              name: str = "queue") -> tuple[keras.Variable, keras.Variable]:
    """`(rows, pointer)`: the `[size, *row_shape]` queue and its int32 write pointer (0).

    Both are non-trainable variables of `method` named `name` and
    `{name}_pointer`; assign them to attributes of the method so that
    checkpoints track them.

    Args:
      method: The layer (method) that owns them.
      size: Rows in the queue.
      row_shape: The shape of one row (an int for a vector).
      initializer: The rows' initial values (any Keras initializer).
      name: The queue's name.
    """
    row_shape = (row_shape,) if isinstance(row_shape, int) else tuple(row_shape)
    rows = method.add_weight(
        shape=(size, *row_shape), initializer=initializer, trainable=False, name=name
    )
    pointer = method.add_weight(
        shape=(), initializer="zeros", dtype="int32", trainable=False, name=f"{name}_pointer"
    )
    return rows, pointer


def enqueue(queue, pointer, rows, when=None) -> None:
    """Writes the global batch's `rows` at `pointer` (wrapping around) and advances it.

    Call it from `after_update`, on every replica, with this replica's rows:
    they are gathered across replicas first (replica 0's rows first), so the
    queue and the pointer stay the same on every replica.

    Args:
      queue: The `[size, ...]` queue variable.
      pointer: Its int32 pointer variable.
      rows: `[B, ...]`, this replica's rows; the global batch must not exceed `size`.
      when: A boolean scalar: if False, the queue and the pointer stay as they
        are (a queue that starts filling at some step). None: always write.
    """
    rows = cross_replica.gather(rows)
    size = queue.shape[0]
    count = tf.shape(rows)[0]
    start = tf.convert_to_tensor(pointer)
    index = (start + tf.range(count)) % size
    if when is not None:
        rows = tf.where(when, rows, tf.gather(tf.convert_to_tensor(queue), index))
        count = tf.where(when, count, 0)
    cross_replica.scatter(queue, index, rows)
    cross_replica.assign([(pointer, (start + count) % size)])


def oldest_first(queue, pointer) -> tf.Tensor:
    """The queue's rows from the oldest to the newest write (storage order rolled to the pointer)."""
    return tf.roll(tf.convert_to_tensor(queue), -tf.convert_to_tensor(pointer), axis=0)


def nearest_neighbour(queries, rows) -> tf.Tensor:
    """Each query's row of `rows` with the largest dot product, its gradient stopped.

    With l2-normalised queries and rows this is the nearest neighbour in
    cosine similarity, NNCLR's positive (Dwibedi et al. 2021).

    Args:
      queries: `[B, D]`.
      rows: `[N, D]`, e.g. a queue variable.

    Returns:
      `[B, D]`: row i is the row nearest to query i (the first on ties).
    """
    rows = tf.convert_to_tensor(rows)
    scores = tf.matmul(tf.cast(queries, rows.dtype), rows, transpose_b=True)
    return tf.stop_gradient(tf.gather(rows, tf.argmax(scores, axis=-1, output_type=tf.int32)))
