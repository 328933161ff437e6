"""Pieces shared by the contrastive methods (SimCLR, MoCo v2, NPID).

- `projection_head`: the MLP between the backbone and the contrastive loss.
- `ContrastiveMethod`: a `keras_ssl.Method` with an optional online linear
  probe on stop-gradient pre-logits and an `after_update()` hook run after
  each optimizer step (MoCo's momentum encoder and queue, NPID's memory bank).
- `assign_across_replicas` / `scatter_across_replicas` / `ema_update`: update non-trained variables from
  replica context, identically on every replica, through `merge_call` (a
  mirrored variable cannot be assigned directly in replica context unless it
  was created with an aggregation).
"""

from __future__ import annotations

import threading

import keras
import tensorflow as tf

from keras_ssl import Method
from keras_ssl.backbones import output_dim


def uses_synchronized_bn(model: keras.Model) -> bool:
    """Whether any batch norm of `model` computes statistics across replicas."""
    return any(getattr(layer, "synchronized", False) for layer in model._flatten_layers())


def projection_head(
    input_dim: int,
    hidden_dim: int,
    output_dim: int = 128,
    num_layers: int = 2,
    batch_norm: bool = True,
    synchronized_bn: bool = False,
    name: str = "projection_head",
) -> keras.Sequential:
    """An MLP of `num_layers` Dense layers, built for `[batch, input_dim]`.

    Hidden layers: Dense(hidden_dim) [+ BN] + ReLU. The last: Dense(output_dim)
    [+ BN without offset, as SimCLR v2's head]. Dense layers before a BN have
    no bias.

    Args:
      input_dim: Width of the pre-logits.
      hidden_dim: Width of the hidden layers.
      output_dim: Width of the projection (128 in SimCLR and MoCo v2).
      num_layers: 1 (linear, NPID), 2 (SimCLR v1, MoCo v2) or 3 (SimCLR v2).
      batch_norm: Batch norm after each Dense.
      synchronized_bn: Those batch norms compute statistics across replicas.
      name: The model's name.

    Returns:
      A built `keras.Sequential`.
    """
    if num_layers < 1:
        raise ValueError(f"projection_head: num_layers must be >= 1, got {num_layers}.")
    layers = []
    for i in range(num_layers):
        last = i == num_layers - 1
        layers.append(keras.layers.Dense(
            output_dim if last else hidden_dim, use_bias=not batch_norm, name=f"dense_{i}"
        ))
        if batch_norm:
            layers.append(keras.layers.BatchNormalization(
                center=not last, synchronized=synchronized_bn, name=f"bn_{i}"
            ))
        if not last:
            layers.append(keras.layers.ReLU(name=f"relu_{i}"))
    head = keras.Sequential(layers, name=name)
    head.build((None, input_dim))
    return head


def assign_across_replicas(pairs) -> None:
    """Assigns `value` to `variable` for each `(variable, value)` in `pairs`.

    Every replica must pass the same values (e.g. gathered with
    `all_gather`); works in replica context (inside `strategy.run`), in
    cross-replica context and without a strategy.
    """
    pairs = [(_tf_variable(v), x) for v, x in pairs]

    def merge_fn(strategy, pairs):
        for variable, value in pairs:
            strategy.extended.update(
                variable, lambda v, x: v.assign(tf.cast(x, v.dtype)), args=(value,), group=False
            )

    _merge(merge_fn, pairs)


def scatter_across_replicas(variable, indices, rows) -> None:
    """`variable[indices[i]] = rows[i]` (rows of a bank or queue), on every replica.

    Every replica must pass the same indices and rows (gather them first).
    Only those rows are written, not a copy of the whole variable.
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
    """`target <- momentum * target + (1 - momentum) * source`, per variable pair."""
    pairs = [(_tf_variable(t), _tf_variable(s)) for t, s in zip(targets, sources)]

    def merge_fn(strategy, pairs):
        for target, source in pairs:
            strategy.extended.update(
                target,
                lambda t, s: t.assign(momentum * t + (1.0 - momentum) * tf.cast(s, t.dtype)),
                args=(source,),
                group=False,
            )

    _merge(merge_fn, pairs)


def _tf_variable(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


def _merge(merge_fn, pairs):
    context = tf.distribute.get_replica_context()
    if context is None:  # cross-replica context
        merge_fn(tf.distribute.get_strategy(), pairs)
    else:
        context.merge_call(merge_fn, args=(pairs,))


class ContrastiveMethod(Method):
    """Base of the contrastive methods: online probe and a post-update hook.

    Args:
      backbone: The backbone.
      num_classes: If set, a linear probe on stop-gradient pre-logits is
        trained alongside (on examples with `label >= 0`; unlabelled data
        has -1) and reports `probe_accuracy`. Its gradient never reaches the
        backbone; it only tells how linearly separable the classes are.
      **kwargs: Passed to `keras_ssl.Method` (`augmentation`).
    """

    def __init__(self, backbone, num_classes: int | None = None, **kwargs):
        super().__init__(backbone, **kwargs)
        self.num_classes = num_classes
        self.probe = None
        if num_classes:
            self.probe = keras.layers.Dense(num_classes, name="online_probe")
            self.probe.build((None, output_dim(backbone)))

    def probe_loss(self, pre_logits, labels):
        """`(loss, metrics)` of the online probe; zeros without one."""
        if self.probe is None:
            return tf.zeros(()), {}
        labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
        logits = tf.cast(self.probe(tf.stop_gradient(pre_logits)), tf.float32)
        valid = tf.cast(labels >= 0, tf.float32)
        safe = tf.maximum(labels, 0)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=logits)
        count = tf.maximum(tf.reduce_sum(valid), 1.0)
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), safe), tf.float32)
        loss = tf.reduce_sum(ce * valid) / count
        return loss, {"probe_loss": loss, "probe_accuracy": tf.reduce_sum(correct * valid) / count}

    def after_update(self) -> None:
        """Runs after each optimizer step, inside the train step (override)."""
        return None

    def train_step(self, data):
        outputs = super().train_step(data)
        self.after_update()
        return outputs

    def _stash(self, **tensors):
        # Tensors of this step for after_update. MirroredStrategy runs each
        # replica's step in its own Python thread, so the stash is
        # thread-local (a shared attribute would hand replica 1's keys to
        # replica 0). Set with object.__setattr__ so Keras does not track it.
        if "_stash_local" not in self.__dict__:
            object.__setattr__(self, "_stash_local", threading.local())
        self._stash_local.tensors = tensors

    def _stashed_tensors(self) -> dict:
        local = self.__dict__.get("_stash_local")
        return getattr(local, "tensors", None) or {}
