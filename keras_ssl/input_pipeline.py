"""The training input: examples in an order fixed by the seed, each with its own seed, split by replica.

Position p of a run's example stream (p = step * global_batch + row) holds
example `order_e[p mod N]` of epoch `e = p div N`, where N is the split's size.
By default `order_e` is a full permutation of the split, drawn statelessly
from `(seed, e)`: `argsort(stateless_uniform([N], example_seed(seed, 1, e, 0)))`.
It is read through the split's `RandomAccess` (`keras_ssl_eval.reading.data`):
a folder decodes its files in that order, and a TFDS split small enough for
the memory budget (`keras_ssl.train.shuffle_memory_mb`) is held in memory
encoded and decoded in that order. A TFDS split too large for the budget can
only be read in its stored order; it, or any split with an explicit
`shuffle_buffer` smaller than N, is cut into windows of that many
consecutive examples, each permuted by a stateless draw keyed by
`(seed, e, window)` (the window order stays that of the files, like
tf.data's shuffle buffer, which also mixes only nearby examples), and the run
warns once what that costs (`shuffle_order`). Window 0 of a split that fits
one window is drawn with the full permutation's key, so both give the same
order. Every example carries `seed = example_seed(seed, e, index)`, from
which all of its augmentation draws follow (`keras_ssl.random`). So:

- the same seed gives the same batches and views, whatever the tf.data
  parallelism and thread timing, and whether the split is read by index or
  in windows of at least its size;
- a run resumed at step s starts at position `s * global_batch` and sees what
  an uninterrupted run would have seen (whole epochs are skipped without
  reading them; read by index, the positions before it in the current epoch
  are not read either; in windows, they are read again and dropped);
- every input pipeline (one per worker) computes the same order and keeps
  the rows of its own replicas: replica r of R gets rows
  `[r * B / R, (r + 1) * B / R)` of each global batch of B, exactly the rows it
  would hold if one device's batch were split, so the run does not depend on
  how the global batch is split.

The price of the last point, for a split read in windows: each worker reads
and decodes the whole stream (not just its share) before dropping the other
rows. Read by index, a worker decodes only its own rows.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from keras_ssl.random import example_seed

_ORDER_KEY = 1  # distinguishes the data order's seeds from the examples' seeds

# Examples per shuffled window of a split that can only be read in order when
# `shuffle_buffer` is None.
DEFAULT_WINDOW = 4096


@dataclasses.dataclass(frozen=True)
class ShuffleOrder:
    """How a run's examples are ordered in each epoch (`shuffle_order`).

    Attributes:
      window: Examples per permuted window; the split's size for a full
        permutation.
      by_index: The order is read through the split's `RandomAccess`.
      description: One line for the run's log.
      warning: One line naming what a windowed order costs, or None.
    """

    window: int
    by_index: bool
    description: str
    warning: str | None


def shuffle_order(num_examples: int, shuffle_buffer: int | None, access=None) -> ShuffleOrder:
    """How each epoch orders a split of `num_examples` examples.

    Args:
      num_examples: The split's size N.
      shuffle_buffer: None for a full permutation each epoch (windows of
        `DEFAULT_WINDOW` where the split can only be read in order), or the
        examples per permuted window (at least N: a full permutation; 1 keeps
        the stored order).
      access: The split's `keras_ssl_eval.reading.data.RandomAccess`, or None.

    Returns:
      The `ShuffleOrder`.

    Example:

    >>> shuffle_order(60000, 4096).window
    4096
    >>> shuffle_order(1000, None).window
    1000
    """
    readable = access is not None and access.read is not None
    if shuffle_buffer is not None and int(shuffle_buffer) < 1:
        raise ValueError(
            f"keras_ssl.train.shuffle_buffer must be None (a full permutation each epoch) or "
            f">= 1, got {shuffle_buffer}.")
    if shuffle_buffer is None:
        window = num_examples if readable else min(DEFAULT_WINDOW, num_examples)
    else:
        window = max(1, min(int(shuffle_buffer), num_examples))
    how = f" ({access.description})" if access is not None else ""
    if window >= num_examples:
        return ShuffleOrder(num_examples, readable, f"a full permutation of the {num_examples} "
                            f"examples each epoch{how}", None)
    description = (f"windows of {window} consecutive examples of {num_examples}, each "
                   f"permuted{how}")
    if shuffle_buffer is None:
        fix = ("raise keras_ssl.train.shuffle_memory_mb to hold the split in memory, or set "
               "keras_ssl.train.shuffle_buffer to the split's size (memory: that many "
               "decoded images)")
    else:
        fix = "set keras_ssl.train.shuffle_buffer = None for a full permutation"
    warning = (f"Only windows of {window} consecutive examples of the {num_examples} are "
               f"mixed{how}: a batch holds only examples stored near each other, so a "
               f"split stored by class (an image folder, a TFDS split written class by "
               f"class) gives batches of one or two classes, and a short run may never "
               f"see some classes; {fix}.")
    return ShuffleOrder(window, False, description, warning)


def permutation(seed: int, epoch, num_examples: int) -> tf.Tensor:
    """Epoch `epoch`'s order of a split of `num_examples`: a permutation of its indices (int32)."""
    key = example_seed(seed, _ORDER_KEY, epoch, 0)
    return tf.argsort(tf.random.stateless_uniform([num_examples], key))


