"""Cross-replica helpers for method authors: gather, sums and means, variable updates.

A method's `compute_pretext_loss` and `after_update` run once per replica
(inside `strategy.run`) on that replica's rows of the global batch. Methods
whose loss depends on the whole batch (SimCLR's negatives, Barlow Twins'
cross-correlation, DINO's centre, SwAV's Sinkhorn codes) reach the other
replicas' rows through these functions, which are differentiable where
they return tensors and work unchanged on one device, on N replicas, and
outside any strategy (then they are the identity).

Gradients: the train step divides every replica's loss by the number of
replicas and sums the gradients. A loss computed from `gather(x)` or
`global_sum(x)` is the same on every replica, and the gradient of each
collective routes the other replicas' share back to this one's rows, so
the update equals that of the loss of the concatenated batch on one
device (tests/methods/test_noncontrastive.py checks it).

Variable updates (`assign`, `scatter`, `ema_update`) are for state kept out
of the optimizer (queues, memory banks, momentum networks, centres). A
mirrored variable cannot be assigned in replica context, so they go through
`merge_call`; every replica must pass the same values (gather first).
"""

from __future__ import annotations

import keras
import tensorflow as tf


def replica_context():
    """The replica context, or None outside one or with a single replica."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def num_replicas() -> int:
    """Replicas in sync (1 outside a strategy)."""
    return replica_position()[0]


def replica_position() -> tuple[int, int | tf.Tensor]:
    """`(number of replicas, this replica's index)`; `(1, 0)` outside replica context."""
    context = tf.distribute.get_replica_context()
    if context is None:
        return 1, 0
    return context.num_replicas_in_sync, context.replica_id_in_sync_group


def replica_rows(global_values: tf.Tensor) -> tf.Tensor:
    """This replica's rows of `global_values`, whose rows cover the global batch.

    Replica r of R holds rows `[r * n / R, (r + 1) * n / R)`, the order in
    which the global batch is split over replicas.

    Args:
      global_values: A tensor whose first dimension is the global batch
        (or a multiple of it).

    Returns:
      The rows of this replica (all of them on one device).
    """
    replicas, replica = replica_position()
    if replicas == 1:
        return global_values
    rows = tf.shape(global_values)[0] // replicas
    return global_values[replica * rows:(replica + 1) * rows]


def gather(tensor: tf.Tensor) -> tf.Tensor:
    """Concatenates `tensor` of every replica along axis 0 (differentiable).

    Replica r's rows come at offset `r * rows`, the order in which the
    global batch was split, so the result is the global batch's tensor.

    Args:
      tensor: `[rows, ...]`, this replica's rows.

    Returns:
      `[replicas * rows, ...]`; `tensor` itself with one replica.

    Example:

    >>> gather(tf.ones([4, 2])).shape        # one device: unchanged
    TensorShape([4, 2])
    """
    context = replica_context()
    return tensor if context is None else context.all_gather(tensor, axis=0)


def global_sum(tensor: tf.Tensor) -> tf.Tensor:
    """The element-wise sum of `tensor` over replicas (differentiable all-reduce)."""
    context = replica_context()
    if context is None:
        return tensor
    return context.all_reduce(tf.distribute.ReduceOp.SUM, tensor)


def global_mean(tensor: tf.Tensor, axis: int = 0) -> tf.Tensor:
    """The mean of `tensor` along `axis` over the rows of every replica.

    With equal rows per replica this is the mean over the global batch
    (the statistics of VICReg, DINO's centre), computed with one all-reduce
    of the local sums rather than a gather.

    Args:
      tensor: `[rows, ...]` (for `axis=0`).
      axis: The batch axis.

    Returns:
      `tensor`'s shape without `axis`.
    """
    tensor = tf.convert_to_tensor(tensor)
    local_sum = tf.reduce_sum(tensor, axis=axis)
    count = tf.cast(tf.shape(tensor)[axis], local_sum.dtype)
    return global_sum(local_sum) / (count * tf.cast(num_replicas(), local_sum.dtype))


def clip_by_global_norm(gradients, clip_norm):
    """Scales this replica's `gradients` so the global batch's gradient has norm <= `clip_norm`.

    The norm is that of the gradient summed over replicas (what the optimizer
    applies), so the update does not depend on how the batch is split.
    Keras' `global_clipnorm` clips each replica's gradient before the sum,
    which does. Costs one all-reduce of the gradients more.

    Args:
      gradients: This replica's gradients (None entries pass through).
      clip_norm: The largest global norm (a float or scalar tensor).

    Returns:
      The gradients times `min(1, clip_norm / norm)`, with the same factor on
      every replica.

    Example:

    >>> clipped = clip_by_global_norm([tf.constant([3.0, 4.0])], 1.0)
    >>> clipped[0].numpy().round(6).tolist()                      # one device: norm 5
    [0.6, 0.8]
    """
    present = [tf.convert_to_tensor(g) for g in gradients if g is not None]
    summed = global_sum(present) if replica_context() is not None else present
    norm = tf.linalg.global_norm(summed)
    factor = tf.minimum(1.0, tf.cast(clip_norm, norm.dtype) / tf.maximum(norm, 1e-30))
    return [None if g is None else tf.convert_to_tensor(g) * tf.cast(factor, g.dtype)
            for g in gradients]


def _tf_variable(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


def _merge(merge_fn, args):
    context = tf.distribute.get_replica_context()
    if context is None:  # cross-replica context
        merge_fn(tf.distribute.get_strategy(), args)
    else:
        context.merge_call(merge_fn, args=(args,))


def assign(pairs) -> None:
    """Assigns `value` to `variable` for each `(variable, value)` in `pairs`.

    Args:
      pairs: `(variable, value)` pairs; every replica passes the same values.
    """
    pairs = [(_tf_variable(v), x) for v, x in pairs]

    def merge_fn(strategy, pairs):
        for variable, value in pairs:
            strategy.extended.update(
                variable, lambda v, x: v.assign(tf.cast(x, v.dtype)), args=(value,), group=False
            )

    _merge(merge_fn, pairs)


def scatter(variable, indices, rows) -> None:
    """`variable[indices[i]] = rows[i]` (rows of a bank or queue), on every replica.

    Only those rows are written, not a copy of the whole variable.

    Args:
      variable: A `[N, ...]` variable.
      indices: `[k]` int row indices, the same on every replica.
      rows: `[k, ...]` new rows, the same on every replica.
    """

    def merge_fn(strategy, args):
        variable, indices, rows = args
        strategy.extended.update(
            variable,
            lambda v, i, r: v.scatter_update(tf.IndexedSlices(tf.cast(r, v.dtype), i)),
            args=(indices, rows),
            group=False,
        )

    _merge(merge_fn, (_tf_variable(variable), indices, rows))


def ema_update(targets, sources, momentum) -> None:
    """`target <- momentum * target + (1 - momentum) * source`, per variable pair.

    Args:
      targets: Variables to update.
      sources: Variables or tensors of the same shapes.
      momentum: A float or scalar tensor in [0, 1].
    """
    pairs = [(_tf_variable(t), _tf_variable(s)) for t, s in zip(targets, sources)]

    def merge_fn(strategy, pairs):
        for target, source in pairs:
            strategy.extended.update(
                target,
                lambda t, s: t.assign(
                    tf.cast(momentum, t.dtype) * t
                    + (1.0 - tf.cast(momentum, t.dtype)) * tf.cast(s, t.dtype)
                ),
                args=(source,),
                group=False,
            )

    _merge(merge_fn, pairs)
