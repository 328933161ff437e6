"""Weighted k-nearest-neighbour classification on frozen features (Wu et al. 2018).

Features are l2-normalised; the similarity is the cosine (dot product); each
of the ``k`` most similar training examples votes for its class with weight
``exp(similarity / temperature)``; the class with the largest summed vote wins.
k = 200 and temperature 0.1 as in the papers (`KnnSettings`); k shrinks to the training set
size when that is smaller.

Memory is bounded: the training features are normalised into one float32
copy (checked against the available memory first), and the queries go in
blocks sized so that a block's similarities and top-k bookkeeping stay within
`_BLOCK_BYTES`, whatever N.
"""

from __future__ import annotations

import numpy as np

from keras_ssl_eval.probes._memory import check_memory
from keras_ssl_eval.settings import KnnSettings

__all__ = ["knn_classify", "knn_accuracy"]

# Similarities (float32) and argpartition's indices (int64) of one query block.
_BLOCK_BYTES = 256 * 2**20
_BYTES_PER_SIMILARITY = 4 + 8


def _normalise(x):
    """Returns float32 rows of `x` scaled to unit l2 norm, block by block (one copy)."""
    out = np.empty(np.shape(x), np.float32)
    for i in range(0, len(out), 4096):
        block = np.asarray(x[i:i + 4096], np.float32)
        norm = np.linalg.norm(block, axis=1, keepdims=True)
        out[i:i + 4096] = block / np.maximum(norm, 1e-12)
    return out


def knn_classify(train_features, train_labels, query_features, *, k: int = KnnSettings.k,
                 temperature: float = KnnSettings.temperature, chunk: int | None = None) -> np.ndarray:
    """Predicts labels of `query_features` by similarity-weighted kNN votes.

    Args:
        train_features: ``[N, D]`` features of the labelled set.
        train_labels: ``[N]`` integer labels (>= 0).
        query_features: ``[M, D]`` features to classify.
        k: Neighbours (``min(k, N)`` are used).
        temperature: Votes are ``exp(cosine / temperature)``.
        chunk: Queries per block (bounds memory at ``chunk x N`` similarities);
            None (default): as many as fit in 256 MiB of similarities and indices.

    Returns:
        int64 ``[M]`` predicted labels.

    Raises:
        ValueError: Mismatched shapes or unlabelled training examples.
        MemoryError: The normalised copies of the features would not fit in
            the available memory.

    Example:
        >>> knn_classify(x_train, y_train, x_test, k=20)[:3]
        array([3, 1, 1])
    """
    labels = np.asarray(train_labels).astype(np.int64).reshape(-1)
    shape, query_shape = np.shape(train_features), np.shape(query_features)
    if len(shape) != 2 or shape[0] != len(labels) or shape[0] == 0:
        raise ValueError(f"Expected [N, D] train features and [N] labels, got {shape} "
                         f"and {labels.shape}.")
    check_memory(4 * shape[1] * (shape[0] + query_shape[0]),
                 f"kNN on {shape[0]} x {shape[1]} training features",
                 "Subsample the training set (--max_train_examples) or use a machine with "
                 "more memory.")
    if (labels < 0).any():
        raise ValueError("kNN needs labelled training examples (no -1 labels).")
    classes, targets = np.unique(labels, return_inverse=True)
    train = _normalise(train_features)
    k = max(1, min(int(k), len(train)))
    query = _normalise(query_features)
    if chunk is None:
        chunk = max(1, _BLOCK_BYTES // (_BYTES_PER_SIMILARITY * len(train)))
    predictions = []
    for start in range(0, len(query), chunk):
        sims = query[start:start + chunk] @ train.T                   # [m, N]
        # The k largest sit past position N - k after partitioning (no negated copy).
        top = np.argpartition(sims, len(train) - k, axis=1)[:, len(train) - k:]  # [m, k]
        top_sims = np.take_along_axis(sims, top, axis=1)
        # exp((s - 1) / T): the same ranking as exp(s / T), without overflow.
        weights = np.exp((top_sims.astype(np.float64) - 1.0) / temperature)
        # Summed votes per (query, class): one bincount over query * C + class.
        cells = np.arange(len(top))[:, None] * len(classes) + targets[top]
        votes = np.bincount(cells.ravel(), weights.ravel(), minlength=len(top) * len(classes))
        predictions.append(classes[np.argmax(votes.reshape(len(top), -1), axis=1)])
    return np.concatenate(predictions) if predictions else np.zeros([0], np.int64)


def knn_accuracy(train_features, train_labels, test_features, test_labels, *,
                 k: int = KnnSettings.k,
                 temperature: float = KnnSettings.temperature) -> dict:
    """Runs `knn_classify` on a test set and returns JSON-ready results.

    Args:
        train_features, train_labels: The labelled set.
        test_features, test_labels: The set to classify.
        k: Neighbours (capped at the training set size).
        temperature: Vote temperature.

    Returns:
        ``{"test_accuracy", "k", "temperature"}`` (``k`` is the one used).
    """
    predicted = knn_classify(train_features, train_labels, test_features, k=k,
                             temperature=temperature)
    truth = np.asarray(test_labels).reshape(-1)
    return {"test_accuracy": float(np.mean(predicted == truth)),
            "k": int(min(k, len(train_labels))), "temperature": float(temperature)}
