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

`train_step` is written once, here: it checks what `compute_pretext_loss`
returned, adds the backbone's regularisation losses, divides by the replica
count (gradients are SUM-reduced across replicas), applies loss scaling for
mixed precision, then runs `after_update` and returns the metrics. The same
step serves `Method.fit` on one device and the loop of `keras_ssl.training`
under any `tf.distribute` strategy.

State that is not trained by gradients (a momentum network, a queue, a
memory bank, a centre) is updated in `after_update`, never in
`compute_pretext_loss`: training also calls `compute_pretext_loss` once with
`training=False` to create the variables, and that call must change nothing.
The toolkit for such methods: `momentum_copy` (an EMA target network kept out
of the optimizer), `save_for_update`, `training_progress`, and the modules
`keras_ssl.cross_replica`, `keras_ssl.heads`, `keras_ssl.views`,
`keras_ssl.schedules` (docs/writing_a_method.md). State derived from a
pass over the whole training split (DeepCluster's pseudo-labels) is updated
in `before_epoch`, which training runs between steps at each epoch's start.

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

import threading

import keras
import tensorflow as tf

from keras_ssl import cross_replica
from keras_ssl.augment import build_augmentation
from keras_ssl.augment.deferred import DeferredViews
from keras_ssl.random import example_seed, seeded


class PretextOutputError(TypeError):
    """`compute_pretext_loss` returned something other than `(scalar loss, {name: scalar})`."""


def check_pretext_outputs(method, outputs):
    """Returns `(loss, metrics)` from `outputs` after checking their form and static shapes.

    Args:
      method: The method whose `compute_pretext_loss` returned `outputs`.
      outputs: What it returned.

    Returns:
      `(loss, metrics)`.

    Raises:
      PretextOutputError: naming the method, `compute_pretext_loss` and the fix.
    """
    where = f"{type(method).__name__}.compute_pretext_loss"
    if not isinstance(outputs, (tuple, list)) or len(outputs) != 2:
        got = type(outputs).__name__ if not isinstance(outputs, (tuple, list)) else (
            f"a sequence of {len(outputs)}")
        raise PretextOutputError(
            f"{where} must return (loss, metrics): a scalar loss and a dict of scalar "
            f"metrics; it returned {got}. Return e.g. `loss, {{}}` when there are no metrics."
        )
    loss, metrics = outputs
    shape = getattr(loss, "shape", None)
    if shape is None or shape.rank != 0:
        raise PretextOutputError(
            f"{where} returned a loss of shape {shape}; it must be a scalar, the mean over "
            f"this replica's examples (wrap it in tf.reduce_mean)."
        )
    if not isinstance(metrics, dict):
        raise PretextOutputError(
            f"{where} returned metrics of type {type(metrics).__name__}; they must be a dict "
            f"{{name: scalar tensor}} (an empty dict for none)."
        )
    for name, value in metrics.items():
        shape = getattr(value, "shape", None)
        if shape is None or shape.rank != 0:
            raise PretextOutputError(
                f"{where} returned metric {name!r} of shape {shape}; metrics must be scalars "
                f"(reduce it with tf.reduce_mean)."
            )
    return loss, metrics


class BackboneMismatchError(ValueError):
    """A method was given a backbone other than its `required_backbone`."""


def check_required_backbone(method_cls, backbone) -> None:
    """Refuses `backbone` unless its spec has every value of `method_cls.required_backbone`.

    Raises:
      BackboneMismatchError: one line naming the method, what it needs, what
        it got and the gin binding that fixes it.
    """
    from keras_ssl.backbones import backbone_spec

    required = method_cls.required_backbone or {}
    spec = backbone_spec(backbone)
    wrong = {key: value for key, value in required.items() if spec.get(key) != value}
    if not wrong:
        return
    name = getattr(method_cls, "registry_name", None) or method_cls.__name__
    family = required.get("family", spec.get("family"))
    fixes = [f"keras_ssl.build_method.backbone = '{family}'"] if "family" in wrong else []
    fixes += [f"{family}.{key} = {value!r}" for key, value in wrong.items() if key != "family"]
    got = ", ".join(f"{key}={spec.get(key)!r}" for key in wrong)
    raise BackboneMismatchError(
        f"{name} needs a backbone with {', '.join(f'{k}={v!r}' for k, v in required.items())}; "
        f"{backbone.name!r} has {got}. Bind {' and '.join(fixes)}.")


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
      train_steps: The run's length (set by training; None when unknown),
        which `training_progress` and the momentum schedules follow.
      supports_mixed_precision: False in a subclass that cannot train under a
        mixed float16/bfloat16 policy; training then refuses such a policy.
      required_backbone: None (any backbone), or the backbone spec values the
        method needs, e.g. `{"family": "vit", "mask_token": True}` for a
        method that masks patch tokens; the constructor refuses any other
        backbone in one line naming the binding, and `keras_ssl.testing`
        builds its tiny backbone to match.
    """

    supports_mixed_precision = True
    required_backbone: dict | None = None
    #: Set by training (`keras_ssl.train.augment_on_device`): `make_dataset`
    #: leaves the views un-augmented, with their parameters, and `train_step`
    #: applies them to the batch on the device (`keras_ssl.augment.deferred`).
    augment_on_device = False

    def __init__(self, backbone: keras.Model, augmentation="none", **kwargs):
        super().__init__(**kwargs)
        check_required_backbone(type(self), backbone)
        self.seed = 0
        self.train_steps = None
        # (source, copy) pairs of `momentum_copy`, kept off Keras' tracking so the
        # checkpoint layout is the attributes' own.
        object.__setattr__(self, "_momentum_pairs", [])
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

    def after_update(self, saved: dict) -> None:
        """Runs in each replica's train step right after `apply_gradients` (override).

        Update state that gradients do not train here: move a momentum
        network (`update_momentum_copies`), enqueue keys, write a memory
        bank or a centre (with `keras_ssl.cross_replica`, whose updates are
        the same on every replica). It does not run at build time.

        Args:
          saved: The tensors this replica's `compute_pretext_loss` passed to
            `save_for_update` in this step (empty if none).
        """
        del saved

    def before_epoch(self, epoch: int, examples: tf.data.Dataset) -> None:
        """Runs between training steps before each epoch, for state derived from the whole split (override).

        The place for work that needs a pass over every training example, such
        as DeepCluster's clustering of the features of the split into
        pseudo-labels. Training (`keras_ssl.training.MethodTrainer`) calls it
        in cross-replica context, inside the strategy's scope, right before
        step `s` when `s == 0` or when the batch of step `s` starts in a new
        epoch (`s * B // N > (s - 1) * B // N`, B the global batch, N the
        split's size), cutting a loop of steps there; so when it runs depends
        on the step only, not on `steps_per_loop` or on where a run was
        resumed. Per-replica work inside it goes through `strategy.run`
        (`keras_ssl.clustering.dataset_features` computes a function of every
        example on all replicas and gathers the result).

        Keep what it derives in variables: they are checkpointed, and a run
        resumed mid-epoch does not call it again but continues from the
        restored values, while one resumed at an epoch's first step calls it as
        the uninterrupted run did. Assign them in a way that is the same on
        every replica (`keras_ssl.cross_replica.assign` from identical values)
        and seed any draw from `(self.seed, epoch)`. Not called by
        `Method.fit` or at build time; the default does nothing and costs
        nothing.

        Args:
          epoch: The epoch about to start (0 before the first step).
          examples: The training split's decoded examples
            (`{"image", "label", "index"}`) in stored order, neither
            augmented nor batched: the dataset `adapt` got.
        """
        del epoch, examples

    @property
    def has_epoch_hook(self) -> bool:
        """Whether this method overrides `before_epoch` (training calls it only then)."""
        return type(self).before_epoch is not Method.before_epoch

    def check_training_setup(self, global_batch_size: int, image_size: int | None) -> None:
        """Refuses settings the method cannot train with, before a run starts (override).

        Raise a `ValueError` that names the setting and the fix, e.g. a batch
        too small for batch statistics or crops larger than the image.

        Args:
          global_batch_size: Images per step over all replicas.
          image_size: The square size images are resized to (None: as stored).
        """
        del global_batch_size, image_size

    @classmethod
    def tiny_settings(cls) -> dict:
        """Constructor arguments that make the method cheap at `keras_ssl.testing`'s tiny shapes.

        `keras_ssl.testing.check_method` builds the method with them on its
        tiny ResNet (`TINY_BACKBONE`), 16-px images (`TINY_IMAGE_SIZE`), batches
        of `TINY_BATCH_SIZE` and `TINY_NUM_EXAMPLES` examples. Override to
        narrow wide heads, size a queue or bank to those examples, fit a patch
        grid in the images, or turn off dropout so a few steps show the loss
        falling. Default: none.

        Example:

        >>> class MyMethod(Method):                           # doctest: +SKIP
        ...     @classmethod
        ...     def tiny_settings(cls):
        ...         return {"projection_dim": 16}
        """
        return {}

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

    def checked_pretext_loss(self, batch: dict, training: bool):
        """`compute_pretext_loss(batch, training)`, its outputs' form and shapes checked."""
        return check_pretext_outputs(self, self.compute_pretext_loss(batch, training=training))

    # ------------------------------------------- toolkit for method authors
    def momentum_copy(self, network: keras.Model) -> keras.Model:
        """A copy of `network` (same weights) that follows it by an exponential moving average.

        The copy is left out of `trainable_variables` (so the optimizer and
        weight decay never touch it) but stays `trainable`, so called with
        `training=True` its batch norm normalises with the batch's
        statistics, as BYOL's target and MoCo's key encoder need (a
        non-trainable Keras layer would run its batch norm in inference
        mode). Assign it to an attribute so checkpoints and exports track it,
        and call `update_momentum_copies` from `after_update`.

        Args:
          network: A functional or Sequential model owned by this method.

        Returns:
          The copy.

        Example:

        >>> self.target_backbone = self.momentum_copy(self.backbone)   # doctest: +SKIP
        """
        copy = keras.models.clone_model(network)
        copy.set_weights(network.get_weights())
        # A backbone's end-point names and spec (what `encode_tokens` reads)
        # are plain attributes, which cloning does not carry.
        for attribute in ("endpoint_names", "_spec_items"):
            if hasattr(network, attribute):
                setattr(copy, attribute, getattr(network, attribute))
        self._momentum_pairs.append((network, copy))
        return copy

    def update_momentum_copies(self, momentum) -> None:
        """`copy <- momentum * copy + (1 - momentum) * network` for every `momentum_copy`.

        Only the network's trained weights are averaged; a copy's batch-norm
        statistics are its own. Safe under any strategy (`cross_replica.ema_update`).

        Args:
          momentum: A float or scalar tensor, e.g. `schedules.cosine_momentum(...)`.
        """
        targets, sources = [], []
        for network, copy in self._momentum_pairs:
            for source, target in zip(network.weights, copy.weights):
                if source.trainable:
                    sources.append(source)
                    targets.append(target)
        if targets:
            cross_replica.ema_update(targets, sources, momentum)

    def _momentum_copy_ids(self) -> set:
        return {id(v) for _, copy in self._momentum_pairs for v in copy.weights}

    @property
    def trainable_weights(self):
        """The weights the optimizer trains: all trainable ones but those of momentum copies."""
        excluded = self._momentum_copy_ids()
        weights = super().trainable_weights
        return [v for v in weights if id(v) not in excluded] if excluded else weights

    @property
    def trainable_variables(self):
        return self.trainable_weights

    @property
    def non_trainable_weights(self):
        trained = {id(v) for v in self.trainable_weights}
        return [v for v in self.weights if id(v) not in trained]

    @property
    def non_trainable_variables(self):
        trained = {id(v) for v in self.trainable_weights}
        return [v for v in self.variables if id(v) not in trained]

    def save_for_update(self, **tensors) -> None:
        """Keeps tensors of this step (keys, indices, embeddings) for `after_update`.

        Call it from `compute_pretext_loss`. Each replica keeps its own:
        MirroredStrategy runs replicas in separate Python threads.
        """
        if "_saved_local" not in self.__dict__:
            object.__setattr__(self, "_saved_local", threading.local())
        self._saved_local.tensors = tensors

    def _take_saved(self) -> dict:
        local = self.__dict__.get("_saved_local")
        tensors = getattr(local, "tensors", None) or {}
        if local is not None:
            local.tensors = {}
        return tensors

    def training_progress(self) -> tf.Tensor:
        """The fraction of the run done, `step / train_steps` in [0, 1] (0 when unknown).

        The step is the optimizer's, so it is the same on every replica and
        after a resume.
        """
        optimizer = getattr(self, "optimizer", None)
        if optimizer is None or not self.train_steps:
            return tf.zeros((), tf.float32)
        step = tf.cast(optimizer.iterations, tf.float32)
        return tf.clip_by_value(step / float(self.train_steps), 0.0, 1.0)

    def augment_batch(self, batch: dict) -> dict:
        """Applies augmentation parameters carried in `batch` (on-device augmentation).

        A no-op for batches whose views tf.data already augmented.
        """
        views = getattr(self, "_deferred_views", None)
        return views.apply(batch) if views is not None else batch

    def train_step(self, data):
        data = self.augment_batch(data)
        with tf.GradientTape() as tape:
            loss, metrics = self.checked_pretext_loss(data, training=True)
            regularization = tf.add_n(self.losses) if self.losses else tf.zeros(())
            total = loss + regularization
            # Gradients are SUM-reduced across replicas: divide so the update
            # is that of the mean over the global batch.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = self.optimizer.scale_loss(total / replicas)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)
        clip = getattr(getattr(self.optimizer, "inner_optimizer", self.optimizer),
                       "clip_global_norm", None)
        if clip:
            # The gradients carry a loss scale's factor (mixed_float16): so does the bound.
            bound = self.optimizer.scale_loss(tf.constant(clip, tf.float32))
            gradients = cross_replica.clip_by_global_norm(gradients, bound)
        self.optimizer.apply_gradients(zip(gradients, variables))
        self.after_update(self._take_saved())
        return {"loss": loss, "regularization_loss": regularization, **metrics}

    def build_from_batch(self, batch: dict):
        """Creates every variable by running the task once on `batch`; returns `(loss, metrics)`.

        Subclassed models get no variables from `build(shape)`; call this
        (inside the strategy scope) before building the optimizer. It runs
        `compute_pretext_loss(training=False)` and checks what it returns;
        nothing is kept for `after_update`.
        """
        outputs = self.checked_pretext_loss(batch, training=False)
        self._take_saved()
        return outputs

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
        (`keras_ssl.augment.deferred.DeferredViews`): in tf.data, or on the
        device in `train_step` when `augment_on_device` is set.

        Returns:
          A prefetched dataset of batched task inputs.
        """
        views = DeferredViews(
            self.seeded_preprocess, getattr(self, "registry_name", type(self).__name__),
            on_device=self.augment_on_device)
        dataset = images.map(views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if self.augment_on_device:
            views.check_on_device()
            # object.__setattr__: a plain attribute, outside Keras' tracking.
            object.__setattr__(self, "_deferred_views", views)
        elif views.deferred:
            return views.apply_in_tf_data(dataset, batch_size).prefetch(tf.data.AUTOTUNE)
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
