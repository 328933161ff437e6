"""State kept per training example, indexed by the example's `index`.

NPID's and PIRL's memory banks, CMC's two banks (`keras_ssl.toolkit.memory_bank`)
and DeepCluster's assignments hold one row per training example. Their size N
must be known when the method is built (to create the variable and restore it
from a checkpoint), so it is a required constructor argument bound by gin, and
an example whose `index` does not fit stops the input pipeline with the
binding to fix.
"""

from __future__ import annotations

import tensorflow as tf


def required_num_examples(num_examples, setting_prefix: str, state: str) -> int:
    """N, refusing None or 0 with the binding to set.

    Args:
      num_examples: The bound value.
      setting_prefix: The method's gin name (`npid`).
      state: What the rows are, for the message ("memory bank").
    """
    if not num_examples:
        raise ValueError(
            f"{setting_prefix} needs the number of training examples for its {state}: bind "
            f"`{setting_prefix}.num_examples = N` (the size of the training split; "
            f"keras-ssl-list or the dataset's info tells it)."
        )
    return int(num_examples)


def checked_index(example, num_examples: int, setting_prefix: str) -> tf.Tensor:
    """`example["index"]` as int32; stops the input pipeline if it is >= `num_examples`."""
    index = tf.cast(example["index"], tf.int32)
    check = tf.debugging.assert_less(
        index, num_examples,
        message=f"{setting_prefix}: an example's index is >= {setting_prefix}.num_examples = "
                f"{num_examples}; bind {setting_prefix}.num_examples to the size of the "
                f"training split",
    )
    with tf.control_dependencies([check]):
        return tf.identity(index)
