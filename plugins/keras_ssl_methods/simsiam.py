"""SimSiam (Chen & He 2021): a Siamese network with a predictor and a stop-gradient.

One network for both views (no momentum target): the backbone, a projector
of three layers with batch norm on its output, and a bottleneck predictor
(2048 -> 512 -> 2048). The loss is the symmetrised negative cosine
`D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2`; the stop-gradient is
what keeps it from collapsing (the paper's Fig. 2 tracks the standard
deviation of the normalised outputs, logged here as `embedding_std`).
"""

from __future__ import annotations

from keras_ssl.backbones import output_dim
from keras_ssl.heads import projection_head, uses_synchronized_bn
from keras_ssl.losses import negative_cosine_similarity
from keras_ssl.metrics import normalized_embedding_std
from keras_ssl.augment.view_specs import ViewSpec
from keras_ssl.toolkit import MultiViewMethod

# SimSiam's views (the MoCo v2 stack): jitter (0.4, 0.4, 0.4, 0.1) p 0.8,
# grayscale p 0.2, blur p 0.5, crop area from 0.2.
SIMSIAM_VIEW = ViewSpec(area_range=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), blur_probability=0.5)


class SimSiam(MultiViewMethod):
    """Simple Siamese representation learning.

    Args:
      backbone: The backbone.
      projection_dim: Output width of the projector and the predictor (2048).
      predictor_hidden_dim: The predictor's bottleneck (512).
      projector_hidden_dim: The projector's hidden width (default: projection_dim).
      num_projector_layers: Dense layers of the projector (3; 2 on CIFAR).
      views: The two `ViewSpec`s.
      num_classes: Train an online linear probe (see `ContrastiveMethod`).
      **kwargs: Passed to `keras_ssl.Method`.
    """

    @classmethod
    def tiny_settings(cls):
        return dict(projection_dim=16, predictor_hidden_dim=8)

    def __init__(
        self,
        backbone,
        projection_dim: int = 2048,
        predictor_hidden_dim: int = 512,
        projector_hidden_dim: int | None = None,
        num_projector_layers: int = 3,
        views=(SIMSIAM_VIEW, SIMSIAM_VIEW),
        num_classes: int | None = None,
        **kwargs,
    ):
        super().__init__(backbone, views, num_classes=num_classes, **kwargs)
        synchronized = uses_synchronized_bn(backbone)
        self.projector = projection_head(
            output_dim(backbone), projector_hidden_dim or projection_dim, projection_dim,
            num_projector_layers, output_batch_norm="no_affine", synchronized_bn=synchronized,
            name="simsiam_projector",
        )
        self.predictor = projection_head(
            projection_dim, predictor_hidden_dim, projection_dim, 2, output_batch_norm="none",
            synchronized_bn=synchronized, name="simsiam_predictor",
        )

    def compute_pretext_loss(self, batch, training):
        pre_logits = self.encode_views(self.backbone, self.view_batches(batch), training)
        z1, z2 = (self.projector(f, training=training) for f in pre_logits)
        p1, p2 = self.predictor(z1, training=training), self.predictor(z2, training=training)
        loss = 0.5 * negative_cosine_similarity(p1, z2) + 0.5 * negative_cosine_similarity(p2, z1)
        probe, probe_metrics = self.probe_loss(pre_logits[0], batch["label"])
        metrics = {"similarity_loss": loss, "embedding_std": normalized_embedding_std(z1),
                   **probe_metrics}
        return loss + probe, metrics
