"""The linear probe: multinomial logistic regression solved to its optimum.

Kolesnikov et al. train the linear head with SGD and note that it converges
very slowly (up to 500 epochs). On frozen features the problem is convex, so a
full-batch quasi-Newton solver reaches the regularised optimum directly and the
reported accuracy does not depend on an SGD schedule:

    minimise  mean_i CE(softmax(W x_i + b), y_i) + l2 / 2 * ||W||^2

on standardised features (mean/std of the training set), with L-BFGS and the
analytic gradient. ``l2`` is chosen from a small grid by accuracy on a seeded
20% hold-out of the training set, then the model is refit on all of it.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import scipy.optimize
import scipy.special

__all__ = ["DEFAULT_L2_GRID", "LinearProbeResult", "fit_linear_probe"]

DEFAULT_L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LinearProbeResult:
    """Outcome of `fit_linear_probe`.

    Attributes:
        train_accuracy: Accuracy on the whole training set, in [0, 1].
        test_accuracy: Accuracy on the test set (None without one); test
            examples of classes absent from training count as errors.
        l2: The chosen L2 strength.
        validation_accuracy: ``{l2: hold-out accuracy}`` for each grid value
            (empty when the grid has one value).
        iterations: L-BFGS iterations of the final fit.
        converged: Whether L-BFGS met its tolerance within the iteration budget.
        grad_norm: Largest absolute gradient entry at the final solution.
        num_classes: Classes seen in training.
        classes: Those class labels; column k of `weights` is ``classes[k]``.
        weights, bias, feature_mean, feature_std: The model, on standardised
            features: ``logits = ((x - mean) / std) @ weights + bias``.
    """

    train_accuracy: float
    test_accuracy: float | None
    l2: float
    validation_accuracy: dict
    iterations: int
    converged: bool
    grad_norm: float
    num_classes: int
    classes: np.ndarray = dataclasses.field(repr=False)
    weights: np.ndarray = dataclasses.field(repr=False)
    bias: np.ndarray = dataclasses.field(repr=False)
    feature_mean: np.ndarray = dataclasses.field(repr=False)
    feature_std: np.ndarray = dataclasses.field(repr=False)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Returns the predicted class labels of raw (unstandardised) `features`."""
        x = (np.asarray(features, self.weights.dtype) - self.feature_mean) / self.feature_std
        return self.classes[np.argmax(x @ self.weights + self.bias, axis=1)]

    def to_dict(self) -> dict:
        """Returns the scalar results as JSON-ready values (no arrays)."""
        return {
            "train_accuracy": self.train_accuracy,
            "test_accuracy": self.test_accuracy,
            "l2": self.l2,
            "validation_accuracy": {f"{k:g}": v for k, v in self.validation_accuracy.items()},
            "iterations": self.iterations,
            "converged": self.converged,
            "grad_norm": self.grad_norm,
            "num_classes": self.num_classes,
        }


def fit_linear_probe(train_features, train_labels, test_features=None, test_labels=None, *,
                     l2_grid=DEFAULT_L2_GRID, validation_fraction: float = 0.2,
                     seed: int = 0, max_iterations: int = 1000, tolerance: float = 1e-5,
                     dtype=np.float32) -> LinearProbeResult:
    """Fits the linear probe and measures its accuracy.

    Args:
        train_features: ``[N, D]`` training features.
        train_labels: ``[N]`` integer labels (any values; -1 is rejected as
            "unlabelled").
        test_features: Optional ``[M, D]`` test features.
        test_labels: ``[M]`` labels of the test features.
        l2_grid: Candidate L2 strengths; with one value no hold-out is used.
        validation_fraction: Fraction of the training set held out to pick l2.
        seed: Seed of the hold-out split.
        max_iterations: L-BFGS iteration budget per fit.
        tolerance: L-BFGS gradient tolerance (largest absolute entry).
        dtype: ``np.float32`` (default: half the memory, twice the matrix
            throughput) or ``np.float64`` (for tolerances below ~1e-6).

    Returns:
        A `LinearProbeResult`.

    Raises:
        ValueError: Fewer than two classes, unlabelled examples or mismatched shapes.

    Example:
        >>> result = fit_linear_probe(x_train, y_train, x_test, y_test)
        >>> result.test_accuracy, result.l2
        (0.873, 0.0001)
    """
    x = _as_matrix(train_features, "train_features", dtype)
    y = _as_labels(train_labels, len(x), "train")
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError(f"The linear probe needs at least two classes in the training "
                         f"labels, found only {classes.tolist()}; use a labelled dataset "
                         f"with several classes.")
    targets = np.searchsorted(classes, y)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std[std == 0] = 1  # Constant features carry no signal; avoid 0/0.
    x = (x - mean) / std
    # With more dimensions than examples, the regularised optimum lies in the
    # span of the training rows (representer theorem), and an orthonormal
    # basis of that span keeps ||W|| unchanged: solving there is exact and
    # costs N instead of D per example.
    basis = _row_space_basis(x) if x.shape[1] > x.shape[0] else None
    if basis is not None:
        x = x @ basis
    # float32 rounding of the loss stalls the line search near the optimum
    # ("ABNORMAL" stops); solve in float64 whenever the matrix is small.
    if x.size <= _FLOAT64_MAX_ENTRIES:
        x = x.astype(np.float64)

    grid = sorted({float(v) for v in l2_grid}, reverse=True)
    if not grid or min(grid) < 0:
        raise ValueError(f"l2_grid must hold non-negative values, got {l2_grid!r}.")
    validation, solutions, start = {}, {}, None
    if len(grid) > 1:
        fit_idx, val_idx = _holdout(len(x), validation_fraction, seed)
        # Strong to weak regularisation, each fit warm-started from the previous.
        # Ranking the candidates needs their accuracy, not their last digits:
        # these fits get a smaller budget; the final fit runs to convergence.
        for l2 in grid:
            start, _ = _minimise(x[fit_idx], targets[fit_idx], len(classes), l2, start,
                                 min(max_iterations, _SELECTION_ITERATIONS), tolerance)
            solutions[l2] = start
            validation[l2] = _accuracy(_predict(x[val_idx], start, len(classes)), targets[val_idx])
        best = max(validation.values())
        chosen = max(l2 for l2, acc in validation.items() if acc == best)  # Ties: simpler model.
    else:
        chosen = grid[0]
    # The hold-out fit at the chosen l2 is close to the full-data optimum: start there.
    params, info = _minimise(x, targets, len(classes), chosen, solutions.get(chosen),
                             max_iterations, tolerance)
    weights, bias = _unpack(params, x.shape[1], len(classes))
    if basis is not None:
        weights = basis @ weights
    if not info.success:
        _log.warning("L-BFGS stopped before convergence (l2=%g, %d iterations, gradient "
                     "%.3g): %s", chosen, info.nit, np.abs(info.jac).max(), info.message)

    test_accuracy = None
    if test_features is not None:
        xt = _as_matrix(test_features, "test_features", dtype)
        if xt.shape[1] != len(mean):
            raise ValueError(f"test_features have {xt.shape[1]} dimensions, train_features "
                             f"{len(mean)}.")
        xt = (xt - mean) / std
        if basis is not None:
            xt = xt @ basis
        xt = xt.astype(x.dtype)
        yt = _as_labels(test_labels, len(xt), "test")
        unseen = ~np.isin(yt, classes)
        if unseen.any():
            _log.warning("%d test examples belong to classes absent from the training set "
                         "(%s); they count as errors.", unseen.sum(),
                         np.unique(yt[unseen]).tolist())
        test_accuracy = float(np.mean(classes[_predict(xt, params, len(classes))] == yt))

    return LinearProbeResult(
        train_accuracy=_accuracy(_predict(x, params, len(classes)), targets),
        test_accuracy=test_accuracy, l2=chosen, validation_accuracy=validation,
        iterations=int(info.nit), converged=bool(info.success),
        grad_norm=float(np.abs(info.jac).max()), num_classes=len(classes), classes=classes,
        weights=weights, bias=bias, feature_mean=mean, feature_std=std)


