"""BYOL (Grill et al. 2020): predict a momentum target's projection of the other view.

An online network (backbone, projector, predictor) and a target network (a
momentum copy of backbone and projector, `Method.momentum_copy`). The online
prediction of view 1 regresses the target projection of view 2 and vice
versa: `2 - 2 cos(q, stopgrad(z'))`, summed over the two directions. After
each step the target moves towards the online network with momentum
`tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2` (0.996 rising to 1). No
negatives: the predictor and the slowly moving target keep the
representation from collapsing. The two views are asymmetric (blur always
in the first, rarely in the second; solarisation only in the second).
"""

from __future__ import annotations

import tensorflow as tf

from keras_ssl.backbones import output_dim
from keras_ssl.heads import projection_head, uses_synchronized_bn
from keras_ssl.losses import negative_cosine_similarity
from keras_ssl.metrics import normalized_embedding_std
from keras_ssl.schedules import cosine_momentum
from keras_ssl.augment.view_specs import BYOL_VIEWS
from keras_ssl.toolkit import MultiViewMethod


class BYOL(MultiViewMethod):
    """Bootstrap your own latent.

    Args:
      backbone: The online backbone (the one exported).
      projection_dim: Output width of projector and predictor (256).
      hidden_dim: Hidden width of both MLPs (4096).
      base_momentum: tau at the first step (0.996); it rises to 1 along a
        half cosine over `train_steps`.
      views: The two `ViewSpec`s (BYOL's asymmetric pair by default).
      num_classes: Train an online linear probe (see `ContrastiveMethod`).
      **kwargs: Passed to `keras_ssl.Method`.

    Example:

    >>> byol = BYOL(backbone, projection_dim=64, hidden_dim=256)   # doctest: +SKIP
    """

    @classmethod
    def tiny_settings(cls):
        return dict(projection_dim=16, hidden_dim=32)

    def __init__(
        self,
        backbone,
        projection_dim: int = 256,
        hidden_dim: int = 4096,
        base_momentum: float = 0.996,
        views=BYOL_VIEWS,
        num_classes: int | None = None,
        **kwargs,
    ):
        super().__init__(backbone, views, num_classes=num_classes, **kwargs)
        if len(self.views) != 2:
            raise ValueError(f"byol: needs exactly two views, got {len(self.views)}.")
        if not 0.0 <= base_momentum <= 1.0:
            raise ValueError(f"byol: base_momentum must be in [0, 1], got {base_momentum}.")
        self.base_momentum = base_momentum
        synchronized = uses_synchronized_bn(backbone)
        self.projector = projection_head(
            output_dim(backbone), hidden_dim, projection_dim, 2, output_batch_norm="none",
            synchronized_bn=synchronized, name="byol_projector",
        )
        self.predictor = projection_head(
            projection_dim, hidden_dim, projection_dim, 2, output_batch_norm="none",
            synchronized_bn=synchronized, name="byol_predictor",
        )
        self.target_backbone = self.momentum_copy(backbone)
        self.target_projector = self.momentum_copy(self.projector)

    def momentum(self) -> tf.Tensor:
        """The target's momentum at the current step."""
        return cosine_momentum(self.base_momentum, self.training_progress())

    def compute_pretext_loss(self, batch, training):
        views = self.view_batches(batch)
        pre_logits = self.encode_views(self.backbone, views, training)
        projections = [self.projector(f, training=training) for f in pre_logits]
        predictions = [self.predictor(z, training=training) for z in projections]
        targets = [
            tf.stop_gradient(self.target_projector(f, training=training))
            for f in self.encode_views(self.target_backbone, views, training)
        ]
        # 2 - 2 cos per direction, summed over the two.
        loss = 4.0 + 2.0 * (
            negative_cosine_similarity(predictions[0], targets[1])
            + negative_cosine_similarity(predictions[1], targets[0])
        )
        probe, probe_metrics = self.probe_loss(pre_logits[0], batch["label"])
        metrics = {
            "regression_loss": loss,
            "embedding_std": normalized_embedding_std(projections[0]),
            "momentum": self.momentum(),
            **probe_metrics,
        }
        return loss + probe, metrics

    def after_update(self, saved):
        """Moves the target network towards the online one."""
        self.update_momentum_copies(self.momentum())
