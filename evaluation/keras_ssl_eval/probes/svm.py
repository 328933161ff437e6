"""Linear SVMs, one-vs-rest with the squared hinge loss (Goyal et al. 2019).

Per class c with targets ``t_i = +1`` (class c) or ``-1``, minimise over
``w_c`` and ``b_c``::

    1/2 (||w_c||^2 + b_c^2) + C * sum_i max(0, 1 - t_i (w_c . x_i + b_c))^2

which is LIBLINEAR's L2-regularised L2-loss primal (scikit-learn's
``LinearSVC(loss="squared_hinge")``, whose intercept is a regularised constant
feature). With at most `DUAL_MAX_EXAMPLES` examples (the low-shot case) the
dual is solved, as LIBLINEAR does: ``min 1/2 a^T (Q + I / 2C) a - sum(a)``
over ``a >= 0``, ``Q_ij = t_i t_j (x_i . x_j + 1)``, ``w = sum_i a_i t_i x_i``;
it has N variables per class whatever the feature size, and the ``I / 2C``
term keeps it well conditioned when features are nearly collinear. Larger sets
use the primal. Both with scipy's L-BFGS-B, all classes in one call (the
objective is a sum of independent per-class terms).
The cost C is chosen by stratified 3-fold cross-validation on accuracy.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize

__all__ = ["DEFAULT_COSTS", "LinearSVM", "fit_svm", "fit_svm_cv"]

DEFAULT_COSTS = (0.01, 0.1, 1.0, 10.0, 100.0)
DUAL_MAX_EXAMPLES = 4000


class LinearSVM:
    """A fitted one-vs-rest linear SVM.

    Attributes:
        classes: Class labels; column k of `weights` scores ``classes[k]``.
        weights: ``[D, K]``.
        bias: ``[K]``.
        cost: The C it was trained with.
    """

    def __init__(self, classes, weights, bias, cost):
        self.classes, self.weights, self.bias, self.cost = classes, weights, bias, cost

    def decision_function(self, features) -> np.ndarray:
        """Returns ``[M, K]`` class scores."""
        return np.asarray(features, np.float64) @ self.weights + self.bias

    def predict(self, features) -> np.ndarray:
        """Returns ``[M]`` predicted labels."""
        return self.classes[np.argmax(self.decision_function(features), axis=1)]


def fit_svm(features, labels, cost: float = 1.0, *, max_iterations: int = 1000,
            tolerance: float = 1e-6) -> LinearSVM:
    """Fits one-vs-rest squared-hinge linear SVMs at one cost.

    Args:
        features: ``[N, D]``.
        labels: ``[N]`` integer labels, at least two classes.
        cost: The C above.
        max_iterations: L-BFGS budget.
        tolerance: L-BFGS gradient tolerance.

    Returns:
        A `LinearSVM`.
    """
    x = np.asarray(features, np.float64)
    y = np.asarray(labels).reshape(-1)
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError(f"An SVM needs at least two classes, got {classes.tolist()}.")
    targets = np.where(y[:, None] == classes[None, :], 1.0, -1.0)   # [N, K]
    xb = np.concatenate([x, np.ones([len(x), 1])], axis=1)          # Bias as a feature.
    dim, k = xb.shape[1], len(classes)
    if len(x) <= DUAL_MAX_EXAMPLES:
        w = _solve_dual(xb, targets, cost, max_iterations, tolerance)
        return LinearSVM(classes, w[:-1], w[-1], float(cost))

    def objective(params):
        w = params.reshape(dim, k)
        margin = np.maximum(0.0, 1.0 - targets * (xb @ w))
        loss = 0.5 * np.sum(w**2) + cost * np.sum(margin**2)
        grad = w - 2.0 * cost * (xb.T @ (targets * margin))
        return loss, grad.ravel()

    result = scipy.optimize.minimize(objective, np.zeros(dim * k), jac=True, method="L-BFGS-B",
                                     options={"maxiter": max_iterations, "gtol": tolerance})
    w = result.x.reshape(dim, k)
    return LinearSVM(classes, w[:-1], w[-1], float(cost))


def _solve_dual(xb, targets, cost, max_iterations, tolerance):
    """Solves the L2-loss SVM dual for every class; returns ``w`` ``[D + 1, K]``."""
    gram = xb @ xb.T
    n, k = targets.shape
    diagonal = 1.0 / (2.0 * cost)

    def objective(params):
        alpha = params.reshape(n, k)
        signed = alpha * targets
        q_alpha = targets * (gram @ signed) + diagonal * alpha
        loss = 0.5 * np.sum(alpha * q_alpha) - np.sum(alpha)
        return loss, (q_alpha - 1.0).ravel()

    result = scipy.optimize.minimize(
        objective, np.zeros(n * k), jac=True, method="L-BFGS-B", bounds=[(0, None)] * (n * k),
        options={"maxiter": max_iterations, "gtol": tolerance, "ftol": 1e-12})
    return xb.T @ (result.x.reshape(n, k) * targets)


def _stratified_folds(labels, folds, seed):
    """Assigns each example a fold, classes spread round-robin after a shuffle."""
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(labels), np.int64)
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        assignment[idx] = np.arange(len(idx)) % folds
    return assignment


def fit_svm_cv(features, labels, costs=DEFAULT_COSTS, *, folds: int = 3, seed: int = 0,
               default_cost: float = 1.0) -> LinearSVM:
    """Chooses C by stratified k-fold cross-validation, then refits on all data.

    With fewer examples per class than `folds`, the folds shrink to the
    smallest class count; with a single example in some class no validation is
    possible and `default_cost` is used.

    Args:
        features: ``[N, D]`` (l2-normalise them first for Goyal's protocol).
        labels: ``[N]`` labels.
        costs: Candidate C values.
        folds: Cross-validation folds (3 in the paper).
        seed: Seed of the fold assignment.
        default_cost: C when cross-validation is impossible.

    Returns:
        A `LinearSVM` trained on all examples with the chosen C (ties: smaller C).

    Example:
        >>> fit_svm_cv(x, y).cost
        1.0
    """
    y = np.asarray(labels).reshape(-1)
    x = np.asarray(features, np.float64)
    folds = min(folds, int(np.unique(y, return_counts=True)[1].min()))
    if folds < 2 or len(costs) == 1:
        return fit_svm(x, y, costs[0] if len(costs) == 1 else default_cost)
    assignment = _stratified_folds(y, folds, seed)
    scores = []
    for cost in costs:
        correct = 0
        for fold in range(folds):
            train, val = assignment != fold, assignment == fold
            correct += np.sum(fit_svm(x[train], y[train], cost).predict(x[val]) == y[val])
        scores.append(correct / len(y))
    best = costs[int(np.argmax(scores))]  # argmax takes the first, i.e. the smallest C.
    return fit_svm(x, y, best)
