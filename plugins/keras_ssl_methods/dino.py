"""DINO (Caron et al. 2021): self-distillation of a momentum teacher across multi-crop views.

A student (backbone + head) and a teacher (a momentum copy of both). The
head is an MLP (2048 hidden, GELU) to a 256-d bottleneck, l2-normalised,
then a weight-normalised linear layer to K outputs. The teacher sees the
two global views; the student sees those and the small local views. For
every pair of different views the student's softmax at temperature 0.1
matches the teacher's, centred (a running mean of the teacher's outputs
over the GLOBAL batch, momentum 0.9) and sharpened (temperature warming up
from 0.04 to 0.07). Centring and sharpening together keep it from
collapsing; the teacher's momentum rises from 0.996 to 1 along a half
cosine.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_ssl import cross_replica
from keras_ssl.backbones import output_dim
from keras_ssl.heads import NormalizedDense, projection_head, uses_synchronized_bn
from keras_ssl.losses import dino_loss
from keras_ssl.metrics import normalized_embedding_std
from keras_ssl.schedules import cosine_momentum, linear_warmup
from keras_ssl.augment.view_specs import multi_crop
from keras_ssl.toolkit import MultiViewMethod
from keras_ssl.testing.tiny import TINY_IMAGE_SIZE


def dino_head(input_dim, hidden_dim, bottleneck_dim, num_outputs, num_layers, synchronized_bn,
              batch_norm, name):
    """MLP -> l2-normalised bottleneck -> weight-normalised linear layer (DINO's head)."""
    mlp = projection_head(
        input_dim, hidden_dim, bottleneck_dim, num_layers, batch_norm=batch_norm,
        output_batch_norm="none", activation="gelu", synchronized_bn=synchronized_bn,
        name=f"{name}_mlp",
    )
    head = keras.Sequential(
        [mlp, keras.layers.UnitNormalization(axis=-1, name=f"{name}_l2"),
         NormalizedDense(num_outputs, name=f"{name}_last_layer")],
        name=name,
    )
    head.build((None, input_dim))
    return head


class DINO(MultiViewMethod):
    """Self-distillation with no labels.

    Args:
      backbone: The student backbone (the one exported).
      num_outputs: K of the last layer (65,536 on ImageNet).
      hidden_dim: Hidden width of the head's MLP (2048).
      bottleneck_dim: Width before the last layer (256).
      num_head_layers: Dense layers of the MLP (3).
      head_batch_norm: Batch norm in the MLP (DINO's ViT head has none).
      base_momentum: The teacher's momentum at the first step (0.996), rising to 1.
      student_temperature: tau_s (0.1).
      teacher_temperature: tau_t after the warm-up (0.04 - 0.07).
      warmup_teacher_temperature: tau_t at the first step (0.04).
      teacher_temperature_warmup_steps: Length of the tau_t ramp (30 epochs in the paper).
      center_momentum: Of the teacher's running centre (0.9).
      views: `ViewSpec`s, the two global views first (`multi_crop()` by default).
      num_global_views: How many of `views` the teacher sees (2).
      num_classes: Train an online linear probe (see `ContrastiveMethod`).
      **kwargs: Passed to `keras_ssl.Method`.
    """

    @classmethod
    def tiny_settings(cls):
        # Multi-crop with two local views of half the tiny image.
        return dict(num_outputs=32, hidden_dim=32, bottleneck_dim=16,
                    views=multi_crop(num_local_views=2, local_size=TINY_IMAGE_SIZE // 2))

    def __init__(
        self,
        backbone,
        num_outputs: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_head_layers: int = 3,
        head_batch_norm: bool = False,
        base_momentum: float = 0.996,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.04,
        warmup_teacher_temperature: float = 0.04,
        teacher_temperature_warmup_steps: int = 0,
        center_momentum: float = 0.9,
        views=None,
        num_global_views: int = 2,
        num_classes: int | None = None,
        **kwargs,
    ):
        views = multi_crop() if views is None else views
        super().__init__(backbone, views, num_classes=num_classes, **kwargs)
        if not 1 <= num_global_views <= len(self.views):
            raise ValueError(
                f"{type(self).__name__.lower()}.num_global_views must be between 1 and the "
                f"{len(self.views)} views, "
                f"got {num_global_views}."
            )
        self.num_global_views = num_global_views
        self.base_momentum = base_momentum
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.warmup_teacher_temperature = warmup_teacher_temperature
        self.teacher_temperature_warmup_steps = teacher_temperature_warmup_steps
        self.center_momentum = center_momentum
        self.head = dino_head(
            output_dim(backbone), hidden_dim, bottleneck_dim, num_outputs, num_head_layers,
            uses_synchronized_bn(backbone), head_batch_norm, name="dino_head",
        )
        self.teacher_backbone = self.momentum_copy(backbone)
        self.teacher_head = self.momentum_copy(self.head)
        self.center = self.add_weight(
            shape=(num_outputs,), initializer="zeros", trainable=False, name="center"
        )

    def momentum(self) -> tf.Tensor:
        """The teacher's momentum at the current step."""
        return cosine_momentum(self.base_momentum, self.training_progress())

    def teacher_temperature_now(self) -> tf.Tensor:
        """tau_t at the current step (the warm-up ramp, then constant)."""
        step = self.optimizer.iterations if getattr(self, "optimizer", None) is not None else 0
        return linear_warmup(self.warmup_teacher_temperature, self.teacher_temperature, step,
                             self.teacher_temperature_warmup_steps)

    def compute_pretext_loss(self, batch, training):
        views = self.view_batches(batch)
        pre_logits = self.encode_views(self.backbone, views, training)
        student = [self.head(f, training=training) for f in pre_logits]
        global_views = views[:self.num_global_views]
        teacher = [
            tf.stop_gradient(self.teacher_head(f, training=training))
            for f in self.encode_views(self.teacher_backbone, global_views, training)
        ]
        temperature = self.teacher_temperature_now()
        loss = dino_loss(student, teacher, self.center, self.student_temperature, temperature)
        self.save_for_update(teacher=tf.concat(teacher, axis=0))
        targets = tf.nn.softmax((teacher[0] - self.center) / temperature, -1)
        return self.with_probe_and_metrics(loss, batch, pre_logits[0], targets,
                                           {"distillation_loss": loss})

    def with_probe_and_metrics(self, loss, batch, pre_logits, teacher_targets, metrics):
        """`(loss + the online probe's, metrics)` with DINO's monitoring metrics added.

        Args:
          loss: The distillation loss.
          batch: The batch (its labels train the probe).
          pre_logits: `[B, D]` the student's features of the first view.
          teacher_targets: `[B, K]` the teacher's target distribution of that view.
          metrics: The method's own metrics.
        """
        probe, probe_metrics = self.probe_loss(pre_logits, batch["label"])
        return loss + probe, {
            **metrics,
            # Entropy of the teacher's targets: near log K is uniform collapse, near 0 one-hot.
            "teacher_entropy": tf.reduce_mean(-tf.reduce_sum(
                teacher_targets * tf.math.log(teacher_targets + 1e-12), -1)),
            "embedding_std": normalized_embedding_std(self.head.layers[0](pre_logits)),
            "momentum": self.momentum(),
            **probe_metrics,
        }

    def after_update(self, saved):
        """Moves the teacher towards the student and the centre towards the batch's mean."""
        self.update_momentum_copies(self.momentum())
        if "teacher" in saved:
            self.move_center(self.center, saved["teacher"])

    def move_center(self, center, teacher_outputs):
        """`c <- m c + (1 - m) mean(teacher outputs over the global batch)`."""
        batch_center = cross_replica.global_mean(teacher_outputs)
        m = self.center_momentum
        cross_replica.assign([(center, m * tf.convert_to_tensor(center)
                               + (1.0 - m) * batch_center)])
