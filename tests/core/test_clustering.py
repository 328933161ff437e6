"""keras_ssl.clustering: k-means against numpy, PCA whitening, empty-cluster splitting, features."""

import numpy as np
import pytest
import tensorflow as tf

from keras_ssl import clustering
from keras_ssl.training import epoch_starts


def _numpy_split(centroids, counts, eps=clustering.SPLIT_EPSILON):
    centroids, counts = centroids.copy(), counts.copy()
    sign = np.where(np.arange(centroids.shape[1]) % 2 == 0, 1.0, -1.0)
    for j in np.flatnonzero(counts <= 0):
        m = int(np.argmax(counts))
        if counts[m] < 2:
            continue
        source = centroids[m].copy()
        centroids[j], centroids[m] = source * (1 + eps * sign), source * (1 - eps * sign)
        half = np.floor(counts[m] / 2)
        counts[j], counts[m] = half, counts[m] - half
    return centroids, counts


def _numpy_kmeans(points, centroids, iterations):
    """Lloyd's iterations with empty clusters split from the largest, as documented."""
    def assign(c):
        distances = ((points[:, None, :] - c[None]) ** 2).sum(-1)
        return distances.argmin(-1)

    for _ in range(iterations):
        nearest = assign(centroids)
        counts = np.bincount(nearest, minlength=len(centroids)).astype(np.float64)
        for k in range(len(centroids)):
            if counts[k]:
                centroids[k] = points[nearest == k].mean(0)
        centroids, _ = _numpy_split(centroids, counts)
    nearest = assign(centroids)
    return centroids, nearest, np.bincount(nearest, minlength=len(centroids))


def test_kmeans_matches_numpy_lloyd_from_the_same_init():
    rng = np.random.RandomState(0)
    blobs = rng.randn(4, 5) * 4
    points = (blobs[rng.randint(0, 4, 120)] + rng.randn(120, 5)).astype(np.float32)
    init = clustering.initial_centroids(points, 6, [0, 3]).numpy()
    centroids, assignments, counts = clustering.kmeans(points, 6, [0, 3], iterations=7)
    ref_centroids, ref_assignments, ref_counts = _numpy_kmeans(
        points.astype(np.float64), init.astype(np.float64), 7)
    np.testing.assert_array_equal(assignments.numpy(), ref_assignments)
    np.testing.assert_allclose(centroids.numpy(), ref_centroids, atol=1e-4)
    np.testing.assert_array_equal(counts.numpy(), ref_counts)
    # Seeded: the same seed gives the same clusters, another seed other initial centroids.
    again = clustering.kmeans(points, 6, [0, 3], iterations=7)[1]
    np.testing.assert_array_equal(again.numpy(), assignments.numpy())
    assert not np.array_equal(clustering.initial_centroids(points, 6, [0, 4]).numpy(), init)


def test_kmeans_assigns_by_chunks_like_all_at_once(monkeypatch):
    points = tf.random.stateless_normal([70, 3], [1, 2])
    whole = clustering.kmeans(points, 5, [0, 1], iterations=3)[1].numpy()
    monkeypatch.setattr(clustering, "_chunk_rows", lambda k: 16)  # 5 chunks, the last partial
    chunked = clustering.kmeans(points, 5, [0, 1], iterations=3)[1].numpy()
    np.testing.assert_array_equal(whole, chunked)


def test_empty_clusters_are_split_from_the_largest():
    centroids = np.array([[1.0, 2.0], [9.0, 9.0], [3.0, 4.0], [7.0, 7.0]], np.float32)
    counts = np.array([6.0, 0.0, 3.0, 0.0], np.float32)
    new_centroids, new_counts = clustering.split_empty_clusters(centroids, counts)
    ref_centroids, ref_counts = _numpy_split(centroids.astype(np.float64), counts)
    np.testing.assert_allclose(new_centroids.numpy(), ref_centroids, rtol=1e-6)
    np.testing.assert_array_equal(new_counts.numpy(), [2.0, 3.0, 3.0, 1.0])
    np.testing.assert_array_equal(ref_counts, new_counts.numpy())
    # Cluster 1 took half of cluster 0 (6 -> 3 + 3); cluster 3 half of the then largest,
    # the first of the three clusters of 3: cluster 0 again.
    eps = clustering.SPLIT_EPSILON
    np.testing.assert_allclose(new_centroids[1], [1 + eps, 2 * (1 - eps)], rtol=1e-6)
    # In k-means: all points start at one centroid twice (duplicate init), none stays empty.
    points = tf.constant([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    _, assignments, counts = clustering.kmeans(
        points, 2, None, iterations=5, centroids=[[0.0, 0.0], [100.0, 100.0]])
    assert counts.numpy().tolist() == [2.0, 2.0]
    assert len(set(assignments.numpy()[:2])) == 1 and len(set(assignments.numpy()[2:])) == 1


def test_pca_whitening_gives_identity_covariance_on_the_kept_axes():
    rng = np.random.RandomState(1)
    mixing = rng.randn(6, 6) * np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.1])[:, None]
    features = (rng.randn(500, 6) @ mixing + 3.0).astype(np.float32)
    whitened, mean, projection = clustering.pca_whitening(features, 4)
    whitened = whitened.numpy()
    assert whitened.shape == (500, 4)
    np.testing.assert_allclose(whitened.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.cov(whitened.T, bias=True), np.eye(4), atol=1e-3)
    # The kept axes are the leading principal axes: the numpy eigendecomposition's.
    centred = features - features.mean(0)
    values, vectors = np.linalg.eigh(centred.T @ centred / 500)
    leading = vectors[:, ::-1][:, :4]
    cosines = np.abs(np.sum(leading * projection.numpy() / np.linalg.norm(
        projection.numpy(), axis=0), axis=0))
    np.testing.assert_allclose(cosines, 1.0, atol=1e-3)
    with pytest.raises(ValueError, match="exceeds the feature width"):
        clustering.pca_whitening(features, 7)


def test_dataset_features_are_in_index_order_and_refuse_a_wrong_size():
    images = np.arange(10, dtype=np.float32)[:, None, None, None] * np.ones([1, 2, 2, 3], np.float32)
    order = np.array([3, 0, 9, 1, 2, 8, 4, 7, 5, 6])
    examples = tf.data.Dataset.from_tensor_slices({"image": images[order], "index": order})
    features = clustering.dataset_features(
        lambda x: tf.reduce_mean(x, axis=[1, 2]), examples, 10, batch_size=4)
    np.testing.assert_allclose(features.numpy()[:, 0], np.arange(10))
    with pytest.raises(clustering.ClusteringError, match="told the split has 12 examples"):
        clustering.dataset_features(lambda x: tf.reduce_mean(x, axis=[1, 2]), examples, 12)


def test_epoch_starts_follow_the_example_stream():
    assert [s for s in range(8) if epoch_starts(s, 4, 10)] == [0, 3, 5]
    assert [s for s in range(4) if epoch_starts(s, 8, 8)] == [0, 1, 2, 3]
    assert [s for s in range(30) if epoch_starts(s, 8, 96)] == [0, 12, 24]
