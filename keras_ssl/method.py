"""`Method`: the base class every self-supervised method subclasses.

A method is a `keras.Model` that owns a backbone (which returns named
end-points) and whatever heads its pretext task needs. It contributes two
things:

1. `preprocess(example)`: runs inside `tf.data` on ONE decoded example
   (`{"image": float32 [H, W, 3] in [0, 1], "label": int64, "index": int64}`)
   and returns the tensors the task trains on (views, rotations, labels...).
   Its random draws come from `keras_ssl.random` (`uniform`, `normal`,
   `permutation`, or `next_seed()` for any `tf.random.stateless_*` /
   `tf.image.stateless_*` op): `make_dataset` seeds them per example, so an
   example's views depend on the run seed, the epoch and its index only.
2. `compute_pretext_loss(batch, training)`: the task's loss and metrics on a
   batch of those tensors.

`train_step` is written once, here: it adds the backbone's regularisation
losses, divides by the replica count (gradients are SUM-reduced across
replicas), applies loss scaling for mixed precision and returns the metrics.
The same step serves `Method.fit` on one device and the Orbit loop of
`keras_ssl.training` under any `tf.distribute` strategy.

Example (a complete method; see docs/writing_a_method.md):

>>> import keras_ssl.random
>>> class Brightness(Method):
...     '''Predicts whether an image was darkened.'''
...     def __init__(self, backbone, **kwargs):
...         super().__init__(backbone, **kwargs)
...         self.head = keras.layers.Dense(2)
...     def preprocess(self, example):
...         image = self.augment(example["image"])
...         dark = keras_ssl.random.uniform([], 0, 2, tf.int32)
...         return {"image": image * (1.0 - 0.5 * tf.cast(dark, tf.float32)),
...                 "target": dark}
...     def compute_pretext_loss(self, batch, training):
...         features = self.backbone(batch["image"], training=training)
...         logits = self.head(features["pre_logits"])
...         loss = self.classification_loss(batch["target"], logits)
...         return loss, {"accuracy": self.accuracy(batch["target"], logits)}
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_ssl.augment import batched, build_augmentation
from keras_ssl.random import example_seed, seeded


class Method(keras.Model):
    """Base class of self-supervised methods.

    Args:
      backbone: A backbone model returning a dict of end-points with
        `pre_logits` (see `keras_ssl.backbones`).
      augmentation: Name of a registered augmentation stack, or a callable
        `image -> image`, applied per image by `augment`.
      **kwargs: Passed to `keras.Model`.

    Attributes:
      seed: The run's seed (set by training), which `keras_ssl.random.step_seed`
        folds into per-step draws.
      supports_mixed_precision: False in a subclass that cannot train under a
        mixed float16/bfloat16 policy; training then refuses such a policy.
    """

    supports_mixed_precision = True
    #: Set by training (`keras_ssl.train.augment_on_device`): `make_dataset`
    #: leaves the views un-augmented, with their parameters, and `train_step`
    #: applies them to the batch on the device (`keras_ssl.augment.batched`).
    augment_on_device = False

    def __init__(self, backbone: keras.Model, augmentation="none", **kwargs):
        super().__init__(**kwargs)
        self.seed = 0
        self.backbone = backbone
        self.augmentation_name = augmentation if isinstance(augmentation, str) else getattr(
            augmentation, "__name__", "custom"
        )
        self._augment_fn = build_augmentation(augmentation)

    # ------------------------------------------------------------ the task
    def preprocess(self, example: dict) -> dict:
        """Builds the task's inputs from one decoded example (in tf.data).

        Args:
          example: `{"image": float32 [H, W, 3] in [0, 1], "label": int64,
            "index": int64}`.

        Returns:
          A dict of tensors; batched, it is what `compute_pretext_loss` gets.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement preprocess(example)."
        )

    def compute_pretext_loss(self, batch: dict, training: bool):
        """Returns `(loss, metrics)` for a batch of `preprocess` outputs.

        Args:
          batch: The batched dict built by `preprocess`.
          training: Whether batch norm and dropout run in training mode.

        Returns:
          A scalar loss (mean over this replica's examples) and a dict of
          scalar metrics.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement compute_pretext_loss(batch, training)."
        )

    def augment(self, image: tf.Tensor) -> tf.Tensor:
        """Applies the method's augmentation stack to one image."""
        return self._augment_fn(image)

    def adapt(self, examples: tf.data.Dataset) -> None:
        """Estimates statistics of the training data the method needs (default: none).

        Training calls it once, on the training split in its stored order
        (the same on every worker and after a resume), before the model's
        variables are created; e.g. Colorization estimates its colour prior.

        Args:
          examples: Decoded examples (see `preprocess`).
        """
        del examples

    # ------------------------------------------------------- export hooks
    def export_metadata(self) -> dict:
        """Fields merged into the export's `assets/keras_ssl.json`.

        Patch-based methods return `input_form: "patches"`, `patch_grid`,
        `patch_size` and `input_size` (the image size the grid is cut from),
        which `keras-ssl-eval` follows to average features over patches.
        """
        return {}

    def export_input_transform(self, images: tf.Tensor) -> tf.Tensor:
        """What images go through before the backbone, built into the export.

        Exported models take plain [0, 1] RGB; a method whose backbone sees
        something else (standardised patches, a lightness channel) returns it
        here from `images` `[batch, H, W, 3]`.
        """
        return images

    def export_signatures(self) -> tuple[dict, dict]:
        """Extra SavedModel signatures and the objects holding their variables.

        Returns:
          `({name: fn(images) -> dict of tensors}, {attribute: trackable})`,
          e.g. Colorization's `colorize` signature and its dense head.
        """
        return {}, {}

    # ----------------------------------------------------------- plumbing
    def call(self, images, training=False):
        """Returns the backbone's end-points for `images`."""
        return self.backbone(images, training=training)

    def augment_batch(self, batch: dict) -> dict:
        """Applies augmentation parameters carried in `batch` (on-device augmentation).

        A no-op for batches whose views tf.data already augmented.
        """
        views = getattr(self, "_deferred_views", None)
        return views.apply(batch) if views is not None else batch

    def train_step(self, data):
        data = self.augment_batch(data)
        with tf.GradientTape() as tape:
            loss, metrics = self.compute_pretext_loss(data, training=True)
            regularization = tf.add_n(self.losses) if self.losses else tf.zeros(())
            total = loss + regularization
            # Gradients are SUM-reduced across replicas: divide so the update
            # is that of the mean over the global batch.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = self.optimizer.scale_loss(total / replicas)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        return {"loss": loss, "regularization_loss": regularization, **metrics}

    def build_from_batch(self, batch: dict) -> None:
        """Creates every variable by running the task once on `batch`.

        Subclassed models get no variables from `build(shape)`; call this
        (inside the strategy scope) before building the optimizer.
        """
        self.compute_pretext_loss(batch, training=False)

    def make_dataset(self, images: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
        """Maps `preprocess` over decoded examples, seeded per example, and batches them.

        Each example's draws are seeded by its `"seed"` entry (added by the
        training pipeline, `keras_ssl.input_pipeline`) or, without one, by
        its `"index"`; the map runs in parallel but its output is in order.

        Args:
          images: Dataset of decoded examples (see `preprocess`).
          batch_size: Batch size; the last partial batch is dropped so every
            replica gets an equal share.

        Augmentation stacks draw per example and apply per batch
        (`keras_ssl.augment.batched.DeferredViews`): in tf.data, or on the
        device in `train_step` when `augment_on_device` is set.

        Returns:
          A prefetched dataset of batched task inputs.
        """
        views = batched.DeferredViews(
            self.seeded_preprocess, getattr(self, "registry_name", type(self).__name__),
            on_device=self.augment_on_device)
        dataset = images.map(views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if self.augment_on_device:
            views.check_on_device()
            # object.__setattr__: a plain attribute, outside Keras' tracking.
            object.__setattr__(self, "_deferred_views", views)
        elif views.deferred:
            dataset = views.apply_in_tf_data(dataset)
        return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    def seeded_preprocess(self, example: dict) -> dict:
        """`preprocess(example)` with its draws seeded by the example's `seed` (or `index`)."""
        example = dict(example)
        seed = example.pop("seed", None)
        if seed is None and "index" in example:
            seed = example_seed(self.seed, example["index"])
        if seed is None:
            return self.preprocess(example)
        with seeded(seed):
            return self.preprocess(example)

    # ------------------------------------------------- helpers for subclasses
    @staticmethod
    def classification_loss(labels, logits):
        """Mean sparse softmax cross-entropy."""
        return tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=tf.cast(labels, tf.int32), logits=tf.cast(logits, tf.float32)
            )
        )

    @staticmethod
    def accuracy(labels, logits):
        """Fraction of rows whose arg-max equals the label."""
        predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return tf.reduce_mean(tf.cast(tf.equal(predicted, tf.cast(labels, tf.int32)), tf.float32))
