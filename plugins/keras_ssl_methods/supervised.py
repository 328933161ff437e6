"""Supervised baseline: a linear classifier on the pre-logits, trained on labels.

The reference point every self-supervised method is compared with (Kolesnikov
et al. 2019 report it beside each pretext task). It is the only method here
that reads `example["label"]`; datasets without labels (a flat folder of
images, label -1) are rejected with an error that says so.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_ssl import Method

NO_LABEL_MESSAGE = (
    "supervised: the dataset has no labels (label -1). The supervised baseline "
    "needs a labelled dataset (e.g. a folder with one sub-folder per class, or a "
    "TFDS dataset with a 'label' feature)."
)


class Supervised(Method):
    """Cross-entropy of a linear head on `pre_logits` against the labels.

    Args:
      backbone: The backbone (see `keras_ssl.backbones`).
      num_classes: Number of classes of the training dataset (12 for
        synthetic_shapes, 1000 for ImageNet).
      augmentation: Augmentation stack applied per image.
      **kwargs: Passed to `keras_ssl.Method`.

    Example:

    >>> from keras_ssl.backbones import build_backbone
    >>> net = build_backbone("resnet_v2", depth=10, widening_factor=1,
    ...                      small_image_stem=True)
    >>> method = Supervised(net, num_classes=12)
    >>> inputs = method.preprocess({"image": tf.zeros((16, 16, 3)),
    ...                             "label": tf.constant(3, tf.int64),
    ...                             "index": tf.constant(0, tf.int64)})
    >>> int(inputs["label"])
    3
    """

    @classmethod
    def tiny_settings(cls):
        return dict(num_classes=3)

    def __init__(self, backbone, num_classes: int = 1000, augmentation="none", **kwargs):
        super().__init__(backbone, augmentation=augmentation, **kwargs)
        if int(num_classes) < 2:
            raise ValueError(f"supervised: num_classes must be >= 2, got {num_classes}.")
        self.num_classes = int(num_classes)
        self.head = keras.layers.Dense(self.num_classes, name="class_logits")

    def preprocess(self, example):
        label = tf.cast(example["label"], tf.int32)
        checks = [
            tf.debugging.assert_non_negative(label, message=NO_LABEL_MESSAGE),
            tf.debugging.assert_less(
                label,
                self.num_classes,
                message=f"supervised: a label is >= num_classes ({self.num_classes}); "
                f"bind supervised.num_classes to the dataset's number of classes.",
            ),
        ]
        with tf.control_dependencies(checks):
            label = tf.identity(label)
        return {"image": self.augment(example["image"]), "label": label}

    def compute_pretext_loss(self, batch, training):
        features = self.backbone(batch["image"], training=training)
        logits = self.head(features["pre_logits"])
        loss = self.classification_loss(batch["label"], logits)
        return loss, {"accuracy": self.accuracy(batch["label"], logits)}
