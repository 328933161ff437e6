"""The bases of the joint-embedding methods: an online probe, and several views per image.

`ContrastiveMethod` (a `keras_ssl.Method` with an optional online linear probe
and `two_views`) is the base of SimCLR, MoCo v2, NPID, PIRL, CMC and AMDIM;
`MultiViewMethod` (views drawn from `keras_ssl.views.ViewSpec`s and encoded
one backbone call per view size) is the base of BYOL, SimSiam, Barlow Twins,
VICReg, DINO and SwAV. A plugin subclasses them as the first-party methods do.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_ssl import Method
from keras_ssl.backbones import output_dim
from keras_ssl.augment.view_specs import ViewSpec, check_views_fit, draw_views


class ContrastiveMethod(Method):
    """Base of the contrastive and non-contrastive methods: an online probe.

    Args:
      backbone: The backbone.
      num_classes: If set, a linear probe on stop-gradient pre-logits is
        trained alongside (on examples with `label >= 0`; unlabelled data
        has -1) and reports `probe_accuracy`. Its gradient never reaches the
        backbone; it only tells how linearly separable the classes are.
      **kwargs: Passed to `keras_ssl.Method` (`augmentation`).
    """

    def __init__(self, backbone, num_classes: int | None = None, **kwargs):
        super().__init__(backbone, **kwargs)
        self.num_classes = num_classes
        self.probe = None
        if num_classes:
            self.probe = keras.layers.Dense(num_classes, name="online_probe")
            self.probe.build((None, output_dim(backbone)))

    def two_views(self, example) -> dict:
        """`{"view_1", "view_2", "label"}`: two independent draws of `augment` of the image."""
        image = example["image"]
        return {
            "view_1": self.augment(image),
            "view_2": self.augment(image),
            "label": tf.cast(example["label"], tf.int32),
        }

    def probe_loss(self, pre_logits, labels):
        """`(loss, metrics)` of the online probe; zeros without one."""
        if self.probe is None:
            return tf.zeros(()), {}
        labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
        logits = tf.cast(self.probe(tf.stop_gradient(pre_logits)), tf.float32)
        valid = tf.cast(labels >= 0, tf.float32)
        safe = tf.maximum(labels, 0)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=logits)
        count = tf.maximum(tf.reduce_sum(valid), 1.0)
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), safe), tf.float32)
        loss = tf.reduce_sum(ce * valid) / count
        return loss, {"probe_loss": loss, "probe_accuracy": tf.reduce_sum(correct * valid) / count}


class MultiViewMethod(ContrastiveMethod):
    """A method that draws several views of each image, each from its own `ViewSpec`.

    `preprocess` returns `view_0 ... view_{n-1}` and the label;
    `encode_views` runs the backbone once per group of views of equal size
    (the two views of BYOL in one pass, the global and the local views of
    multi-crop in two) and returns each view's pre-logits.

    Args:
      backbone: The backbone.
      views: `keras_ssl.views.ViewSpec`s, one per view (global views first), or
        dicts of their fields (as JSON settings give them).
      num_classes: Train an online linear probe on the first view.
      min_global_batch: The smallest global batch the loss is defined for
        (2 for losses of batch statistics).
      **kwargs: Passed to `keras_ssl.Method`.
    """

    min_global_batch = 1

    def __init__(self, backbone, views, num_classes: int | None = None, **kwargs):
        super().__init__(backbone, num_classes=num_classes, **kwargs)
        self.views = tuple(v if isinstance(v, ViewSpec) else ViewSpec(**v) for v in views)
        if len(self.views) < 2:
            raise ValueError(
                f"{type(self).__name__}: needs at least two views, got {len(self.views)}."
            )

    def _setting(self, name: str) -> str:
        return f"{getattr(self, 'registry_name', type(self).__name__.lower())}.{name}"

    def check_training_setup(self, global_batch_size, image_size):
        check_views_fit(self.views, image_size, self._setting("views"))
        if global_batch_size < self.min_global_batch:
            raise ValueError(
                f"{self._setting('')[:-1]}: its loss uses statistics over the global batch and "
                f"needs at least {self.min_global_batch} images per step, got "
                f"keras_ssl.train.batch_size = {global_batch_size}; raise the batch size."
            )

    def preprocess(self, example):
        views = draw_views(example["image"], self.views)
        return {**{f"view_{i}": view for i, view in enumerate(views)},
                "label": tf.cast(example["label"], tf.int32)}

    def view_batches(self, batch) -> list:
        """The batch's views, `[B, size, size, 3]` each, in the order of `views`."""
        return [batch[f"view_{i}"] for i in range(len(self.views))]

    def encode_views(self, network, views, training) -> list:
        """`network(view)["pre_logits"]` per view, one call per group of equal-sized views."""
        groups = {}
        for i, view in enumerate(views):
            groups.setdefault(tuple(view.shape[1:3]), []).append(i)
        outputs = [None] * len(views)
        for members in groups.values():
            joined = tf.concat([views[i] for i in members], axis=0)
            features = network(joined, training=training)["pre_logits"]
            for i, part in zip(members, tf.split(features, len(members), axis=0)):
                outputs[i] = part
        return outputs
