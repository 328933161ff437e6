"""The training input: examples in an order fixed by the seed, each with its own seed, split by replica.

Position p of a run's example stream (p = step * global_batch + row) holds
example `order_e[p mod N]` of epoch `e = p div N`, where N is the split's size
and `order_e` is the split cut into windows of `shuffle_buffer` consecutive
examples, each permuted by a stateless draw keyed by `(seed, e, window)`.
A split no larger than the buffer is thus wholly permuted every epoch; a
larger one is shuffled within windows, whose order stays that of the files
(like tf.data's shuffle buffer, which also mixes only nearby examples).
Every example carries `seed = example_seed(seed, e, index)`, from which all of
its augmentation draws follow (`keras_ssl.random`). So:

- the same seed gives the same batches and views, whatever the tf.data
  parallelism and thread timing;
- a run resumed at step s starts at position `s * global_batch` and sees what
  an uninterrupted run would have seen (whole epochs are skipped without
  reading them; only the examples before the position in the current epoch
  are read again);
- every input pipeline (one per worker) computes the same stream and keeps
  the rows of its own replicas: replica r of R gets rows
  `[r * B / R, (r + 1) * B / R)` of each global batch of B, exactly the rows it
  would hold if one device's batch were split, so the run does not depend on
  how the global batch is split.

The price of the last point: each worker reads and decodes the whole
stream (not just its share) before dropping the other rows; augmentation,
the expensive part, runs on its own rows only.
"""

from __future__ import annotations

import tensorflow as tf

from keras_ssl.random import example_seed

_ORDER_KEY = 1  # distinguishes the data order's seeds from the examples' seeds


def example_stream(
    examples: tf.data.Dataset,
    num_examples: int,
    *,
    seed: int,
    shuffle_buffer: int,
    start_position: int = 0,
) -> tf.data.Dataset:
    """The run's endless stream of examples from `start_position` on, each with its `seed`.

    Args:
      examples: Decoded examples `{"image", "label", "index"}` in a fixed order.
      num_examples: How many there are in one epoch.
      seed: The run's seed.
      shuffle_buffer: Examples per shuffled window (1 keeps the order).
      start_position: Examples of the stream to leave out (step * global batch).

    Returns:
      The examples, with `"seed"` (int64 `[2]`) added.
    """
    if num_examples < 1:
        raise ValueError(f"The training split is empty (num_examples={num_examples}).")
    unknown = [k for k, spec in examples.element_spec.items() if not spec.shape.is_fully_defined()]
    if unknown:
        raise ValueError(
            f"Training needs examples of one shape, but {', '.join(unknown)} vary in shape; "
            f"resize the images (keras_ssl.train.image_size)."
        )
    first_epoch, offset = divmod(int(start_position), int(num_examples))
    window = max(1, min(int(shuffle_buffer), int(num_examples)))

    def epoch(index):
        def permute(window_index, block):
            key = example_seed(seed, _ORDER_KEY, index, window_index)
            order = tf.argsort(tf.random.stateless_uniform(tf.shape(block["index"])[:1], key))
            return {name: tf.gather(values, order) for name, values in block.items()}

        shuffled = examples.batch(window).enumerate().map(permute).unbatch()
        return shuffled.map(
            lambda example: {**example, "seed": example_seed(seed, index, example["index"])}
        )

    stream = tf.data.Dataset.range(first_epoch, tf.int64.max).flat_map(epoch)
    return stream.skip(offset) if offset else stream


def distributed_batches(
    strategy: tf.distribute.Strategy,
    method,
    examples: tf.data.Dataset,
    num_examples: int,
    *,
    global_batch_size: int,
    seed: int,
    shuffle_buffer: int,
    start_step: int = 0,
):
    """The method's batches for every replica, from step `start_step` on.

    Args:
      strategy: The run's strategy.
      method: The `keras_ssl.Method` (its `make_dataset` builds the batches).
      examples: Decoded examples in a fixed order.
      num_examples: Examples per epoch.
      global_batch_size: Images per step over all replicas.
      seed: The run's seed.
      shuffle_buffer: Per-epoch shuffle buffer.
      start_step: The step the run resumes at.

    Returns:
      A distributed dataset for `strategy` (one per-replica batch per replica
      and step).
    """

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        stream = example_stream(
            examples, num_examples, seed=seed, shuffle_buffer=shuffle_buffer,
            start_position=start_step * global_batch_size,
        )
        pipelines, pipeline = context.num_input_pipelines, context.input_pipeline_id
        if pipelines > 1:
            # Pipeline i feeds replicas i*L .. i*L+L-1: the i-th of the
            # `pipelines` equal runs of rows of each global batch.
            rows = global_batch_size // pipelines
            stream = (
                stream.enumerate()
                .filter(lambda position, _: (position // rows) % pipelines == pipeline)
                .map(lambda _, example: example)
            )
        return method.make_dataset(stream, context.get_per_replica_batch_size(global_batch_size))

    return strategy.distribute_datasets_from_function(dataset_fn)