_SELECTION_ITERATIONS = 200
_FLOAT64_MAX_ENTRIES = 2**24


def _row_space_basis(x):
    """Orthonormal [D, r] basis of the span of the rows of `x` (r <= N < D)."""
    # From the N x N Gram matrix: one matrix product and a small
    # eigendecomposition, several times cheaper than a QR or SVD of x itself.
    # Float64 keeps the small eigenvalues; directions below 1e-10 of the
    # largest hold no measurable part of the data and are dropped.
    x64 = x.astype(np.float64)
    eigenvalues, eigenvectors = np.linalg.eigh(x64 @ x64.T)
    keep = eigenvalues > eigenvalues.max() * 1e-10
    return (x64.T @ (eigenvectors[:, keep] / np.sqrt(eigenvalues[keep]))).astype(x.dtype)


def _as_matrix(features, name, dtype):
    x = np.asarray(features, dtype)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{name} must be a non-empty [N, D] array, got shape {x.shape}.")
    return x


def _as_labels(labels, n, which):
    if labels is None:
        raise ValueError(f"{which}_labels are required.")
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    if len(y) != n:
        raise ValueError(f"{which}_labels has {len(y)} entries for {n} feature rows.")
    if (y < 0).any():
        raise ValueError(f"{(y < 0).sum()} {which} examples are unlabelled (label -1); the "
                         f"linear probe needs a labelled dataset.")
    return y


def _holdout(n, fraction, seed):
    if not 0 < fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {fraction}.")
    if n < 2:
        raise ValueError("Choosing l2 needs at least 2 training examples; pass a single "
                         "l2_grid value instead.")
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 1, max(1, round(fraction * n)))
    return order[n_val:], order[:n_val]


def _unpack(params, dim, num_classes):
    weights = params[:dim * num_classes].reshape(dim, num_classes)
    return weights, params[dim * num_classes:]


def _predict(x, params, num_classes):
    weights, bias = _unpack(params, x.shape[1], num_classes)
    return np.argmax(x @ weights.astype(x.dtype) + bias.astype(x.dtype), axis=1)


def _accuracy(predicted, targets):
    return float(np.mean(predicted == targets))


def _minimise(x, targets, num_classes, l2, start, max_iterations, tolerance):
    """Runs L-BFGS on the regularised mean cross-entropy; returns (params, result)."""
    n, dim = x.shape
    rows = np.arange(n)

    def loss_and_grad(params):
        weights, bias = _unpack(params, dim, num_classes)
        logits = x @ weights.astype(x.dtype) + bias.astype(x.dtype)
        log_norm = scipy.special.logsumexp(logits, axis=1)
        loss = np.mean(log_norm - logits[rows, targets]) + 0.5 * l2 * np.sum(weights**2)
        residual = np.exp(logits - log_norm[:, None])  # Softmax probabilities.
        residual[rows, targets] -= 1
        residual /= n
        grad_w = (x.T @ residual).astype(np.float64) + l2 * weights
        grad_b = residual.sum(axis=0, dtype=np.float64)
        return float(loss), np.concatenate([grad_w.ravel(), grad_b])

    if start is None:
        start = np.zeros(dim * num_classes + num_classes)
    result = scipy.optimize.minimize(
        loss_and_grad, start, jac=True, method="L-BFGS-B",
        options={"maxiter": max_iterations, "gtol": tolerance, "ftol": 1e-12, "maxcor": 20})
    return result.x, result
