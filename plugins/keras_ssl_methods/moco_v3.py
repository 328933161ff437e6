"""MoCo v3 (Chen, Xie & He 2021): a query predicts the other view's momentum key among the batch's.

The base encoder is the backbone and a projector; a predictor follows it.
The momentum encoder is a moving-average copy of backbone and projector.
For two views, with q the l2-normalised predictions and k the normalised
momentum projections gathered over every replica (the global batch, no
queue),

    ctr(q, k) = 2 tau * CE(q k^T / tau, own index),
    loss = ctr(q_1, k_2) + ctr(q_2, k_1),

tau = 0.2 on ViTs (1.0 on ResNets); the factor 2 tau is the paper's code's,
which keeps the gradient's scale independent of tau. The momentum follows
BYOL's cosine from `base_momentum` (0.99) to 1. Heads as in the paper: the
projector an MLP of 3 layers (2 on a ResNet) of width 4096 with batch norm,
the last one without an affine transform, to 256; the predictor 2 layers,
batch norm on the hidden one only. `freeze_patch_embedding` is the paper's
stabiliser for ViTs: the patch projection stays at its random
initialisation (it reported that this removes the dips in accuracy that a
large learning rate causes).
"""

from __future__ import annotations

import tensorflow as tf

from keras_ssl import cross_replica
from keras_ssl.augment.view_specs import BYOL_VIEWS
from keras_ssl.backbones import backbone_spec, output_dim
from keras_ssl.heads import projection_head, uses_synchronized_bn
from keras_ssl.metrics import normalized_embedding_std
from keras_ssl.schedules import cosine_momentum
from keras_ssl.toolkit import MultiViewMethod

PATCH_EMBEDDING = "patch_embedding"


def moco_v3_loss(queries, keys, temperature: float):
    """`2 tau * CE(q k_all^T / tau)`, row i's positive its own key in the global batch.

    Args:
      queries: `[B, D]`, this replica's predictions.
      keys: `[B, D]`, this replica's momentum keys of the other view (no
        gradient flows into them).
      temperature: tau.

    Returns:
      `(loss, logits [B, N], labels [B])`, N the global batch.
    """
    q = tf.math.l2_normalize(tf.cast(queries, tf.float32), axis=-1)
    k = tf.math.l2_normalize(tf.cast(tf.stop_gradient(keys), tf.float32), axis=-1)
    _, replica = cross_replica.replica_position()
    logits = tf.matmul(q, cross_replica.gather(k), transpose_b=True) / temperature
    labels = tf.range(tf.shape(q)[0]) + replica * tf.shape(q)[0]
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return 2.0 * temperature * tf.reduce_mean(ce), logits, labels


class MoCoV3(MultiViewMethod):
    """MoCo v3: symmetric InfoNCE against a momentum encoder's keys of the global batch.

    Args:
      backbone: The base backbone (the one exported).
      projection_dim: Output width of projector and predictor (256).
      hidden_dim: Hidden width of both MLPs (4096).
      num_projector_layers: Dense layers of the projector (3 for ViTs, 2 for
        ResNets in the paper).
      temperature: tau (0.2 for ViTs, 1.0 for ResNets).
      base_momentum: The momentum at the first step (0.99); it rises to 1
        along a half cosine over the run.
      freeze_patch_embedding: Keep a ViT's patch projection at its random
        initialisation (refused on a backbone without one).
      views: The two `ViewSpec`s (BYOL's asymmetric pair, as the paper).
      num_classes: Train an online linear probe (see `ContrastiveMethod`).
      **kwargs: Passed to `keras_ssl.Method`.

    Example:

    >>> from keras_ssl.backbones import build_backbone
    >>> net = build_backbone("vit", widening_factor=1, depth=2, patch_size=4, image_size=16)
    >>> moco = MoCoV3(net, projection_dim=16, hidden_dim=32, freeze_patch_embedding=True)
    >>> [v.path for v in moco.backbone.trainable_variables][:2]
    ['tokens/class_token', 'tokens/position_embedding']
    """

    min_global_batch = 2

    @classmethod
    def tiny_settings(cls):
        return dict(projection_dim=16, hidden_dim=32)

    def __init__(
        self,
        backbone,
        projection_dim: int = 256,
        hidden_dim: int = 4096,
        num_projector_layers: int = 3,
        temperature: float = 0.2,
        base_momentum: float = 0.99,
        freeze_patch_embedding: bool = False,
        views=BYOL_VIEWS,
        num_classes: int | None = None,
        **kwargs,
    ):
        super().__init__(backbone, views, num_classes=num_classes, **kwargs)
        if len(self.views) != 2:
            raise ValueError(f"moco_v3: needs exactly two views, got {len(self.views)}.")
        if not temperature > 0:
            raise ValueError(f"moco_v3: temperature must be > 0, got {temperature}.")
        if not 0.0 <= base_momentum <= 1.0:
            raise ValueError(f"moco_v3: base_momentum must be in [0, 1], got {base_momentum}.")
        if freeze_patch_embedding:
            family = backbone_spec(backbone).get("family")
            if family != "vit":
                raise ValueError(
                    f"moco_v3: freeze_patch_embedding freezes a ViT's patch projection, but the "
                    f"backbone {backbone.name!r} (family {family!r}) has none; bind "
                    f"`moco_v3.freeze_patch_embedding = False` or use the 'vit' backbone.")
            backbone.get_layer(PATCH_EMBEDDING).trainable = False
        self.temperature = float(temperature)
        self.base_momentum = base_momentum
        self.freeze_patch_embedding = bool(freeze_patch_embedding)
        synchronized = uses_synchronized_bn(backbone)
        self.projector = projection_head(
            output_dim(backbone), hidden_dim, projection_dim, num_projector_layers,
            output_batch_norm="no_affine", synchronized_bn=synchronized, name="moco_v3_projector",
        )
        self.predictor = projection_head(
            projection_dim, hidden_dim, projection_dim, 2, output_batch_norm="none",
            synchronized_bn=synchronized, name="moco_v3_predictor",
        )
        self.momentum_backbone = self.momentum_copy(backbone)
        self.momentum_projector = self.momentum_copy(self.projector)

    def momentum(self) -> tf.Tensor:
        """The momentum encoder's momentum at the current step."""
        return cosine_momentum(self.base_momentum, self.training_progress())

    def compute_pretext_loss(self, batch, training):
        views = self.view_batches(batch)
        pre_logits = self.encode_views(self.backbone, views, training)
        queries = [self.predictor(self.projector(f, training=training), training=training)
                   for f in pre_logits]
        keys = [self.momentum_projector(f, training=training)
                for f in self.encode_views(self.momentum_backbone, views, training)]
        loss_12, logits, labels = moco_v3_loss(queries[0], keys[1], self.temperature)
        loss_21, _, _ = moco_v3_loss(queries[1], keys[0], self.temperature)
        loss = loss_12 + loss_21
        accuracy = tf.reduce_mean(tf.cast(
            tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32))
        probe, probe_metrics = self.probe_loss(pre_logits[0], batch["label"])
        metrics = {
            "contrastive_loss": loss,
            "contrastive_accuracy": accuracy,
            "embedding_std": normalized_embedding_std(queries[0]),
            "momentum": self.momentum(),
            **probe_metrics,
        }
        return loss + probe, metrics

    def after_update(self, saved):
        """Moves the momentum encoder towards the base encoder."""
        self.update_momentum_copies(self.momentum())
