"""SimCLR (Chen et al. 2020): contrast two augmented views of each image.

Each image gives two views drawn independently by the augmentation stack
(`simclr_imagenet` by default: Inception crop, flip, colour jitter,
grayscale, blur; `simclr_cifar` for CIFAR). Both go through the backbone in
one batch (or one view at a time: `views_in_one_batch`), then a projection
MLP (with batch norm, 128-d output), and NT-Xent
pulls the two views of an image together against the 2(N-1) other views of
the global batch: negatives are gathered from every replica, so the loss on N
replicas is the loss of the concatenated batch. Use synchronized batch norm across replicas
(`resnet_v2.synchronized_bn = True`); the head follows the backbone.
"""

from __future__ import annotations

import tensorflow as tf

from keras_ssl.backbones import output_dim
from keras_ssl.heads import projection_head, uses_synchronized_bn
from keras_ssl.losses import nt_xent_loss
from keras_ssl.toolkit import ContrastiveMethod


class SimCLR(ContrastiveMethod):
    """Contrastive learning of two views with NT-Xent.

    Args:
      backbone: The backbone.
      temperature: tau of NT-Xent (0.5 on CIFAR in the paper, 0.1 typical on
        ImageNet with l2-normalised projections).
      projection_dim: Output width of the head (128).
      hidden_dim: Width of the head's hidden layers (default: the backbone's
        pre-logits width).
      num_head_layers: Dense layers in the head (2: SimCLR v1, 3: v2).
      head_batch_norm: Batch norm in the head.
      head_output_batch_norm: The batch norm after the head's last layer, one of
        `projection_head`'s `output_batch_norm` values (default `no_offset`,
        SimCLR v2's scale-only norm; `affine` as LightlySSL's head). Needs
        `head_batch_norm`.
      head_batch_norm_epsilon: The head's batch-norm epsilon (1e-3, Keras';
        1e-5 as PyTorch's `BatchNorm1d`).
      views_in_one_batch: Run both views through the backbone and head as one
        batch, so batch norm normalises them with shared statistics (SimCLR's
        code); False runs one view at a time, statistics per view (the PyTorch
        libraries' `model(x1), model(x2)`).
      cross_replica_negatives: Gather negatives from all replicas.
      num_classes: Train an online linear probe (see `ContrastiveMethod`).
      augmentation: The stack drawing each view (`simclr_imagenet`, `simclr_cifar`).
      **kwargs: Passed to `keras_ssl.Method`.

    Example:

    >>> from keras_ssl.backbones import build_backbone
    >>> net = build_backbone("resnet_v2", depth=10, widening_factor=1, small_image_stem=True)
    >>> method = SimCLR(net, augmentation="simclr_cifar")
    >>> views = method.preprocess({"image": tf.zeros((16, 16, 3)),
    ...                            "label": tf.constant(0, tf.int64), "index": tf.constant(0, tf.int64)})
    >>> views["view_1"].shape
    TensorShape([16, 16, 3])
    """

    @classmethod
    def tiny_settings(cls):
        return dict(augmentation="simclr_cifar", temperature=0.5, hidden_dim=32, projection_dim=16)

    def __init__(
        self,
        backbone,
        temperature: float = 0.1,
        projection_dim: int = 128,
        hidden_dim: int | None = None,
        num_head_layers: int = 2,
        head_batch_norm: bool = True,
        head_output_batch_norm: str | None = None,
        head_batch_norm_epsilon: float = 1e-3,
        views_in_one_batch: bool = True,
        cross_replica_negatives: bool = True,
        num_classes: int | None = None,
        augmentation="simclr_imagenet",
        **kwargs,
    ):
        super().__init__(backbone, num_classes=num_classes, augmentation=augmentation, **kwargs)
        if head_output_batch_norm is not None and not head_batch_norm:
            raise ValueError(
                f"simclr: head_output_batch_norm = {head_output_batch_norm!r} needs "
                f"head_batch_norm = True (a head without batch norm has no output norm); "
                f"unbind one of them.")
        self.temperature = temperature
        self.cross_replica_negatives = cross_replica_negatives
        self.views_in_one_batch = views_in_one_batch
        width = output_dim(backbone)
        self.head = projection_head(
            width, hidden_dim or width, projection_dim, num_head_layers, head_batch_norm,
            output_batch_norm=head_output_batch_norm or "no_offset",
            batch_norm_epsilon=head_batch_norm_epsilon,
            synchronized_bn=uses_synchronized_bn(backbone), name="simclr_head",
        )

    def preprocess(self, example):
        return self.two_views(example)

    def compute_pretext_loss(self, batch, training):
        if self.views_in_one_batch:
            views = tf.concat([batch["view_1"], batch["view_2"]], axis=0)
            pre_logits = self.backbone(views, training=training)["pre_logits"]
            z1, z2 = tf.split(self.head(pre_logits, training=training), 2, axis=0)
        else:
            per_view = [self.backbone(batch[view], training=training)["pre_logits"]
                        for view in ("view_1", "view_2")]
            z1, z2 = (self.head(p, training=training) for p in per_view)
            pre_logits = tf.concat(per_view, axis=0)
        loss, logits, labels = nt_xent_loss(
            z1, z2, self.temperature, cross_replica_negatives=self.cross_replica_negatives
        )
        accuracy = tf.reduce_mean(tf.cast(
            tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32
        ))
        metrics = {"contrastive_loss": loss, "contrastive_accuracy": accuracy}
        probe, probe_metrics = self.probe_loss(pre_logits, tf.tile(batch["label"], [2]))
        return loss + probe, {**metrics, **probe_metrics}
