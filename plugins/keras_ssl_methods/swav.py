"""SwAV (Caron et al. 2020): swap the prototype assignments of multi-crop views.

The backbone and a projection MLP give l2-normalised embeddings, scored
against K prototypes (unit vectors, `keras_ssl.heads.NormalizedDense`). For
each global view, Sinkhorn-Knopp turns the scores of the GLOBAL batch into
soft codes that spread the batch evenly over the prototypes; every other
view then predicts those codes from its own scores (softmax at
temperature 0.1). With small batches, a queue of earlier global-view
embeddings joins the Sinkhorn batch so the equipartition is over enough
rows. The prototypes receive no gradient in the first steps.
"""

from __future__ import annotations

import tensorflow as tf

from keras_ssl import cross_replica
from keras_ssl.backbones import output_dim
from keras_ssl.heads import NormalizedDense, projection_head, uses_synchronized_bn
from keras_ssl.losses import sinkhorn_knopp, swapped_prediction_loss
from keras_ssl.metrics import normalized_embedding_std
from keras_ssl.augment.view_specs import ViewSpec, multi_crop
from keras_ssl.toolkit import MultiViewMethod, add_queue, enqueue, oldest_first
from keras_ssl.testing.tiny import TINY_IMAGE_SIZE

# SwAV's view: jitter strength 1 (0.8, 0.8, 0.8, 0.2) p 0.8, grayscale p 0.2, blur p 0.5.
SWAV_VIEW = ViewSpec(jitter=(0.8, 0.8, 0.8, 0.2), blur_probability=0.5)


