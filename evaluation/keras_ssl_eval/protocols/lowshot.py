"""Low-shot evaluation (Goyal et al. 2019): k labelled examples per class.

For each k in {1, 2, 4, 8, 16, 32, 64, 96} (k larger than the smallest class
is skipped), draw k training examples per class, 5 independent seeded draws;
train a linear SVM (one-vs-rest, squared hinge, C by 3-fold cross-validation)
on l2-normalised features, and the linear head (`keras_ssl_eval.probes.linear`);
test on the whole test set; report mean and std over the draws, and the
test count with the 95% Wilson interval at the mean (the test set's sampling
noise, shared by all draws; the draws' own spread is the std).
"""

from __future__ import annotations

import numpy as np

from keras_ssl_eval.probes.linear import DEFAULT_L2_GRID, fit_linear_probe
from keras_ssl_eval.probes.svm import DEFAULT_COSTS, fit_svm_cv
from keras_ssl_eval.settings import LowShotSettings
from keras_ssl_eval.statistics import accuracy_interval

__all__ = ["DEFAULT_SHOTS", "sample_per_class", "low_shot"]

DEFAULT_SHOTS = LowShotSettings.shots


def sample_per_class(labels, k: int, seed: int) -> np.ndarray:
    """Returns sorted indices of `k` examples of every class, drawn without replacement.

    Args:
        labels: ``[N]`` labels.
        k: Examples per class (at most the smallest class count).
        seed: Seed of the draw.

    Returns:
        int64 indices ``[k * classes]``.
    """
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(labels == c), k, replace=False)
              for c in np.unique(labels)]
    return np.sort(np.concatenate(picked))


def _l2_normalise(x):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def low_shot(train_features, train_labels, test_features, test_labels, *,
             shots=DEFAULT_SHOTS, draws: int = LowShotSettings.draws, seed: int = 0,
             costs=DEFAULT_COSTS,
             heads=("svm", "linear"), l2_grid=DEFAULT_L2_GRID) -> dict:
    """Runs the low-shot protocol on fixed features.

    Args:
        train_features, train_labels: The pool the k-shot sets are drawn from.
        test_features, test_labels: The test set.
        shots: Values of k; those above the smallest class count are skipped.
        draws: Independent draws per k (draw d uses seed ``seed + 1009 * d``).
        seed: Base seed.
        costs: SVM costs for cross-validation.
        heads: Any of ``"svm"`` and ``"linear"``.
        l2_grid: L2 grid of the linear head.

    Returns:
        ``{head: {str(k): {"mean", "std", "accuracies", "num_train", "test_count",
        "ci95"}}, "skipped": [k...]}`` with accuracies in [0, 1]; ``ci95`` is the
        Wilson interval of the mean on the ``test_count`` test examples.

    Example:
        >>> low_shot(x, y, xt, yt, shots=(1, 4))["svm"]["4"]["mean"]
        0.71
    """
    y = np.asarray(train_labels).reshape(-1)
    yt = np.asarray(test_labels).reshape(-1)
    smallest = int(np.unique(y, return_counts=True)[1].min())
    usable = [int(k) for k in shots if k <= smallest]
    results = {head: {} for head in heads}
    results["skipped"] = [int(k) for k in shots if k > smallest]
    x_svm, xt_svm = _l2_normalise(train_features), _l2_normalise(test_features)
    for k in usable:
        accuracies = {head: [] for head in heads}
        for draw in range(draws):
            idx = sample_per_class(y, k, seed + 1009 * draw)
            if "svm" in heads:
                svm = fit_svm_cv(x_svm[idx], y[idx], costs, seed=seed + draw)
                accuracies["svm"].append(float(np.mean(svm.predict(xt_svm) == yt)))
            if "linear" in heads:
                grid = l2_grid if len(idx) >= 5 else l2_grid[-1:]
                probe = fit_linear_probe(np.asarray(train_features)[idx], y[idx],
                                         test_features, yt, l2_grid=grid, seed=seed + draw)
                accuracies["linear"].append(probe.test_accuracy)
        for head in heads:
            values = np.asarray(accuracies[head])
            results[head][str(k)] = {"mean": float(values.mean()), "std": float(values.std()),
                                     "accuracies": values.tolist(), "num_train": len(idx),
                                     **accuracy_interval(float(values.mean()), len(yt))}
    return results
