"""VICReg (Bardes et al. 2022): variance, invariance and covariance terms on two views.

Both views go through the backbone and an expander of three 8192-wide
layers. The loss keeps the views' embeddings close (invariance, MSE), the
standard deviation of every dimension above 1 (variance) and the
dimensions decorrelated (covariance), with weights 25, 25 and 1; variance
and covariance use the statistics of the GLOBAL batch. Views: BYOL's pair.
"""

from __future__ import annotations

from keras_ssl.backbones import output_dim
from keras_ssl.heads import projection_head, uses_synchronized_bn
from keras_ssl.losses import vicreg_loss
from keras_ssl.metrics import normalized_embedding_std
from keras_ssl.augment.view_specs import BYOL_VIEWS
from keras_ssl.toolkit import MultiViewMethod


class VICReg(MultiViewMethod):
    """Variance-invariance-covariance regularisation.

    Args:
      backbone: The backbone.
      projection_dim: Width of the expander's layers (8192).
      num_projector_layers: Dense layers of the expander (3).
      invariance_weight: lambda (25).
      variance_weight: mu (25).
      covariance_weight: nu (1).
      views: The two `ViewSpec`s.
      num_classes: Train an online linear probe (see `ContrastiveMethod`).
      **kwargs: Passed to `keras_ssl.Method`.
    """

    min_global_batch = 2

    @classmethod
    def tiny_settings(cls):
        # The paper's weights scaled by 0.1: at full scale ten SGD steps on two tiny
        # batches overshoot (the loss went 43 -> 57).
        return dict(projection_dim=16, invariance_weight=2.5, variance_weight=2.5, covariance_weight=0.1)

    def __init__(
        self,
        backbone,
        projection_dim: int = 8192,
        num_projector_layers: int = 3,
        invariance_weight: float = 25.0,
        variance_weight: float = 25.0,
        covariance_weight: float = 1.0,
        views=BYOL_VIEWS,
        num_classes: int | None = None,
        **kwargs,
    ):
        super().__init__(backbone, views, num_classes=num_classes, **kwargs)
        self.weights_of_terms = (invariance_weight, variance_weight, covariance_weight)
        self.projector = projection_head(
            output_dim(backbone), projection_dim, projection_dim, num_projector_layers,
            output_batch_norm="none", synchronized_bn=uses_synchronized_bn(backbone),
            name="vicreg_expander",
        )

    def compute_pretext_loss(self, batch, training):
        pre_logits = self.encode_views(self.backbone, self.view_batches(batch), training)
        z1, z2 = (self.projector(f, training=training) for f in pre_logits)
        loss, terms = vicreg_loss(z1, z2, *self.weights_of_terms)
        probe, probe_metrics = self.probe_loss(pre_logits[0], batch["label"])
        metrics = {"vicreg_loss": loss, **{f"{k}_term": v for k, v in terms.items()},
                   "embedding_std": normalized_embedding_std(z1), **probe_metrics}
        return loss + probe, metrics
