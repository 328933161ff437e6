"""Fine-tuning a SavedModel at a label budget (for utility).

The SavedModel contract traces ``model(images, training=True)`` and
``model.end_points(images, training=True)`` and exposes
``model.trainable_variables``, so a client fine-tunes it with a
`tf.GradientTape`. Two tasks, each with a zero-initialised linear head and SGD
with momentum on head and backbone together, plain TensorFlow (no keras):
classification (`FineTuner`: a linear classifier on the pre-logits, scored by
accuracy) and semantic segmentation (`SegmentationFineTuner`: a per-pixel
linear classifier on a feature map, upsampled to the image, scored by mean
IoU). The backbone is reset to its exported weights before every budget.

Layer-wise learning-rate decay (Bao et al.'s BEiT, used to fine-tune ViTs):
with ``layer_decay = d < 1`` a backbone variable learns at ``d ** k`` times
the head's rate, where k counts the end-points from the one it first feeds
(metadata ``trainable_variable_endpoints``) up to the one under the head. On
a 12-block ViT the final norm learns at the full rate, block 12 at d, and
block 1 with the patch embedding at d ** 12.
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from keras_ssl_eval.contract import REPRESENTATION_SIGNATURE
from keras_ssl_eval.reading.adapters import open_trainable
from keras_ssl_eval.settings import UtilitySettings

__all__ = ["FineTuner", "SegmentationFineTuner", "finetune_curve", "layer_decay_scales",
           "load_arrays", "mean_iou", "subset_indices"]

_log = logging.getLogger(__name__)


def subset_indices(labels, n: int, seed: int) -> np.ndarray:
    """Returns `n` seeded indices, at least one per class when ``n >= classes``.

    Args:
        labels: ``[N]`` labels.
        n: Budget (at most N).
        seed: Seed.

    Returns:
        Sorted int64 indices.
    """
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    first = ([rng.choice(np.flatnonzero(labels == c)) for c in classes]
             if n >= len(classes) else [])
    rest = rng.permutation(np.setdiff1d(np.arange(len(labels)), first))[:n - len(first)]
    return np.sort(np.concatenate([np.asarray(first, np.int64), rest]).astype(np.int64))


def layer_decay_scales(metadata: dict, path: str, decay: float,
                       head_endpoint: str = "pre_logits") -> list[float]:
    """Layer-wise learning-rate factors of a model's trainable variables, from its metadata.

    Args:
        metadata: The model's metadata (`read_metadata`).
        path: The model's directory, for the message.
        decay: d in (0, 1].
        head_endpoint: The end-point under the head.

    Returns:
        One factor per trainable variable: ``decay ** k``, k the end-points from
        the variable's first (``trainable_variable_endpoints``) to
        `head_endpoint` (0 at or above it).

    Raises:
        ValueError: the metadata does not place the variables, or lacks `head_endpoint`.

    Example:
        >>> layer_decay_scales({"endpoints": ["block1", "block2", "pre_logits"],
        ...                     "trainable_variable_endpoints": ["block1", "pre_logits"]},
        ...                    "/models/vit", 0.5)
        [0.25, 1.0]
    """
    placed = metadata.get("trainable_variable_endpoints")
    order = list(metadata.get("endpoints") or [])
    if placed is None and "adapter" in metadata:
        raise ValueError(
            f"Model {path!r} is read through an adapter (--model), which does not say which "
            f"end-point each trainable variable feeds, so layer-wise decay cannot place them: "
            f"fine-tune it with finetune_layer_decay = 1.")
    if placed is None or head_endpoint not in order:
        raise ValueError(
            f"SavedModel {path!r} does not say which end-point each trainable variable feeds "
            f"(metadata trainable_variable_endpoints, contract 1.1), so layer-wise decay cannot "
            f"place them: re-export it with keras-ssl-export, or fine-tune with "
            f"finetune_layer_decay = 1.")
    top = order.index(head_endpoint)
    # A variable no end-point reads gets no gradient: its factor does not matter.
    return [decay ** max(top - order.index(name), 0) if name in order else 1.0
            for name in placed]


class FineTuner:
    """Fine-tunes one SavedModel with a linear classifier on the pre-logits.

    Args:
        path: The SavedModel directory (contract: callable with ``training``,
            with ``trainable_variables``), or any model `keras_ssl_eval.reading.adapters`
            opens: a `ModelSource`, a ``.keras`` file or a keras-hub preset.
        num_classes: Classes of the head.
        steps: Optimisation steps per budget.
        batch_size: Images per step (at most the budget).
        learning_rate: SGD learning rate.
        momentum: SGD momentum.
        layer_decay: Layer-wise learning-rate decay d in (0, 1] (1: one rate for all;
            below 1 it needs the metadata's ``trainable_variable_endpoints``).
        seed: Seed of the head, batches and subsets.

    Example:
        >>> FineTuner("/models/rotation", 10, steps=200).accuracy(x, y, xt, yt)
        0.53
    """

    metric = "accuracy"

    def __init__(self, path: str, num_classes: int, *,
                 steps: int = UtilitySettings.finetune_steps,
                 batch_size: int = UtilitySettings.finetune_batch_size,
                 learning_rate: float = UtilitySettings.finetune_learning_rate,
                 momentum: float = 0.9,
                 layer_decay: float = UtilitySettings.finetune_layer_decay, seed: int = 0):
        if not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"layer_decay = {layer_decay} is outside (0, 1]; 1 turns it off.")
        # A contract SavedModel loads as before; any other model through its adapter.
        self.metadata, self.model = open_trainable(path)
        self.path = getattr(path, "path", path)
        self.backbone_vars = list(self.model.trainable_variables)
        # TF-Hub's convention: a reusable model lists penalties its user adds to the loss
        # (none in a contract export; a Keras model's weight regularizers through its adapter).
        self.regularization_losses = list(getattr(self.model, "regularization_losses", None)
                                          or [])
        self._initial = [v.numpy() for v in self.model.variables]
        self.num_classes, self.steps, self.batch_size = num_classes, steps, batch_size
        self.learning_rate, self.momentum, self.seed = learning_rate, momentum, seed
        self.layer_decay = layer_decay

    head_endpoint = "pre_logits"  # The end-point under the head.

    def rate_scales(self) -> list[float]:
        """Each backbone variable's learning rate relative to the head's (`layer_decay_scales`)."""
        if self.layer_decay == 1.0:
            return [1.0] * len(self.backbone_vars)
        scales = layer_decay_scales(self.metadata, self.path, self.layer_decay, self.head_endpoint)
        if len(scales) != len(self.backbone_vars):
            raise ValueError(f"SavedModel {self.path!r} places {len(scales)} trainable variables "
                             f"in its metadata but has {len(self.backbone_vars)}: re-export it.")
        return scales

    # The task: features of the backbone, a zero-initialised linear head on them, a loss.
    def _features(self, images, training):
        return self.model(images, training=training)

    def _logits(self, features, images):
        del images
        return features @ self.kernel + self.bias

    def _fit(self, images, targets):
        """Resets the backbone to its exported weights and fine-tunes it with a new head."""
        for var, value in zip(self.model.variables, self._initial):
            var.assign(value)
        dim = int(self._features(tf.constant(images[:1]), False).shape[-1])
        self.kernel = tf.Variable(tf.zeros([dim, self.num_classes]))
        self.bias = tf.Variable(tf.zeros([self.num_classes]))
        variables = self.backbone_vars + [self.kernel, self.bias]
        rates = [self.learning_rate * scale for scale in self.rate_scales() + [1.0, 1.0]]
        velocity = [tf.Variable(tf.zeros_like(v)) for v in variables]

        @tf.function
        def step(batch_images, batch_targets):
            with tf.GradientTape() as tape:
                logits = self._logits(self._features(batch_images, True), batch_images)
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(batch_targets, logits))
                if self.regularization_losses:
                    loss += tf.add_n([penalty() for penalty in self.regularization_losses])
            grads = tape.gradient(loss, variables)
            for var, vel, grad, rate in zip(variables, velocity, grads, rates):
                if grad is not None:
                    vel.assign(self.momentum * vel + grad)
                    var.assign_sub(rate * vel)
            return loss

        rng = np.random.default_rng(self.seed)
        batch = min(self.batch_size, len(images))
        for _ in range(self.steps):
            idx = rng.choice(len(images), batch, replace=False)
            step(tf.constant(images[idx]), tf.constant(targets[idx].astype(np.int32)))

    def _predict(self, images, batch_size):
        predictions = []
        for start in range(0, len(images), batch_size):
            chunk = tf.constant(images[start:start + batch_size])
            logits = self._logits(self._features(chunk, False), chunk)
            predictions.append(np.argmax(logits.numpy(), axis=-1))
        return np.concatenate(predictions)

    def score(self, images, targets, test_images, test_targets, *, batch_size: int = 64) -> float:
        """Fine-tunes from the exported weights on (images, targets); returns the test
        score (`metric`)."""
        return self.accuracy(images, targets, test_images, test_targets, batch_size=batch_size)

    def accuracy(self, images, labels, test_images, test_labels, *, batch_size: int = 64) -> float:
        """Fine-tunes from the exported weights on (images, labels); returns test accuracy.

        Args:
            images: float32 ``[n, H, W, 3]`` in [0, 1] at the model's input size.
            labels: ``[n]`` class indices in ``[0, num_classes)``.
            test_images: Test images, same form.
            test_labels: Test class indices.
            batch_size: Images per forward pass at test time.

        Returns:
            Test accuracy in [0, 1].
        """
        self._fit(images, labels)
        predictions = self._predict(test_images, batch_size)
        return float(np.mean(predictions == np.asarray(test_labels)))


def mean_iou(predictions, targets, num_classes: int) -> float:
    """Mean intersection over union of per-pixel classes, over the whole set.

    IoU_c = TP / (TP + FP + FN) from pixel counts summed over every image; the
    mean is over the classes present in the targets or the predictions.

    Args:
        predictions: Integer class maps ``[N, H, W]``.
        targets: Integer class maps, same shape.
        num_classes: Classes (0 .. num_classes - 1).

    Returns:
        The mean IoU in [0, 1].
    """
    predictions = np.asarray(predictions).reshape(-1)
    targets = np.asarray(targets).reshape(-1)
    confusion = np.bincount(targets * num_classes + predictions,
                            minlength=num_classes**2).reshape(num_classes, num_classes)
    true_positive = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    present = union > 0
    return float(np.mean(true_positive[present] / union[present]))


class SegmentationFineTuner(FineTuner):
    """Fine-tunes one SavedModel for semantic segmentation (the dense utility task).

    A zero-initialised 1x1 convolution (a per-pixel linear classifier) on the
    end-point `layer`; its logits are resized bilinearly to the image size and
    trained with per-pixel cross-entropy, backbone and head together. The
    score is the mean IoU. The end-point comes from the SavedModel's
    ``end_points(images, training)`` (batch statistics in training); a model
    without it is fine-tuned through its ``representation`` signature, where
    batch norm keeps its exported statistics (a warning says so).

    Args:
        path: The SavedModel directory.
        num_classes: Pixel classes (background included).
        layer: A spatial end-point (``[batch, h, w, channels]``).
        **kwargs: As for `FineTuner`.

    Example:
        >>> SegmentationFineTuner("/models/rotation", 13, "block3").score(x, m, xt, mt)
        0.41
    """

    metric = "mean_iou"

    def __init__(self, path: str, num_classes: int, layer: str, **kwargs):
        super().__init__(path, num_classes, **kwargs)
        self.layer = self.head_endpoint = layer
        self._end_points = getattr(self.model, "end_points", None)
        if self._end_points is None:
            if REPRESENTATION_SIGNATURE not in self.model.signatures:
                raise ValueError(f"SavedModel {path!r} has neither end_points nor the "
                                 f"representation signature; see docs/savedmodel_contract.md.")
            _log.warning("%s has no end_points function: fine-tuning through its "
                         "representation signature, with batch norm frozen at its exported "
                         "statistics.", path)

    def _features(self, images, training):
        if self._end_points is not None:
            outputs = self._end_points(images, training=training)
        else:
            outputs = self.model.signatures[REPRESENTATION_SIGNATURE](images=images)
        if self.layer not in outputs:
            raise ValueError(f"End-point {self.layer!r} is not in {self.path!r}; it has "
                             f"{sorted(outputs)}.")
        features = outputs[self.layer]
        if features.shape.rank != 4:
            raise ValueError(f"End-point {self.layer!r} has shape {features.shape}; the "
                             f"segmentation head needs a feature map [batch, h, w, channels].")
        return features

    def _logits(self, features, images):
        logits = tf.einsum("bhwc,ck->bhwk", features, self.kernel) + self.bias
        return tf.image.resize(logits, tf.shape(images)[1:3], method="bilinear")

    def score(self, images, masks, test_images, test_masks, *, batch_size: int = 64) -> float:
        """Fine-tunes from the exported weights on (images, masks); returns the test mean IoU.

        Args:
            images: float32 ``[n, H, W, 3]`` in [0, 1].
            masks: Integer class maps ``[n, H, W]`` in ``[0, num_classes)``.
            test_images, test_masks: The test set, same form.
            batch_size: Images per forward pass at test time.

        Returns:
            The mean IoU in [0, 1].
        """
        self._fit(images, masks)
        predictions = self._predict(test_images, batch_size)
        return mean_iou(predictions, np.asarray(test_masks), self.num_classes)


def load_arrays(dataset: str, split: str, image_size, *, data_dir=None, limit=None, seed=0,
                segmentation: bool = False):
    """Reads a split into memory: float32 images ``[N, H, W, 3]`` and int64 labels.

    Args:
        dataset: A `keras_ssl_eval.reading.data.load_images` name.
        split: The split.
        image_size: ``(h, w)`` to resize to.
        data_dir: TFDS data directory.
        limit: At most this many images (seeded subset).
        seed: Seed of the subset.
        segmentation: Also read the class maps (see `load_images`).

    Returns:
        ``(images, labels)``, or ``(images, labels, class_maps)`` with
        `segmentation` (int64 ``[N, H, W]``).
    """
    from keras_ssl_eval.reading.data import load_images  # pylint: disable=import-outside-toplevel

    ds, _ = load_images(dataset, split, data_dir=data_dir, image_size=image_size,
                        shuffle_files=limit is not None, seed=seed, segmentation=segmentation)
    if limit is not None:
        ds = ds.take(limit)
    fields = ("image", "label", "segmentation") if segmentation else ("image", "label")
    arrays = {field: [] for field in fields}
    for example in ds.batch(256).as_numpy_iterator():
        for field in fields:
            arrays[field].append(example[field])
    if not arrays["image"]:
        raise ValueError(f"Dataset {dataset!r}, split {split!r} yielded no images.")
    images = np.concatenate(arrays["image"]).astype(np.float32)
    return (images,) + tuple(np.concatenate(arrays[field]) for field in fields[1:])


def finetune_curve(path: str, images, labels, test_images, test_labels, budgets, *,
                   seed: int = 0, **tuning) -> list[float]:
    """Test accuracies of `path` fine-tuned for classification with each label budget.

    Args:
        path: SavedModel directory.
        images, labels: The training pool (labels >= 0).
        test_images, test_labels: The test set.
        budgets: Label budgets n (each at most the pool size).
        seed: Seed of the subsets (the same n images for every model) and the tuner.
        **tuning: `FineTuner` settings (``steps``, ``batch_size``, ``learning_rate``,
            ``momentum``, ``layer_decay``).

    Returns:
        One accuracy per budget.
    """
    classes, targets = np.unique(labels, return_inverse=True)
    test_targets = np.searchsorted(classes, test_labels)
    test_targets[~np.isin(test_labels, classes)] = -1  # Unseen classes: always wrong.
    tuner = FineTuner(path, len(classes), seed=seed, **tuning)
    return [tuner.score(images[idx], targets[idx], test_images, test_targets)
            for idx in (subset_indices(labels, int(n), seed) for n in budgets)]


def segmentation_curve(path: str, images, labels, class_maps, test_images, test_class_maps,
                       budgets, *, layer: str, num_classes: int, seed: int = 0,
                       **tuning) -> list[float]:
    """Test mean IoUs of `path` fine-tuned for segmentation with each budget of labelled images.

    Args:
        path: SavedModel directory.
        images, labels, class_maps: The training pool; `labels` (image classes)
            only choose the subsets, as for classification.
        test_images, test_class_maps: The test set.
        budgets: Numbers of labelled images n.
        layer: The end-point under the head.
        num_classes: Pixel classes, background included.
        seed: Seed of the subsets (the same n images for every model) and the tuner.
        **tuning: `FineTuner` settings (``steps``, ``batch_size``, ``learning_rate``,
            ``momentum``, ``layer_decay``).

    Returns:
        One mean IoU per budget.
    """
    tuner = SegmentationFineTuner(path, num_classes, layer, seed=seed, **tuning)
    return [tuner.score(images[idx], class_maps[idx], test_images, test_class_maps)
            for idx in (subset_indices(labels, int(n), seed) for n in budgets)]


def default_dense_layer(endpoint_shapes: dict, input_height: int) -> str:
    """The deepest spatial end-point at least 1/4 of the input's height (block3 of a
    small-stem ResNet at 32 px), else the highest-resolution one.

    Args:
        endpoint_shapes: Per-image shapes ``{name: [h, w, c] or [d]}`` in network order.
        input_height: The input's height.

    Returns:
        An end-point name.
    """
    spatial = [(name, shape) for name, shape in endpoint_shapes.items() if len(shape) == 3]
    if not spatial:
        raise ValueError("The model has no spatial end-point for a segmentation head.")
    large = [name for name, shape in spatial if shape[0] * 4 >= input_height]
    return large[-1] if large else max(spatial, key=lambda item: item[1][0])[0]
