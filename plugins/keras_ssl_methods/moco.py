"""MoCo v2 (He et al. 2020; Chen et al. 2020): contrast against a queue of keys.

A query encoder (backbone + MLP head, trained by gradients) and a key
encoder (a copy of both, never trained by gradients: after each optimizer
step its weights move to `m * key + (1 - m) * query`). The two views of an
image give a query and its positive key; the negatives are a FIFO queue of
the keys of earlier batches (a non-trainable variable saved in checkpoints).
Keys carry no gradient. InfoNCE with tau = 0.2 and the MLP head.

Batch norm: MoCo's shuffled BN stops the per-device batch statistics from
leaking which key belongs to which query. Here batch norm is synchronized
across replicas instead (`resnet_v2.synchronized_bn = True`; the heads
follow the backbone), which removes the leak the same way: statistics come
from the whole global batch. Shuffled BN is not implemented.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_ssl.backbones import output_dim
from keras_ssl.losses import gather_across_replicas, info_nce_loss
from keras_ssl_methods._contrastive import (
    ContrastiveMethod,
    assign_across_replicas,
    ema_update,
    projection_head,
    scatter_across_replicas,
    uses_synchronized_bn,
)


class MoCoV2(ContrastiveMethod):
    """Momentum contrast with a queue of negatives (v2: MLP head, tau 0.2, blur).

    Args:
      backbone: The query backbone (the one exported).
      queue_size: Number of negative keys K (65,536 on ImageNet in the paper).
        Keys are enqueued after every step, oldest overwritten first.
      momentum: m of the key encoder's moving average (0.99 - 0.9999).
      temperature: tau (0.2 with the MLP head).
      projection_dim: Output width of the head (128).
      hidden_dim: Hidden width of the head (default: the pre-logits width).
      num_head_layers: Dense layers in the head (2 in MoCo v2).
      head_batch_norm: Batch norm in the head (MoCo v2's head has none).
      num_classes: Train an online linear probe (see `ContrastiveMethod`).
      augmentation: The stack drawing each view (`moco_v2`).
      **kwargs: Passed to `keras_ssl.Method`.
    """

    def __init__(
        self,
        backbone,
        queue_size: int = 65536,
        momentum: float = 0.999,
        temperature: float = 0.2,
        projection_dim: int = 128,
        hidden_dim: int | None = None,
        num_head_layers: int = 2,
        head_batch_norm: bool = False,
        num_classes: int | None = None,
        augmentation="moco_v2",
        **kwargs,
    ):
        super().__init__(backbone, num_classes=num_classes, augmentation=augmentation, **kwargs)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"moco: momentum must be in [0, 1], got {momentum}.")
        self.queue_size = queue_size
        self.momentum = momentum
        self.temperature = temperature
        width = output_dim(backbone)
        synchronized = uses_synchronized_bn(backbone)
        self.head = projection_head(
            width, hidden_dim or width, projection_dim, num_head_layers, head_batch_norm,
            synchronized_bn=synchronized, name="moco_head",
        )
        self.key_backbone = keras.models.clone_model(backbone)
        self.key_head = projection_head(
            width, hidden_dim or width, projection_dim, num_head_layers, head_batch_norm,
            synchronized_bn=synchronized, name="moco_key_head",
        )
        self.key_backbone.set_weights(backbone.get_weights())
        self.key_head.set_weights(self.head.get_weights())
        self.key_backbone.trainable = False
        self.key_head.trainable = False
        self.queue = self.add_weight(
            shape=(queue_size, projection_dim),
            initializer=keras.initializers.RandomNormal(stddev=1.0),
            trainable=False,
            name="queue",
        )
        self.queue_pointer = self.add_weight(
            shape=(), initializer="zeros", dtype="int32", trainable=False, name="queue_pointer"
        )

    def preprocess(self, example):
        image = example["image"]
        return {
            "query_view": self.augment(image),
            "key_view": self.augment(image),
            "label": tf.cast(example["label"], tf.int32),
        }

    def _query_and_key_encoders(self):
        return (
            self.backbone.weights + self.head.weights,
            self.key_backbone.weights + self.key_head.weights,
        )

    def compute_pretext_loss(self, batch, training):
        pre_logits = self.backbone(batch["query_view"], training=training)["pre_logits"]
        queries = self.head(pre_logits, training=training)
        key_features = self.key_backbone(batch["key_view"], training=training)["pre_logits"]
        keys = tf.stop_gradient(self.key_head(key_features, training=training))
        keys = tf.math.l2_normalize(tf.cast(keys, tf.float32), axis=-1)
        negatives = tf.stop_gradient(tf.convert_to_tensor(self.queue))
        loss, logits = info_nce_loss(queries, keys, negatives, self.temperature)
        accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, -1), 0), tf.float32))
        self._stash(keys=keys)
        probe, probe_metrics = self.probe_loss(pre_logits, batch["label"])
        metrics = {"contrastive_loss": loss, "contrastive_accuracy": accuracy, **probe_metrics}
        return loss + probe, metrics

    def after_update(self):
        """Moves the key encoder towards the query encoder; enqueues this step's keys."""
        keys = self._stashed_tensors().get("keys")
        if keys is None:
            return
        query_weights, key_weights = self._query_and_key_encoders()
        trained = [(k, q) for q, k in zip(query_weights, key_weights) if q.trainable]
        ema_update([k for k, _ in trained], [q for _, q in trained], self.momentum)
        all_keys = gather_across_replicas(keys)  # the same on every replica
        count = tf.shape(all_keys)[0]
        pointer = tf.convert_to_tensor(self.queue_pointer)
        rows = (pointer + tf.range(count)) % self.queue_size
        scatter_across_replicas(self.queue, rows, all_keys)
        assign_across_replicas([(self.queue_pointer, (pointer + count) % self.queue_size)])