def example_stream(
    examples: tf.data.Dataset,
    num_examples: int,
    *,
    seed: int,
    shuffle_buffer: int | None = None,
    start_position: int = 0,
    access=None,
    share: tuple[int, int, int] | None = None,
) -> tf.data.Dataset:
    """The run's endless stream of examples from `start_position` on, each with its `seed`.

    Args:
      examples: Decoded examples `{"image", "label", "index"}` in a fixed order.
      num_examples: How many there are in one epoch.
      seed: The run's seed.
      shuffle_buffer: See `shuffle_order`.
      start_position: Examples of the stream to leave out (step * global batch).
      access: The split's `RandomAccess` (None: it is read in order).
      share: `(pipelines, pipeline, rows)`: keep only pipeline `pipeline`'s rows,
        the `pipeline`-th of each `pipelines` consecutive runs of `rows`
        positions (None keeps every row).

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
    order = shuffle_order(num_examples, shuffle_buffer, access)
    first_epoch, offset = divmod(int(start_position), int(num_examples))

    def mine(position):
        pipelines, pipeline, rows = share
        return tf.equal((position // rows) % pipelines, pipeline)

    def with_seed(example):
        seeded = {name: value for name, value in example.items() if name != "epoch"}
        seeded["seed"] = example_seed(seed, example["epoch"], example["index"])
        return seeded

    if order.by_index:
        # Positions and indices first; only the kept rows are read.
        def epoch_indices(epoch):
            begin = tf.where(tf.equal(epoch, first_epoch), tf.constant(offset, tf.int64),
                             tf.constant(0, tf.int64))
            indices = tf.cast(permutation(seed, epoch, num_examples)[begin:], tf.int64)
            positions = tf.data.Dataset.range(epoch * num_examples + begin,
                                              (epoch + 1) * num_examples)
            return tf.data.Dataset.zip(positions, tf.data.Dataset.from_tensor_slices(indices))

        stream = tf.data.Dataset.range(first_epoch, tf.int64.max).flat_map(epoch_indices)
        if share is not None:
            stream = stream.filter(lambda position, index: mine(position))
        stream = stream.map(lambda position, index: {
            "index": index, "epoch": position // num_examples})
        return access.read(stream).map(with_seed)

    window = order.window

    def epoch(index):
        def permute(window_index, block):
            key = example_seed(seed, _ORDER_KEY, index, window_index)
            order = tf.argsort(tf.random.stateless_uniform(tf.shape(block["index"])[:1], key))
            return {name: tf.gather(values, order) for name, values in block.items()}

        shuffled = examples.batch(window).enumerate().map(permute).unbatch()
        return shuffled.map(lambda example: {**example, "epoch": index})

    stream = tf.data.Dataset.range(first_epoch, tf.int64.max).flat_map(epoch)
    if offset:
        stream = stream.skip(offset)
    if share is not None:
        stream = (
            tf.data.Dataset.zip(tf.data.Dataset.range(start_position, tf.int64.max), stream)
            .filter(lambda position, _: mine(position))
            .map(lambda _, example: example)
        )
    return stream.map(with_seed)


def distributed_batches(
    strategy: tf.distribute.Strategy,
    method,
    examples: tf.data.Dataset,
    num_examples: int,
    *,
    global_batch_size: int,
    seed: int,
    shuffle_buffer: int | None = None,
    start_step: int = 0,
    access=None,
):
    """The method's batches for every replica, from step `start_step` on.

    Args:
      strategy: The run's strategy.
      method: The `keras_ssl.Method` (its `make_dataset` builds the batches).
      examples: Decoded examples in a fixed order.
      num_examples: Examples per epoch.
      global_batch_size: Images per step over all replicas.
      seed: The run's seed.
      shuffle_buffer: See `shuffle_order`.
      start_step: The step the run resumes at.
      access: The split's `RandomAccess` (None: read in order).

    Returns:
      A distributed dataset for `strategy` (one per-replica batch per replica
      and step).
    """

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        pipelines, pipeline = context.num_input_pipelines, context.input_pipeline_id
        # Pipeline i feeds replicas i*L .. i*L+L-1: the i-th of the `pipelines`
        # equal runs of rows of each global batch.
        share = (pipelines, pipeline, global_batch_size // pipelines) if pipelines > 1 else None
        stream = example_stream(
            examples, num_examples, seed=seed, shuffle_buffer=shuffle_buffer,
            start_position=start_step * global_batch_size, access=access, share=share,
        )
        return method.make_dataset(stream, context.get_per_replica_batch_size(global_batch_size))

    return strategy.distribute_datasets_from_function(dataset_fn)
