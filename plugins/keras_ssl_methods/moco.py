"""MoCo v2 (He et al. 2020; Chen et al. 2020): contrast against a queue of keys.

A query encoder (backbone + MLP head, trained by gradients) and a key
encoder (a copy of both, never trained by gradients: after each optimizer
step its weights move to `m * key + (1 - m) * query`). The two views of an
image give a query and its positive key; the negatives are a FIFO queue of
the keys of earlier batches (a non-trainable variable saved in checkpoints;
`keras_ssl.toolkit.queue`).
Keys carry no gradient. InfoNCE with tau = 0.2 and the MLP head.

Batch norm: when a query and its key are normalised with statistics of the
same images, the statistics tell which key belongs to the current batch and
the model can find its positive without learning much. Two remedies:

- Synchronized BN (`resnet_v2.synchronized_bn = True`; the heads follow the
  backbone): statistics over the whole global batch.
- Shuffled BN (`shuffle_bn_groups = G`, MoCo's own): every replica normalises
  its queries in G groups of consecutive examples and its keys in G groups
  drawn after a permutation of the global batch (the same on every replica,
  keyed by the step), then the keys are put back in order. R replicas with G
  groups each give R x G batch-norm groups; one device with G = 2 computes
  exactly what 2 replicas with G = 1 do (tested).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_ssl import cross_replica
from keras_ssl.backbones import output_dim
from keras_ssl.heads import projection_head, uses_batch_norm, uses_synchronized_bn
from keras_ssl.losses import info_nce_loss
from keras_ssl.random import step_seed
from keras_ssl.toolkit import ContrastiveMethod, add_queue, enqueue
from keras_ssl.testing.tiny import TINY_BATCH_SIZE


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
      shuffle_bn_groups: 0: batch norm over the replica's whole batch (or the
        global batch with synchronized BN). G >= 1: shuffled BN with G groups
        per replica; the per-replica batch must be a multiple of G, and the
        backbone's batch norm must not be synchronized.
      shuffle_seed: Seed of the key permutation (with the optimizer step).
      **kwargs: Passed to `keras_ssl.Method`.

    Example:
      >>> moco = MoCoV2(backbone, queue_size=4096, momentum=0.99, shuffle_bn_groups=2)
    """

    @classmethod
    def tiny_settings(cls):
        # A queue of one batch: trained on two alternating batches, it holds the other
        # batch's keys, never older keys of the same images (which would be negatives
        # identical to the positives). m = 0.99: with m = 0.9 or 0 the keys drift with the
        # weights and the loss rises on so few images (docs/contrastive.md).
        return dict(queue_size=TINY_BATCH_SIZE, momentum=0.99, hidden_dim=32, projection_dim=16)

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
        shuffle_bn_groups: int = 0,
        shuffle_seed: int = 0,
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
        if shuffle_bn_groups < 0:
            raise ValueError(f"moco: shuffle_bn_groups must be >= 0, got {shuffle_bn_groups}.")
        if shuffle_bn_groups and not uses_batch_norm(backbone):
            raise ValueError(
                f"moco: shuffle_bn_groups = {shuffle_bn_groups} shuffles the batch-norm groups "
                f"of the key encoder, but the backbone {backbone.name!r} has no batch norm (a "
                "ViT normalises each token by itself, so no statistic can leak across the "
                "batch). Set `moco.shuffle_bn_groups = 0`.")
        if shuffle_bn_groups and synchronized:
            raise ValueError(
                "moco: shuffle_bn_groups needs per-group batch statistics, but the backbone's "
                "batch norm is synchronized across replicas. Use one of the two: set "
                "`moco.shuffle_bn_groups = 0` or `resnet_v2.synchronized_bn = False` (or the "
                "`synchronized_bn` of your backbone)."
            )
        self.shuffle_bn_groups = int(shuffle_bn_groups)
        self.shuffle_seed = int(shuffle_seed)
        self.head = projection_head(
            width, hidden_dim or width, projection_dim, num_head_layers, head_batch_norm,
            synchronized_bn=synchronized, name="moco_head",
        )
        # Momentum copies stay `trainable` so keys are normalised with their batch's
        # statistics as the queries are; the optimizer never sees them.
        self.key_backbone = self.momentum_copy(backbone)
        self.key_head = self.momentum_copy(self.head)
        self.queue, self.queue_pointer = add_queue(
            self, queue_size, projection_dim, keras.initializers.RandomNormal(stddev=1.0)
        )

    def preprocess(self, example):
        image = example["image"]
        return {
            "query_view": self.augment(image),
            "key_view": self.augment(image),
            "label": tf.cast(example["label"], tf.int32),
        }

    def _in_groups(self, encode, images):
        """`encode` on `shuffle_bn_groups` consecutive slices of `images` (one batch norm
        group each), concatenated; on the whole batch when shuffled BN is off."""
        groups = self.shuffle_bn_groups
        if groups <= 1:
            return encode(images)
        size = images.shape[0]
        if size is not None and size % groups:
            raise ValueError(
                f"moco: the per-replica batch ({size}) is not a multiple of "
                f"shuffle_bn_groups ({groups}); change the batch size or the groups."
            )
        outputs = [encode(part) for part in tf.split(images, groups)]
        return tf.nest.map_structure(lambda *parts: tf.concat(parts, axis=0), *outputs)

    def key_permutation(self, global_batch_size):
        """The permutation of the global batch that shuffled BN uses at this step."""
        draw = tf.random.stateless_uniform([global_batch_size], step_seed(self, self.shuffle_seed))
        return tf.argsort(draw)

    def _keys(self, key_views, training):
        def encode(images):
            features = self.key_backbone(images, training=training)["pre_logits"]
            return self.key_head(features, training=training)

        if not self.shuffle_bn_groups:
            keys = encode(key_views)
        else:
            _, replica = cross_replica.replica_position()
            local = tf.shape(key_views)[0]
            views = cross_replica.gather(key_views)
            permutation = self.key_permutation(tf.shape(views)[0])
            mine = tf.gather(views, permutation[replica * local:(replica + 1) * local])
            mine = tf.ensure_shape(mine, key_views.shape)
            # Row i of the gathered keys is the key of example permutation[i].
            shuffled = cross_replica.gather(self._in_groups(encode, mine))
            keys = tf.gather(shuffled, tf.argsort(permutation))[replica * local:(replica + 1) * local]
        keys = tf.stop_gradient(keys)
        return tf.math.l2_normalize(tf.cast(keys, tf.float32), axis=-1)

    def compute_pretext_loss(self, batch, training):
        def encode(images):
            features = self.backbone(images, training=training)["pre_logits"]
            return features, self.head(features, training=training)

        pre_logits, queries = self._in_groups(encode, batch["query_view"])
        keys = self._keys(batch["key_view"], training)
        negatives = tf.stop_gradient(tf.convert_to_tensor(self.queue))
        loss, logits = info_nce_loss(queries, keys, negatives, self.temperature)
        accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, -1), 0), tf.float32))
        self.save_for_update(keys=keys)
        probe, probe_metrics = self.probe_loss(pre_logits, batch["label"])
        # Cosine similarities of a query to its key and to the queue: both near 1 is collapse.
        similarity = logits * self.temperature
        metrics = {"contrastive_loss": loss, "contrastive_accuracy": accuracy,
                   "positive_similarity": tf.reduce_mean(similarity[:, 0]),
                   "negative_similarity": tf.reduce_mean(similarity[:, 1:]), **probe_metrics}
        return loss + probe, metrics

    def after_update(self, saved):
        """Moves the key encoder towards the query encoder; enqueues this step's keys."""
        if "keys" not in saved:
            return
        self.update_momentum_copies(self.momentum)
        enqueue(self.queue, self.queue_pointer, saved["keys"])
