"""Weighted k-nearest-neighbour classification on frozen features (Wu et al. 2018).

Features are l2-normalised; the similarity is the cosine (dot product); each
of the ``k`` most similar training examples votes for its class with weight
``exp(similarity / temperature)``; the class with the largest summed vote wins.
k = 200 and temperature 0.1 as in the papers; k shrinks to the training set
size when that is smaller.
"""

from __future__ import annotations

import numpy as np

__all__ = ["knn_classify", "knn_accuracy"]


def _normalise(x):
    x = np.asarray(x, np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def knn_classify(train_features, train_labels, query_features, *, k: int = 200,
                 temperature: float = 0.1, chunk: int = 1024) -> np.ndarray:
    """Predicts labels of `query_features` by similarity-weighted kNN votes.

    Args:
        train_features: ``[N, D]`` features of the labelled set.
        train_labels: ``[N]`` integer labels (>= 0).
        query_features: ``[M, D]`` features to classify.
        k: Neighbours (``min(k, N)`` are used).
        temperature: Votes are ``exp(cosine / temperature)``.
        chunk: Queries per block (bounds memory at ``chunk x N`` similarities).

    Returns:
        int64 ``[M]`` predicted labels.

    Example:
        >>> knn_classify(x_train, y_train, x_test, k=20)[:3]
        array([3, 1, 1])
    """
    train = _normalise(train_features)
    labels = np.asarray(train_labels).astype(np.int64).reshape(-1)
    if train.ndim != 2 or len(train) != len(labels) or len(train) == 0:
        raise ValueError(f"Expected [N, D] train features and [N] labels, got {train.shape} "
                         f"and {labels.shape}.")
    if (labels < 0).any():
        raise ValueError("kNN needs labelled training examples (no -1 labels).")
    classes, targets = np.unique(labels, return_inverse=True)
    k = max(1, min(int(k), len(train)))
    query = _normalise(query_features)
    predictions = []
    for start in range(0, len(query), chunk):
        sims = query[start:start + chunk] @ train.T                   # [m, N]
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]            # [m, k]
        top_sims = np.take_along_axis(sims, top, axis=1)
        # exp((s - 1) / T): the same ranking as exp(s / T), without overflow.
        weights = np.exp((top_sims.astype(np.float64) - 1.0) / temperature)
        votes = np.zeros([len(top), len(classes)])
        np.add.at(votes, (np.arange(len(top))[:, None], targets[top]), weights)
        predictions.append(classes[np.argmax(votes, axis=1)])
    return np.concatenate(predictions) if predictions else np.zeros([0], np.int64)


def knn_accuracy(train_features, train_labels, test_features, test_labels, *, k: int = 200,
                 temperature: float = 0.1) -> dict:
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
