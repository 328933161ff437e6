"""Clustering in TensorFlow for method authors: features of a whole split, PCA whitening, k-means.

What a clustering method (DeepCluster) needs between training steps, in ops
that run on the accelerator and give the same result on every replica:

- `DatasetFeatures(fn)(examples, num_examples)` (`dataset_features` for one
  pass): `fn(images)` of every
  example of a split, computed by all replicas of the current strategy (each
  its share of every batch) and gathered, in the order of the examples'
  `index`. Every replica (and worker) gets the same `[N, D]` tensor.
- `pca_whitening(features, dim)`: centres, projects onto the `dim` leading
  principal axes and divides each by the square root of its variance, so
  the output's covariance is the identity on the kept axes.
- `kmeans(points, num_clusters, seed)`: Lloyd's iterations from `num_clusters`
  distinct points drawn with a stateless seed; after each update, empty
  clusters are re-seeded by splitting the largest cluster
  (`split_empty_clusters`). Sums over clusters are one-hot matrix products,
  so the result is deterministic on CPU, GPU and TPU.

The same inputs and seed give the same clusters, whatever the device or the
number of replicas, because k-means runs on the gathered features, not per
replica.

Example:

>>> points = tf.random.stateless_normal([100, 8], [0, 1])
>>> centroids, assignments, counts = kmeans(points, 4, seed=[0, 7], iterations=5)
>>> centroids.shape, assignments.shape, int(tf.reduce_sum(counts))
(TensorShape([4, 8]), TensorShape([100]), 100)
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

#: Relative size of the opposite nudges that separate the two halves of a split cluster.
SPLIT_EPSILON = 1.0 / 1024.0


class ClusteringError(ValueError):
    """The split's size or the examples' indices do not match what clustering was told."""


class DatasetFeatures:
    """`fn(images)` of every example of a split, computed over the current strategy's replicas.

    Call it in cross-replica context (outside `strategy.run`, inside the
    strategy's scope; where training calls `Method.before_epoch`). Each
    global batch of `batch_size` images is split over the replicas, each
    replica computes its rows, and the rows are gathered: every replica and
    worker ends with the same tensor. The split is padded to whole global
    batches (the padding is dropped). The traced step is kept between calls
    (one trace per strategy), so keep one instance per use.

    Args:
      fn: `images [b, H, W, 3] -> [b, D]` (e.g. a backbone in inference mode).
      batch_size: Images per global batch (rounded down to a multiple of the
        replica count, at least one per replica).
    """

    def __init__(self, fn, batch_size: int = 256):
        self.fn = fn
        self.batch_size = int(batch_size)
        self._traced = None  # (strategy, step)

    def _step(self, strategy):
        if self._traced is None or self._traced[0] is not strategy:
            def replica_fn(images, index):
                return tf.cast(self.fn(images), tf.float32), index

            @tf.function
            def step(batch):
                features, index = strategy.run(replica_fn, args=batch)
                return strategy.gather(features, axis=0), strategy.gather(index, axis=0)

            self._traced = (strategy, step)
        return self._traced[1]

    def __call__(self, examples: tf.data.Dataset, num_examples: int) -> tf.Tensor:
        """The features `[N, D]` (float32), row i of the example whose `index` is i.

        Args:
          examples: Decoded examples `{"image", "index", ...}` with indices
            0 .. num_examples - 1, each once.
          num_examples: N, the number of examples.

        Raises:
          ClusteringError: the examples are not exactly the indices 0 .. N - 1.
        """
        strategy = tf.distribute.get_strategy()
        replicas = strategy.num_replicas_in_sync
        per_replica = max(1, self.batch_size // replicas)
        global_batch = per_replica * replicas
        # Padding (index -1) to whole global batches; the remainder a batch drops holds
        # padding only, even where the split is not the size it was said to be.
        padding = math.ceil(num_examples / global_batch) * global_batch - num_examples
        pairs = examples.map(lambda e: (e["image"], tf.cast(e["index"], tf.int32)))
        pairs = pairs.concatenate(pairs.take(1).repeat(padding + global_batch - 1).map(
            lambda image, index: (image, tf.constant(-1, tf.int32))))

        def dataset_fn(context):
            data = pairs
            pipelines, pipeline = context.num_input_pipelines, context.input_pipeline_id
            if pipelines > 1:  # each worker takes its replicas' run of rows of every global batch
                rows = global_batch // pipelines
                data = (data.enumerate()
                        .filter(lambda position, _: (position // rows) % pipelines == pipeline)
                        .map(lambda _, pair: pair))
            return data.batch(per_replica, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

        step = self._step(strategy)
        all_features, all_index = [], []
        for batch in strategy.distribute_datasets_from_function(dataset_fn):
            features, index = step(batch)
            all_features.append(features)
            all_index.append(index)
        if all_features:
            features = tf.concat(all_features, axis=0)
            index = tf.concat(all_index, axis=0)
            valid = index >= 0
            features, index = tf.boolean_mask(features, valid), tf.boolean_mask(index, valid)
            order = tf.argsort(index, stable=True)
            sorted_index = tf.gather(index, order).numpy()
        else:
            sorted_index = np.zeros([0], np.int32)
        if sorted_index.shape[0] != num_examples or not np.array_equal(
                sorted_index, np.arange(num_examples)):
            found = (f"{sorted_index.min()} .. {sorted_index.max()}" if sorted_index.size
                     else "none")
            raise ClusteringError(
                f"Clustering was told the split has {num_examples} examples with indices 0 .. "
                f"{num_examples - 1}, but it has {sorted_index.shape[0]} examples (indices "
                f"{found}); bind the method's num_examples to the size of the training split."
            )
        return tf.gather(features, order)


def dataset_features(fn, examples: tf.data.Dataset, num_examples: int, batch_size: int = 256):
    """`DatasetFeatures(fn, batch_size)(examples, num_examples)`: a one-off feature pass.

    Returns:
      float32 `[N, D]`, row i being `fn` of the example whose `index` is i.
    """
    return DatasetFeatures(fn, batch_size)(examples, num_examples)


def pca_whitening(features, dim: int, epsilon: float = 1e-8):
    """Projects `features` on their `dim` leading principal axes, each scaled to unit variance.

    `y = (x - mean) V_dim diag(lambda_dim + eps)^(-1/2)`, where `V_dim` holds the
    eigenvectors of the covariance with the `dim` largest eigenvalues
    `lambda_dim` and `eps = epsilon * max(lambda)` guards axes without variance.

    Args:
      features: `[N, D]`.
      dim: Axes kept (at most D).
      epsilon: Added to the eigenvalues, relative to the largest.

    Returns:
      `(whitened [N, dim], mean [D], projection [D, dim])`, `whitened =
      (features - mean) @ projection`.
    """
    features = tf.convert_to_tensor(features, tf.float32)
    if dim > features.shape[-1]:
        raise ValueError(f"pca_whitening: dim {dim} exceeds the feature width "
                         f"{features.shape[-1]}.")
    mean = tf.reduce_mean(features, axis=0)
    centred = features - mean
    count = tf.cast(tf.shape(features)[0], tf.float32)
    covariance = tf.matmul(centred, centred, transpose_a=True) / count
    eigenvalues, eigenvectors = tf.linalg.eigh(covariance)  # ascending
    eigenvalues = tf.reverse(eigenvalues, [0])[:dim]
    eigenvectors = tf.reverse(eigenvectors, [1])[:, :dim]
    guard = epsilon * tf.maximum(eigenvalues[0], 0.0) + 1e-12
    projection = eigenvectors / tf.sqrt(tf.maximum(eigenvalues, 0.0) + guard)
    return tf.matmul(centred, projection), mean, projection


def _chunk_rows(num_clusters: int) -> int:
    """Rows per chunk so a chunk's `[rows, k]` distances stay near 2^24 values."""
    return max(64, (1 << 24) // max(1, int(num_clusters)))


def _assign_and_sum(points, centroids, chunk_rows):
    """`(assignments [N], sums [k, D], counts [k])` of nearest-centroid assignment, by chunks."""
    num_points = tf.shape(points)[0]
    num_clusters = tf.shape(centroids)[0]
    squared_norms = tf.reduce_sum(centroids * centroids, axis=-1)
    num_chunks = (num_points + chunk_rows - 1) // chunk_rows
    assignments = tf.TensorArray(tf.int32, size=num_chunks, infer_shape=False)
    sums = tf.zeros_like(centroids)
    counts = tf.zeros([num_clusters], tf.float32)
    for i in tf.range(num_chunks):
        chunk = points[i * chunk_rows:(i + 1) * chunk_rows]
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; the first term does not change the argmin.
        distances = squared_norms[None, :] - 2.0 * tf.matmul(chunk, centroids, transpose_b=True)
        nearest = tf.argmin(distances, axis=-1, output_type=tf.int32)
        one_hot = tf.one_hot(nearest, num_clusters, dtype=points.dtype)
        sums += tf.matmul(one_hot, chunk, transpose_a=True)
        counts += tf.reduce_sum(one_hot, axis=0)
        assignments = assignments.write(i, nearest)
    return assignments.concat(), sums, counts


def nearest_centroids(points, centroids):
    """The index of each point's nearest centroid (squared Euclidean distance), int32 `[N]`."""
    points = tf.convert_to_tensor(points, tf.float32)
    centroids = tf.convert_to_tensor(centroids, tf.float32)
    return _assign_and_sum_fn(points, centroids, _chunk_rows(centroids.shape[0]))[0]


def split_empty_clusters(centroids, counts, epsilon: float = SPLIT_EPSILON):
    """Re-seeds every empty cluster by splitting the currently largest one.

    Empty clusters are handled in increasing order. For each, the largest
    cluster m (the first on ties) gives up half its members: the empty
    cluster's centroid becomes `c_m * (1 + eps s)` and m's becomes
    `c_m * (1 - eps s)`, with `s = (+1, -1, +1, ...)` over the dimensions (the
    nudge of Faiss' k-means), and the counts become `floor(n_m / 2)` and the
    rest, so the next empty cluster splits the next largest one.

    Args:
      centroids: `[k, D]`.
      counts: `[k]` members per cluster.
      epsilon: Size of the nudge.

    Returns:
      `(centroids, counts)` with no empty cluster left (while some cluster
      has 2 or more members).
    """
    centroids = tf.convert_to_tensor(centroids, tf.float32)
    counts = tf.convert_to_tensor(counts, tf.float32)
    dims = tf.shape(centroids)[1]
    sign = 1.0 - 2.0 * tf.cast(tf.range(dims) % 2, tf.float32)
    empty = tf.cast(tf.reshape(tf.where(counts <= 0), [-1]), tf.int32)
    for j in empty:
        largest = tf.argmax(counts, output_type=tf.int32)
        if counts[largest] >= 2:
            source = centroids[largest]
            centroids = tf.tensor_scatter_nd_update(
                centroids, [[j], [largest]],
                tf.stack([source * (1.0 + epsilon * sign), source * (1.0 - epsilon * sign)]))
            half = tf.floor(counts[largest] / 2.0)
            counts = tf.tensor_scatter_nd_update(
                counts, [[j], [largest]], tf.stack([half, counts[largest] - half]))
    return centroids, counts


@tf.function(reduce_retracing=True)
def _assign_and_sum_fn(points, centroids, chunk_rows):
    return _assign_and_sum(points, centroids, chunk_rows)


@tf.function(reduce_retracing=True)
def _lloyd(points, centroids, iterations, chunk_rows):
    for _ in tf.range(iterations):
        _, sums, counts = _assign_and_sum(points, centroids, chunk_rows)
        updated = sums / tf.maximum(counts, 1.0)[:, None]
        centroids = tf.where((counts > 0)[:, None], updated, centroids)
        centroids, _ = split_empty_clusters(centroids, counts)
    assignments, _, counts = _assign_and_sum(points, centroids, chunk_rows)
    return centroids, assignments, counts


def initial_centroids(points, num_clusters: int, seed):
    """`num_clusters` distinct rows of `points`, chosen by a stateless draw from `seed`."""
    points = tf.convert_to_tensor(points, tf.float32)
    chosen = tf.argsort(tf.random.stateless_uniform([tf.shape(points)[0]], seed))[:num_clusters]
    return tf.gather(points, chosen)


def kmeans(points, num_clusters: int, seed, iterations: int = 20, centroids=None):
    """Lloyd's k-means with empty clusters split from large ones, seeded statelessly.

    Each iteration assigns every point to its nearest centroid, moves each
    non-empty centroid to the mean of its points, then re-seeds the empty
    ones (`split_empty_clusters`). The returned assignments are those to the
    final centroids.

    Args:
      points: `[N, D]` float32, N >= num_clusters.
      num_clusters: k.
      seed: `[2]` int seed of the initial centroids (`initial_centroids`),
        e.g. `keras_ssl.random.example_seed(run_seed, epoch)`.
      iterations: Lloyd iterations (20 as DeepCluster's Faiss settings).
      centroids: Optional `[k, D]` initial centroids (then `seed` is unused).

    Returns:
      `(centroids [k, D], assignments int32 [N], counts float32 [k])`.

    Raises:
      ValueError: fewer points than clusters.
    """
    points = tf.convert_to_tensor(points, tf.float32)
    if points.shape[0] is not None and points.shape[0] < num_clusters:
        raise ValueError(
            f"k-means: {num_clusters} clusters need at least as many points, got "
            f"{points.shape[0]}; use fewer clusters."
        )
    if centroids is None:
        centroids = initial_centroids(points, num_clusters, seed)
    centroids = tf.convert_to_tensor(centroids, tf.float32)
    return _lloyd(points, centroids, tf.constant(int(iterations)),
                  tf.constant(_chunk_rows(num_clusters)))