class SwAV(MultiViewMethod):
    """Swapping assignments between views.

    Args:
      backbone: The backbone.
      num_prototypes: K (3000 on ImageNet).
      projection_dim: Width of the embeddings (128).
      hidden_dim: Hidden width of the projection MLP (2048).
      temperature: tau of the swapped prediction (0.1).
      sinkhorn_epsilon: Entropy regularisation of the codes (0.05).
      sinkhorn_iterations: Sinkhorn-Knopp rounds (3).
      freeze_prototypes_steps: Steps in which the prototypes get no gradient
        (about one epoch in the paper).
      queue_length: Global-view embeddings kept from earlier steps for the
        codes (0: no queue; 3840 for small batches in the paper). A
        multiple of the global batch.
      queue_start_step: Step from which the queue is filled and used.
      views: `ViewSpec`s, the global views (whose codes are computed) first.
      num_global_views: How many of `views` codes are computed for (2).
      num_classes: Train an online linear probe (see `ContrastiveMethod`).
      **kwargs: Passed to `keras_ssl.Method`.
    """

    @classmethod
    def tiny_settings(cls):
        # Multi-crop with two local views of half the tiny image.
        return dict(num_prototypes=16, projection_dim=16, hidden_dim=32,
                    views=multi_crop(num_local_views=2, local_size=TINY_IMAGE_SIZE // 2))

    def __init__(
        self,
        backbone,
        num_prototypes: int = 3000,
        projection_dim: int = 128,
        hidden_dim: int = 2048,
        temperature: float = 0.1,
        sinkhorn_epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        freeze_prototypes_steps: int = 0,
        queue_length: int = 0,
        queue_start_step: int = 0,
        views=None,
        num_global_views: int = 2,
        num_classes: int | None = None,
        **kwargs,
    ):
        views = multi_crop(global_views=(SWAV_VIEW, SWAV_VIEW)) if views is None else views
        super().__init__(backbone, views, num_classes=num_classes, **kwargs)
        if not 1 <= num_global_views < len(self.views):
            raise ValueError(
                f"swav: num_global_views must be at least 1 and fewer than the "
                f"{len(self.views)} views, got {num_global_views}."
            )
        self.num_global_views = num_global_views
        self.temperature = temperature
        self.sinkhorn_epsilon = sinkhorn_epsilon
        self.sinkhorn_iterations = sinkhorn_iterations
        self.freeze_prototypes_steps = freeze_prototypes_steps
        self.queue_length = int(queue_length)
        self.queue_start_step = queue_start_step
        self.projector = projection_head(
            output_dim(backbone), hidden_dim, projection_dim, 2, output_batch_norm="none",
            synchronized_bn=uses_synchronized_bn(backbone), name="swav_projector",
        )
        self.prototypes = NormalizedDense(num_prototypes, name="swav_prototypes")
        self.prototypes.build((None, projection_dim))
        if self.queue_length:
            # Row i: the embeddings of one image's global views, [num_global_views, D].
            self.queue, self.queue_pointer = add_queue(
                self, self.queue_length, (num_global_views, projection_dim)
            )
            self.queue_filled = self.add_weight(
                shape=(), initializer="zeros", dtype="int32", trainable=False, name="queue_filled"
            )

    def check_training_setup(self, global_batch_size, image_size):
        super().check_training_setup(global_batch_size, image_size)
        if self.queue_length % global_batch_size:
            raise ValueError(
                f"swav.queue_length ({self.queue_length}) must be a multiple of the global batch "
                f"(keras_ssl.train.batch_size = {global_batch_size}), so that it holds whole "
                f"batches; e.g. {max(1, self.queue_length // global_batch_size) * global_batch_size}."
            )

    def _step(self):
        optimizer = getattr(self, "optimizer", None)
        return optimizer.iterations if optimizer is not None else tf.constant(0, tf.int64)

    def _scores(self, embeddings):
        kernel = self.prototypes.normalized_kernel()
        frozen = tf.cast(self._step(), tf.int64) < self.freeze_prototypes_steps
        kernel = tf.where(frozen, tf.stop_gradient(kernel), kernel)
        return tf.matmul(embeddings, kernel)

    def _codes(self, view_index, scores):
        if not self.queue_length:
            return sinkhorn_knopp(scores, self.sinkhorn_epsilon, self.sinkhorn_iterations)
        # This replica's share of the queue: over all replicas, each queued row once.
        queued = cross_replica.replica_rows(self._queued(view_index, scores))
        queued_scores = tf.matmul(queued, tf.stop_gradient(self.prototypes.normalized_kernel()))
        with_queue = sinkhorn_knopp(
            tf.concat([queued_scores, scores], 0), self.sinkhorn_epsilon, self.sinkhorn_iterations
        )[tf.shape(queued_scores)[0]:]
        without_queue = sinkhorn_knopp(scores, self.sinkhorn_epsilon, self.sinkhorn_iterations)
        # Both computed and one selected: Sinkhorn-Knopp's cross-replica sums inside a
        # `tf.cond` branch stop a MirroredStrategy step (merge_call in control flow).
        return tf.where(self.queue_filled >= self.queue_length, with_queue, without_queue)

    def _queued(self, view_index, scores):
        """The queued embeddings of global view `view_index`, `[queue_length, D]`.

        Whole global batches from the newest back, each batch's rows in order.
        The row order fixes the order of Sinkhorn-Knopp's float sums; this is
        the order SwAV's recorded figures were computed with.
        """
        batch = scores.shape[0] or tf.shape(scores)[0]
        rows = oldest_first(self.queue, self.queue_pointer)[:, view_index]
        batches = tf.reshape(rows, [-1, batch * cross_replica.num_replicas(), rows.shape[-1]])
        return tf.reshape(tf.reverse(batches, [0]), [self.queue_length, rows.shape[-1]])

    def compute_pretext_loss(self, batch, training):
        pre_logits = self.encode_views(self.backbone, self.view_batches(batch), training)
        embeddings = [
            tf.math.l2_normalize(tf.cast(self.projector(f, training=training), tf.float32), -1)
            for f in pre_logits
        ]
        scores = [self._scores(z) for z in embeddings]
        codes = {i: self._codes(i, scores[i]) for i in range(self.num_global_views)}
        loss = swapped_prediction_loss(scores, codes, self.temperature)
        if self.queue_length:
            self.save_for_update(embeddings=tf.stack(embeddings[:self.num_global_views], 1))
        probe, probe_metrics = self.probe_loss(pre_logits[0], batch["label"])
        chosen = tf.argmax(cross_replica.gather(codes[0]), -1)
        used = tf.reduce_sum(tf.one_hot(chosen, tf.shape(codes[0])[1]), 0)
        metrics = {
            "swav_loss": loss,
            "embedding_std": normalized_embedding_std(embeddings[0]),
            # Prototypes chosen by at least one image of the global batch.
            "prototypes_in_use": tf.reduce_sum(tf.cast(used > 0, tf.float32)),
            **probe_metrics,
        }
        return loss + probe, metrics

    def after_update(self, saved):
        """Pushes the global views' embeddings of the whole batch into the queue."""
        if "embeddings" not in saved:
            return
        started = tf.cast(self._step(), tf.int64) >= self.queue_start_step
        enqueue(self.queue, self.queue_pointer, saved["embeddings"], when=started)
        count = tf.shape(saved["embeddings"])[0] * cross_replica.num_replicas()
        cross_replica.assign([(self.queue_filled, tf.where(
            started, tf.minimum(self.queue_filled + count, self.queue_length), self.queue_filled))])
