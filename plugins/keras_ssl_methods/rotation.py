"""Rotation prediction (Gidaris et al., 2018).

Every image is shown at 0, 90, 180 and 270 degrees, all four in the same
batch (a 4x batch), and a linear head on the pre-logits predicts which
rotation was applied. Kolesnikov et al. (2019) found it the strongest of the
classic pretext tasks (55.4% ImageNet linear accuracy with RevNet-50 k=16).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_ssl import Method


class Rotation(Method):
    """Predicts the multiple of 90 degrees an image was rotated by.

    Args:
      backbone: The backbone (see `keras_ssl.backbones`).
      num_rotations: 4 (0/90/180/270) or 2 (0/180).
      augmentation: Augmentation stack applied once per image, before the
        rotations, so the copies differ only by their rotation.
      **kwargs: Passed to `keras_ssl.Method`.

    Example:

    >>> from keras_ssl.backbones import build_backbone
    >>> net = build_backbone("resnet_v2", depth=10, widening_factor=1,
    ...                      small_image_stem=True)
    >>> method = Rotation(net)
    >>> inputs = method.preprocess({"image": tf.zeros((32, 32, 3)),
    ...                             "label": tf.constant(0, tf.int64),
    ...                             "index": tf.constant(0, tf.int64)})
    >>> inputs["images"].shape, inputs["rotation"].numpy().tolist()
    (TensorShape([4, 32, 32, 3]), [0, 1, 2, 3])
    """

    def __init__(self, backbone, num_rotations: int = 4, augmentation="none", **kwargs):
        super().__init__(backbone, augmentation=augmentation, **kwargs)
        if num_rotations not in (2, 4):
            raise ValueError(
                f"Rotation: num_rotations must be 2 or 4, got {num_rotations}."
            )
        self.num_rotations = num_rotations
        self.head = keras.layers.Dense(num_rotations, name="rotation_logits")

    def preprocess(self, example):
        image = example["image"]
        height, width = image.shape[0], image.shape[1]
        if height is not None and width is not None and height != width:
            raise ValueError(
                f"Rotation needs square images, got {height}x{width}; resize or "
                f"crop the dataset (image_size) to a square."
            )
        image = self.augment(image)
        quarter_turns = 4 // self.num_rotations
        rotated = [tf.image.rot90(image, k * quarter_turns) for k in range(self.num_rotations)]
        return {
            "images": tf.stack(rotated),
            "rotation": tf.range(self.num_rotations, dtype=tf.int32),
        }

    def compute_pretext_loss(self, batch, training):
        images = batch["images"]
        # [B, R, H, W, C] -> [B*R, H, W, C]: all rotations share one forward.
        flat = tf.reshape(images, tf.concat([[-1], tf.shape(images)[2:]], 0))
        labels = tf.reshape(batch["rotation"], [-1])
        features = self.backbone(flat, training=training)
        logits = self.head(features["pre_logits"])
        loss = self.classification_loss(labels, logits)
        return loss, {"rotation_accuracy": self.accuracy(labels, logits)}
