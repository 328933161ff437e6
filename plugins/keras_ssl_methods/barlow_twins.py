"""Barlow Twins (Zbontar et al. 2021): make the views' cross-correlation the identity.

Both views go through the backbone and a projector of three 8192-wide
layers; the embeddings are standardised per dimension over the GLOBAL batch
and their cross-correlation C (D x D) is pushed towards the identity:
`sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2`. The statistics come from
every replica (`keras_ssl.losses.barlow_twins`), so the loss does not depend
on how the batch is split. Views: BYOL's asymmetric pair.
"""

from __future__ import annotations

import tensorflow as tf

from keras_ssl.backbones import output_dim
from keras_ssl.heads import projection_head, uses_synchronized_bn
from keras_ssl.losses import barlow_twins_loss
from keras_ssl.metrics import normalized_embedding_std
from keras_ssl.augment.view_specs import BYOL_VIEWS
from keras_ssl.toolkit import MultiViewMethod


class BarlowTwins(MultiViewMethod):
    """Redundancy reduction between two views.

    Args:
      backbone: The backbone.
      projection_dim: Width of the projector's layers (8192).
      num_projector_layers: Dense layers of the projector (3).
      redundancy_weight: lambda of the off-diagonal term (5e-3).
      loss_scale: A factor on the whole loss (the first release of the
        paper's code scaled it by 1/32 = 0.024; 1 gives the paper's formula).
      views: The two `ViewSpec`s.
      num_classes: Train an online linear probe (see `ContrastiveMethod`).
      **kwargs: Passed to `keras_ssl.Method`.
    """

    min_global_batch = 2

    @classmethod
    def tiny_settings(cls):
        return dict(projection_dim=16, redundancy_weight=0.05)

    def __init__(
        self,
        backbone,
        projection_dim: int = 8192,
        num_projector_layers: int = 3,
        redundancy_weight: float = 5e-3,
        loss_scale: float = 1.0,
        views=BYOL_VIEWS,
        num_classes: int | None = None,
        **kwargs,
    ):
        super().__init__(backbone, views, num_classes=num_classes, **kwargs)
        self.redundancy_weight = redundancy_weight
        self.loss_scale = loss_scale
        self.projector = projection_head(
            output_dim(backbone), projection_dim, projection_dim, num_projector_layers,
            output_batch_norm="none", synchronized_bn=uses_synchronized_bn(backbone),
            name="barlow_twins_projector",
        )

    def compute_pretext_loss(self, batch, training):
        pre_logits = self.encode_views(self.backbone, self.view_batches(batch), training)
        z1, z2 = (self.projector(f, training=training) for f in pre_logits)
        loss, correlation = barlow_twins_loss(z1, z2, self.redundancy_weight)
        loss = self.loss_scale * loss
        probe, probe_metrics = self.probe_loss(pre_logits[0], batch["label"])
        metrics = {
            "redundancy_loss": loss,
            "mean_diagonal_correlation": tf.reduce_mean(tf.linalg.diag_part(correlation)),
            "embedding_std": normalized_embedding_std(z1),
            **probe_metrics,
        }
        return loss + probe, metrics
