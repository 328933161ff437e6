"""Fine-tuning a SavedModel with a linear head at a label budget (for utility).

The SavedModel contract traces ``model(images, training=True)`` and exposes
``model.trainable_variables``, so a client fine-tunes it with a
`tf.GradientTape`. Here: a zero-initialised linear head on the pre-logits,
SGD with momentum on head and backbone together, plain TensorFlow (no keras).
The backbone is reset to its exported weights before every budget.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

__all__ = ["FineTuner", "subset_indices"]


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


class FineTuner:
    """Fine-tunes one SavedModel on labelled images.

    Args:
        path: The SavedModel directory (contract: callable with ``training``,
            with ``trainable_variables``).
        num_classes: Classes of the head.
        steps: Optimisation steps per budget.
        batch_size: Images per step (at most the budget).
        learning_rate: SGD learning rate.
        momentum: SGD momentum.
        seed: Seed of the head, batches and subsets.

    Example:
        >>> FineTuner("/models/rotation", 10, steps=200).accuracy(x, y, xt, yt)
        0.53
    """

    def __init__(self, path: str, num_classes: int, *, steps: int = 100, batch_size: int = 32,
                 learning_rate: float = 0.01, momentum: float = 0.9, seed: int = 0):
        self.model = tf.saved_model.load(path)
        if not hasattr(self.model, "trainable_variables"):
            raise ValueError(f"SavedModel {path!r} has no trainable_variables, so it cannot "
                             f"be fine-tuned (see docs/savedmodel_contract.md).")
        self.backbone_vars = list(self.model.trainable_variables)
        self._initial = [v.numpy() for v in self.model.variables]
        self.num_classes, self.steps, self.batch_size = num_classes, steps, batch_size
        self.learning_rate, self.momentum, self.seed = learning_rate, momentum, seed
        self._step = None

    def _reset(self, dim):
        for var, value in zip(self.model.variables, self._initial):
            var.assign(value)
        self.kernel = tf.Variable(tf.zeros([dim, self.num_classes]))
        self.bias = tf.Variable(tf.zeros([self.num_classes]))
        variables = self.backbone_vars + [self.kernel, self.bias]
        velocity = [tf.Variable(tf.zeros_like(v)) for v in variables]

        @tf.function
        def step(images, labels):
            with tf.GradientTape() as tape:
                logits = self.model(images, training=True) @ self.kernel + self.bias
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
            grads = tape.gradient(loss, variables)
            for var, vel, grad in zip(variables, velocity, grads):
                if grad is not None:
                    vel.assign(self.momentum * vel + grad)
                    var.assign_sub(self.learning_rate * vel)
            return loss

        self._step = step

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
        dim = int(self.model(tf.constant(images[:1]), training=False).shape[-1])
        self._reset(dim)
        rng = np.random.default_rng(self.seed)
        batch = min(self.batch_size, len(images))
        for _ in range(self.steps):
            idx = rng.choice(len(images), batch, replace=False)
            self._step(tf.constant(images[idx]), tf.constant(labels[idx].astype(np.int32)))
        predictions = []
        for start in range(0, len(test_images), batch_size):
            chunk = tf.constant(test_images[start:start + batch_size])
            logits = self.model(chunk, training=False) @ self.kernel + self.bias
            predictions.append(np.argmax(logits.numpy(), axis=1))
        return float(np.mean(np.concatenate(predictions) == np.asarray(test_labels)))


def load_arrays(dataset: str, split: str, image_size, *, data_dir=None, limit=None, seed=0):
    """Reads a split into memory: float32 images ``[N, H, W, 3]`` and int64 labels.

    Args:
        dataset: A `keras_ssl_eval.data.load_images` name.
        split: The split.
        image_size: ``(h, w)`` to resize to.
        data_dir: TFDS data directory.
        limit: At most this many images (seeded subset).
        seed: Seed of the subset.

    Returns:
        ``(images, labels)``.
    """
    from keras_ssl_eval.data import load_images  # pylint: disable=import-outside-toplevel

    ds, _ = load_images(dataset, split, data_dir=data_dir, image_size=image_size,
                        shuffle_files=limit is not None, seed=seed)
    if limit is not None:
        ds = ds.take(limit)
    images, labels = [], []
    for example in ds.batch(256).as_numpy_iterator():
        images.append(example["image"])
        labels.append(example["label"])
    if not images:
        raise ValueError(f"Dataset {dataset!r}, split {split!r} yielded no images.")
    return np.concatenate(images).astype(np.float32), np.concatenate(labels)


def finetune_curve(path: str, images, labels, test_images, test_labels, budgets, *,
                   steps: int = 100, batch_size: int = 32, learning_rate: float = 0.01,
                   seed: int = 0) -> list[float]:
    """Test accuracies of `path` fine-tuned with each label budget.

    Args:
        path: SavedModel directory.
        images, labels: The training pool (labels >= 0).
        test_images, test_labels: The test set.
        budgets: Label budgets n (each at most the pool size).
        steps, batch_size, learning_rate: Fine-tuning settings.
        seed: Seed of the subsets (the same n images for every model).

    Returns:
        One accuracy per budget.
    """
    classes, targets = np.unique(labels, return_inverse=True)
    test_targets = np.searchsorted(classes, test_labels)
    test_targets[~np.isin(test_labels, classes)] = -1  # Unseen classes: always wrong.
    tuner = FineTuner(path, len(classes), steps=steps, batch_size=batch_size,
                      learning_rate=learning_rate, seed=seed)
    accuracies = []
    for n in budgets:
        idx = subset_indices(labels, int(n), seed)
        accuracies.append(tuner.accuracy(images[idx], targets[idx], test_images, test_targets))
    return accuracies
