"""The online kNN monitor: a cheap accuracy of the representation while it trains.

Every `every_steps` steps, the backbone's pre-logits of a fixed subset of a
labelled held-out split are compared leave-one-out: each image is
classified by a similarity-weighted vote of its k nearest neighbours (cosine
similarity, weights `exp(s / tau)`, k = 200, tau = 0.1 as in the kNN
protocol of `keras-ssl-eval`) among the other images of the subset. The
subset is the split's first `num_examples` images in stored order, the same
at every check, on every worker and after a resume, so the figures of one
run are comparable with each other.

Its cost is one forward pass over `num_examples` images and an
`n x n` similarity, bounded by `num_examples`. The forward pass runs in
cross-replica context with the batch norm in inference mode, so it needs no
collective and works unchanged on one device, CPU or GPU replicas and
worker processes (every worker computes it; the chief prints and writes it).

Configure it with gin:

    keras_ssl.knn_monitor.every_steps = 200
    keras_ssl.knn_monitor.split = 'test'          # any labelled split of the training dataset
"""

from __future__ import annotations

import time

import gin
import numpy as np
import tensorflow as tf
from keras_ssl_eval.settings import KnnSettings

from keras_ssl.datasets import load_dataset


class MonitorConfigError(ValueError):
    """The monitor's split has no labels, or its settings cannot work."""


@gin.configurable(module="keras_ssl")
def knn_monitor(
    every_steps: int | None = None,
    split: str = "test",
    dataset: str | None = None,
    num_examples: int = 1000,
    k: int = KnnSettings.k,
    temperature: float = KnnSettings.temperature,
    endpoint: str = "pre_logits",
    batch_size: int = 250,
):
    """The monitor's settings (a dict), or None when it is off.

    Args:
      every_steps: Steps between checks (a multiple of
        `keras_ssl.train.steps_per_loop`); None turns the monitor off.
      split: The labelled held-out split (TFDS split, a folder's test split,
        or `test` of synthetic_shapes).
      dataset: Its dataset; None: the training dataset.
      num_examples: Size of the fixed subset (bounds the cost).
      k: Neighbours voting (default: keras-ssl-eval's, `KnnSettings.k`).
      temperature: tau of the vote weights (default `KnnSettings.temperature`).
      endpoint: The backbone end-point compared.
      batch_size: Images per forward pass.

    Returns:
      A dict of these settings, or None.
    """
    if every_steps is None:
        return None
    return dict(every_steps=every_steps, split=split, dataset=dataset, num_examples=num_examples,
                k=k, temperature=temperature, endpoint=endpoint, batch_size=batch_size)


def knn_accuracy(features: np.ndarray, labels: np.ndarray, k: int, temperature: float) -> float:
    """Leave-one-out accuracy of a similarity-weighted kNN vote among `features`' rows.

    Args:
      features: `[n, d]` features (l2-normalised here).
      labels: `[n]` integer classes.
      k: Neighbours voting (at most n - 1 are used).
      temperature: tau; a neighbour's vote weighs `exp(cosine / tau)`.

    Returns:
      The fraction of rows whose vote gives their own label.
    """
    features = tf.math.l2_normalize(tf.constant(features, tf.float32), axis=-1)
    labels = np.asarray(labels, np.int64)
    n = features.shape[0]
    if n < 2:
        raise MonitorConfigError("The kNN monitor needs at least 2 labelled images.")
    similarity = tf.matmul(features, features, transpose_b=True) - 1e9 * tf.eye(n)
    top, index = tf.math.top_k(similarity, k=min(k, n - 1))
    num_classes = int(labels.max()) + 1
    votes = tf.one_hot(tf.gather(tf.constant(labels), index), num_classes)
    scores = tf.reduce_sum(votes * tf.exp(top / temperature)[..., None], axis=1)
    predicted = tf.argmax(scores, axis=-1).numpy()
    return float(np.mean(predicted == labels))


class KnnMonitor:
    """Computes the monitor's accuracy for a method's backbone.

    Args:
      settings: The dict of `knn_monitor`.
      dataset: The training dataset's name (used when the settings name none).
      data_dir: Its TFDS data directory.
      image_size: The training image size.
      seed: The run's seed (passed to the loader; the subset is in stored order).

    Raises:
      MonitorConfigError: the split has no labels.
    """

    def __init__(self, settings: dict, dataset: str, data_dir, image_size, seed: int = 0):
        self.settings = settings
        name = settings["dataset"] or dataset
        images, info = load_dataset(name, settings["split"], data_dir=data_dir,
                                    image_size=image_size, seed=seed)
        if not info.num_classes:
            raise MonitorConfigError(
                f"keras_ssl.knn_monitor.split = {settings['split']!r} of {name!r} has no labels; "
                f"choose a labelled split (e.g. 'test') or turn the monitor off "
                f"(keras_ssl.knn_monitor.every_steps = None)."
            )
        subset = images.take(settings["num_examples"]).map(lambda e: (e["image"], e["label"]))
        self._batches = subset.batch(settings["batch_size"])
        labels = np.concatenate([y.numpy() for _, y in self._batches])
        if labels.size == 0 or labels.min() < 0:
            raise MonitorConfigError(
                f"keras_ssl.knn_monitor.split = {settings['split']!r} of {name!r} has unlabelled "
                f"images (label -1); choose a labelled split or turn the monitor off "
                f"(keras_ssl.knn_monitor.every_steps = None)."
            )
        self.labels = labels
        self.description = f"{labels.size} {name} {settings['split']} images"
        self._extract = None

    def due(self, step: int) -> bool:
        """Whether a check is due after `step`."""
        return step % self.settings["every_steps"] == 0

    def __call__(self, backbone) -> dict:
        """`{"knn_accuracy": ..., "knn_seconds": ...}` of `backbone` now."""
        start = time.perf_counter()
        if self._extract is None:
            endpoint = self.settings["endpoint"]
            self._extract = tf.function(lambda x: backbone(x, training=False)[endpoint])
        features = np.concatenate([
            tf.reshape(self._extract(images), [tf.shape(images)[0], -1]).numpy()
            for images, _ in self._batches
        ])
        accuracy = knn_accuracy(features, self.labels, self.settings["k"],
                                self.settings["temperature"])
        return {"knn_accuracy": accuracy, "knn_seconds": time.perf_counter() - start}
