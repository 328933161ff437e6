"""The linear probe: multinomial logistic regression solved to its optimum.

Kolesnikov et al. train the linear head with SGD and note that it converges
very slowly (up to 500 epochs). On frozen features the problem is convex, so a
second-order solver reaches the regularised optimum directly and the reported
accuracy does not depend on an SGD schedule:

    minimise  mean_i CE(softmax(W x_i + b), y_i) + l2 / 2 * ||W||^2

on standardised features (mean/std of the training set). ``l2`` is chosen from
a small grid by accuracy on a seeded 20% hold-out of the training set, then
the model is refit on all of it.

The solver is a preconditioned inexact Newton method (Newton-CG), built for
standardised conv features, whose strong correlations make the problem badly
conditioned (the covariance's top eigenvalue is about 0.3 x D, its smallest
near 0: plain L-BFGS needed hundreds of iterations):

- Row space. With more dimensions than examples the optimum lies in the span
  of the training rows (representer theorem). A pivoted Cholesky factor of the
  Gram matrix, ``X X^T = Z Z^T``, gives the rows' coordinates ``Z`` in an
  orthonormal basis of that span without forming the basis: the same problem
  with N instead of D columns, mapped back to D at the end.
- Newton-CG. Each Newton step solves ``H d = -g`` by conjugate gradients; a
  Hessian-vector product costs two matrix products, like a gradient. The
  inner solve is only as exact as the step needs (inexact Newton), then an
  Armijo line search; near the optimum Newton converges quadratically.
- Preconditioner. CG is preconditioned with the top eigenpairs of the
  features' covariance (randomised subspace iteration), each scaled by the
  softmax curvature of its class plus l2, and the remaining eigenvalues
  lumped into one (a Nystrom-type preconditioner): the correlations
  concentrate in a few large eigenvalues (see `_PRECONDITIONER_RANK`).
- The l2 path. The grid runs from strong to weak regularisation, each fit
  warm-started from the previous; the refit on all data starts from the
  hold-out fit at the chosen l2.
- float32 matrix products when the problem is large and the tolerance allows.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import scipy.linalg
import scipy.special

from keras_ssl_eval.probes._memory import check_memory
from keras_ssl_eval.settings import LinearSettings

__all__ = ["DEFAULT_L2_GRID", "LinearProbeResult", "fit_linear_probe"]

DEFAULT_L2_GRID = LinearSettings.l2_grid

_log = logging.getLogger(__name__)

# Eigenpairs of the covariance in the preconditioner, and the subspace
# iterations that find them. On the quickstart's block2 features (eigenvalues
# 2900 at the top, 11 at 50, 2.4 at 200) ranks 64, 128, 256 and 512 took
# 296, 298, 338 and 361 Hessian products for the whole l2 grid: past the top
# few dozen, what CG still has to resolve is the softmax curvature's variation
# between examples, not the spectrum.
_PRECONDITIONER_RANK = 64
_SUBSPACE_ITERATIONS = 2
_MAX_CG_STEPS = 250
# float32 rounding of the gradient and the loss stalls the solver below this.
_FLOAT32_MIN_TOLERANCE = 1e-6
# Up to this many matrix entries float64 costs nothing noticeable: use it.
_FLOAT64_MAX_ENTRIES = 2**20
_MAX_LINE_SEARCH_STEPS = 30


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
        iterations: Newton iterations of the final fit.
        converged: Whether every fit (hold-out fits and the final one) met the
            gradient tolerance within the iteration budget.
        grad_norm: Largest absolute entry of the gradient at the final
            solution, computed on the standardised D-dimensional features.
        num_classes: Classes seen in training.
        classes: Those class labels; column k of `weights` is ``classes[k]``.
        weights, bias, feature_mean, feature_std: The model, on standardised
            features: ``logits = ((x - mean) / std) @ weights + bias``.
        hessian_products: Hessian-vector products (conjugate-gradient steps)
            of all fits together; each costs about one gradient.
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
    hessian_products: int = 0

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
            "hessian_products": self.hessian_products,
        }


def fit_linear_probe(train_features, train_labels, test_features=None, test_labels=None, *,
                     l2_grid=DEFAULT_L2_GRID,
                     validation_fraction: float = LinearSettings.validation_fraction,
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
        seed: Seed of the hold-out split and of the preconditioner's
            random start.
        max_iterations: Newton iteration budget per fit.
        tolerance: Gradient tolerance (largest absolute entry) of every fit.
        dtype: ``np.float32`` (default: half the memory, twice the matrix
            throughput; small problems and tolerances below 1e-6 are solved
            in float64 anyway) or ``np.float64``.

    Returns:
        A `LinearProbeResult`.

    Raises:
        ValueError: Fewer than two classes, unlabelled examples or mismatched shapes.
        MemoryError: The features and the solver's copies of them would not
            fit in the available memory (the message says how much is needed).

    Example:
        >>> result = fit_linear_probe(x_train, y_train, x_test, y_test)
        >>> result.test_accuracy, result.l2
        (0.873, 0.0001)
    """
    x = _as_matrix(train_features, "train_features")
    n, dim = x.shape
    y = _as_labels(train_labels, n, "train")
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError(f"The linear probe needs at least two classes in the training "
                         f"labels, found only {classes.tolist()}; use a labelled dataset "
                         f"with several classes.")
    grid = sorted({float(v) for v in l2_grid}, reverse=True)
    if not grid or min(grid) < 0:
        raise ValueError(f"l2_grid must hold non-negative values, got {l2_grid!r}.")
    xt = yt = None
    if test_features is not None:
        xt = _as_matrix(test_features, "test_features")
        if xt.shape[1] != dim:
            raise ValueError(f"test_features have {xt.shape[1]} dimensions, train_features "
                             f"{dim}.")
        yt = _as_labels(test_labels, len(xt), "test")
    solve_dtype = _solve_dtype(dtype, tolerance, n * min(n, dim))
    _check_probe_memory(n, dim, solve_dtype)

    # With a hold-out, its rows go first, so the fit and validation sets are
    # views of the one standardised copy.
    order, val_rows = np.arange(n), 0
    if len(grid) > 1:
        fit_idx, val_idx = _holdout(n, validation_fraction, seed)
        order, val_rows = np.concatenate([val_idx, fit_idx]), len(val_idx)
    targets = np.searchsorted(classes, y[order])
    xs, mean, std = _standardise(x, order, solve_dtype)
    row_space = _RowSpace(xs) if dim > n else None
    z = row_space.coordinates if row_space is not None else xs
    preconditioner = _Preconditioner.of(z, seed)

    validation, solutions, converged, products, start = {}, {}, True, 0, None
    if len(grid) > 1:
        for l2 in grid:
            start = _newton_cg(z[val_rows:], targets[val_rows:], len(classes), l2, start,
                               preconditioner, max_iterations, tolerance)
            solutions[l2] = start
            converged &= start.converged
            products += start.hessian_products
            validation[l2] = _accuracy(start.logits_of(z[:val_rows]), targets[:val_rows])
            _log.debug("Hold-out fit at l2=%g: %d Newton iterations, %d Hessian products, "
                       "accuracy %.4f.", l2, start.iterations, start.hessian_products,
                       validation[l2])
            if not start.converged:
                _log.warning("The hold-out fit at l2=%g stopped before convergence (%d Newton "
                             "iterations, gradient %.3g): %s", l2, start.iterations,
                             start.grad_norm, start.message)
        best = max(validation.values())
        chosen = max(l2 for l2, acc in validation.items() if acc == best)  # Ties: simpler model.
    else:
        chosen = grid[0]
    solution = _newton_cg(z, targets, len(classes), chosen, solutions.get(chosen),
                          preconditioner, max_iterations, tolerance)
    converged &= solution.converged
    products += solution.hessian_products
    if not solution.converged:
        _log.warning("The linear probe stopped before convergence (l2=%g, %d Newton "
                     "iterations, gradient %.3g): %s", chosen, solution.iterations,
                     solution.grad_norm, solution.message)
    weights = solution.weights
    if row_space is not None:
        weights = row_space.to_features(weights)
    bias = solution.bias
    # The gradient on the D-dimensional problem itself, whatever the solver's coordinates.
    train_logits = xs @ weights + bias
    grad_norm = _max_abs_gradient(xs, targets, train_logits, weights, chosen)
    train_accuracy = _accuracy(train_logits, targets)
    del xs, z, row_space

    test_accuracy = None
    if xt is not None:
        unseen = ~np.isin(yt, classes)
        if unseen.any():
            _log.warning("%d test examples belong to classes absent from the training set "
                         "(%s); they count as errors.", unseen.sum(),
                         np.unique(yt[unseen]).tolist())
        predicted = _predict_standardised(xt, mean, std, weights, bias)
        test_accuracy = float(np.mean(classes[predicted] == yt))

    return LinearProbeResult(
        train_accuracy=train_accuracy, test_accuracy=test_accuracy, l2=chosen,
        validation_accuracy=validation, iterations=solution.iterations, converged=converged,
        grad_norm=grad_norm, num_classes=len(classes), classes=classes,
        weights=weights.astype(dtype), bias=bias.astype(dtype), feature_mean=mean,
        feature_std=std, hessian_products=products)


def _solve_dtype(dtype, tolerance, solver_entries):
    if (np.dtype(dtype) == np.float64 or tolerance < _FLOAT32_MIN_TOLERANCE
            or solver_entries <= _FLOAT64_MAX_ENTRIES):
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def _check_probe_memory(n, dim, solve_dtype):
    """Refuses training features whose solver copies would not fit in memory."""
    item = solve_dtype.itemsize
    m = min(n, dim)
    needed = (n * dim * item                                # The standardised copy.
              + (n * n * (8 + 8 + item) if dim > n else 0)  # Gram, its factor, coordinates.
              + 4 * m * min(m, _PRECONDITIONER_RANK) * item
              + 8 * n * 64 * 8)                             # Logits-sized temporaries.
    check_memory(needed, f"The linear probe on {n} x {dim} training features",
                 "Subsample the training set (--max_train_examples, or fewer rows to "
                 "fit_linear_probe), or use a machine with more memory.")


def _standardise(x, rows, dtype):
    """Returns the standardised rows `rows` of `x` as a new `dtype` array, and the mean and std."""
    xs = np.empty([len(rows), x.shape[1]], dtype)
    for i in range(0, len(rows), 4096):  # Block by block: no full-size temporary.
        xs[i:i + 4096] = x[rows[i:i + 4096]]
    mean = xs.mean(axis=0)
    xs -= mean
    # Sum of squares block by block: no second full-size temporary.
    squares = np.zeros(xs.shape[1], np.float64)
    for i in range(0, len(xs), 4096):
        squares += np.einsum("ij,ij->j", xs[i:i + 4096], xs[i:i + 4096], dtype=np.float64)
    std = np.sqrt(squares / len(xs)).astype(dtype)
    std[std == 0] = 1  # Constant features carry no signal; avoid 0/0.
    xs /= std
    return xs, mean, std


class _RowSpace:
    """Coordinates of the rows of `x` [N, D] (D > N) in an orthonormal basis of their span.

    A pivoted Cholesky factorisation of the Gram matrix, ``P^T X X^T P = L L^T``
    with L of rank r: the first r pivot rows ``X1 = L1 B^T`` define the basis
    ``B = X1^T L1^-T`` (orthonormal: ``B^T B = L1^-1 X1 X1^T L1^-T = I``), and
    every row's coordinates are its row of ``P L``. Weights ``W_r`` on the
    coordinates are ``B W_r`` on the features. A Cholesky factorisation costs a
    fraction of an eigendecomposition and stays accurate; pivots below a
    tolerance are directions with no measurable data (the centring alone
    removes one).
    """

    def __init__(self, x):
        gram = (x @ x.T).astype(np.float64)
        # float32 Gram entries carry ~1e-7 relative rounding that accumulates over D.
        relative = 1e-10 if x.dtype == np.float64 else 1e-5
        factor, pivots, rank, _ = scipy.linalg.lapack.dpstrf(
            gram, tol=relative * float(np.max(np.diag(gram))), lower=1, overwrite_a=1)
        del gram
        rank = max(int(rank), 1)
        pivots = pivots - 1  # LAPACK counts from 1.
        lower = np.tril(factor[:, :rank])
        self.coordinates = np.empty([len(x), rank], x.dtype)
        self.coordinates[pivots] = lower
        self._features = x  # A reference, not a copy.
        self._pivot_rows = pivots[:rank]
        self._factor = lower[:rank]

    def to_features(self, weights):
        """Maps weights [r, K] on the coordinates to weights [D, K] on the features."""
        solved = scipy.linalg.solve_triangular(self._factor, weights.astype(np.float64),
                                               lower=True, trans="T")
        # X1^T solved, as X^T of a coefficient matrix that is zero off the pivot rows.
        coefficients = np.zeros([len(self._features), weights.shape[1]], self._features.dtype)
        coefficients[self._pivot_rows] = solved
        return _transposed_product(self._features, coefficients)


@dataclasses.dataclass(frozen=True)
class _Preconditioner:
    """An approximation of the Hessian, inverted cheaply inside conjugate gradients.

    The multinomial Hessian is ``z^T S z / N + l2``, with S the softmax
    curvature. Approximating ``S`` by its mean per class (``c_k``) and the
    covariance ``z^T z / N`` by its top eigenpairs ``(e_j, v_j)`` plus one
    value ``tail`` for the rest gives ``H_k ~ V diag(e c_k + l2) V^T +
    (tail c_k + l2)(I - V V^T)``, inverted in closed form.

    Attributes:
        basis: ``[m, k]`` orthonormal top eigenvectors of the covariance.
        eigenvalues: ``[k]`` their eigenvalues.
        tail: The eigenvalue assumed for all other directions.
    """

    basis: np.ndarray
    eigenvalues: np.ndarray
    tail: float

    @classmethod
    def of(cls, z, seed):
        """Builds the preconditioner of features `z` [N, m] by randomised subspace iteration.

        Args:
            z: The features the solver works on.
            seed: Seed of the random start.

        Returns:
            A `_Preconditioner`.
        """
        n, m = z.shape
        rank = min(_PRECONDITIONER_RANK, m)
        if rank == m:  # Small: the exact eigendecomposition is as cheap.
            eigenvalues, basis = np.linalg.eigh((z.T @ z).astype(np.float64) / n)
            return cls(basis.astype(z.dtype), np.maximum(eigenvalues, 0), 0.0)
        subspace = np.random.default_rng(seed).standard_normal([m, rank]).astype(z.dtype)
        for _ in range(_SUBSPACE_ITERATIONS):
            subspace, _ = np.linalg.qr(z.T @ (z @ subspace))
        projected = z @ subspace
        eigenvalues, rotation = np.linalg.eigh((projected.T @ projected).astype(np.float64) / n)
        eigenvalues = np.maximum(eigenvalues, 0)
        # The smallest Ritz value bounds the eigenvalues left out from above.
        return cls((subspace @ rotation.astype(z.dtype)), eigenvalues, float(eigenvalues[0]))

    def solve(self, residual, curvature, l2):
        """Returns ``M^-1 residual`` for weight directions [m, K]."""
        scale = np.outer(self.eigenvalues, curvature) + l2
        # With l2 = 0 a zero eigenvalue would divide by 0: floor the scale
        # relative to the largest, as a pseudo-inverse would.
        floor = max(float(scale.max()), np.finfo(np.float64).tiny) * np.finfo(residual.dtype).eps
        coefficients = _transposed_product(self.basis, residual)
        solved = self.basis @ (coefficients / np.maximum(scale, floor)).astype(residual.dtype)
        if self.basis.shape[1] == self.basis.shape[0]:
            return solved  # A complete basis: nothing outside it.
        rest = residual - self.basis @ coefficients
        return (solved + rest / np.maximum(self.tail * curvature + l2, floor)).astype(
            residual.dtype)


@dataclasses.dataclass(frozen=True)
class _Solution:
    weights: np.ndarray
    bias: np.ndarray
    iterations: int
    hessian_products: int
    converged: bool
    grad_norm: float
    message: str

    def logits_of(self, z):
        return z @ self.weights + self.bias


def _objective(z, targets, weights, bias, l2, logits=None):
    """Returns (loss, softmax probabilities, gradient of weights, gradient of bias)."""
    n = len(z)
    rows = np.arange(n)
    if logits is None:
        logits = z @ weights + bias
    log_norm = scipy.special.logsumexp(logits, axis=1)
    loss = ((log_norm.sum(dtype=np.float64) - logits[rows, targets].sum(dtype=np.float64)) / n
            + 0.5 * l2 * np.sum(weights.astype(np.float64)**2))
    probs = np.exp(logits - log_norm[:, None])
    residual = probs.copy()
    residual[rows, targets] -= 1
    residual /= n
    return float(loss), probs, _transposed_product(z, residual) + l2 * weights, residual.sum(axis=0)


def _newton_cg(z, targets, num_classes, l2, start, preconditioner, max_iterations, tolerance):
    """Minimises the regularised mean cross-entropy on `z` by preconditioned Newton-CG.

    Args:
        z: ``[N, m]`` features (standardised, or row-space coordinates).
        targets: ``[N]`` class indices in ``[0, num_classes)``.
        num_classes: K.
        l2: L2 strength on the weights (the bias is not regularised).
        start: A `_Solution` to start from, or None for zeros.
        preconditioner: A `_Preconditioner` of `z`'s covariance.
        max_iterations: Newton iteration budget.
        tolerance: Stop once the gradient's largest absolute entry is at most this.

    Returns:
        A `_Solution`.
    """
    n, m = z.shape
    dtype = z.dtype
    if start is None:
        weights, bias = np.zeros([m, num_classes], dtype), np.zeros(num_classes, dtype)
    else:
        weights, bias = start.weights.astype(dtype), start.bias.astype(dtype)
    # Losses are sums of N rounded terms: a step that changes the loss by less
    # than their rounding is judged on the gradient alone.
    noise = 64 * np.finfo(dtype).eps
    loss, probs, grad_w, grad_b = _objective(z, targets, weights, bias, l2)
    products, message = 0, "iteration budget exhausted"
    for iteration in range(max_iterations + 1):
        grad_norm = max(float(np.abs(grad_w).max()), float(np.abs(grad_b).max()))
        if grad_norm <= tolerance:
            return _Solution(weights, bias, iteration, products, True, grad_norm, "converged")
        if iteration == max_iterations:
            break
        step_w, step_b, steps = _conjugate_gradient(z, probs, grad_w, grad_b, l2,
                                                    preconditioner, tolerance)
        products += steps
        slope = float(np.sum(grad_w * step_w) + np.sum(grad_b * step_b))
        length = 1.0
        for _ in range(_MAX_LINE_SEARCH_STEPS):
            trial = (weights + length * step_w, bias + length * step_b)
            trial_loss, trial_probs, trial_w, trial_b = _objective(z, targets, *trial, l2)
            if trial_loss <= loss + 1e-4 * length * slope + noise * abs(loss):
                break
            length /= 2
        else:
            message = "the line search found no decrease (rounding limits the tolerance)"
            break
        (weights, bias), loss, probs, grad_w, grad_b = (trial, trial_loss, trial_probs,
                                                        trial_w, trial_b)
    return _Solution(weights, bias, iteration, products, False, grad_norm, message)


def _conjugate_gradient(z, probs, grad_w, grad_b, l2, preconditioner, tolerance):
    """Approximately solves ``H d = -g``; returns (d_weights, d_bias, Hessian products).

    Stops when the residual, which is the gradient the quadratic model predicts
    after the step, has no entry above half the tolerance, or has shrunk by
    the inexact-Newton forcing factor ``min(0.5, sqrt(|g|))``.

    Adding one vector to every class's logits leaves the softmax unchanged, so
    the Hessian is singular along such shifts of the bias (never regularised)
    and, when l2 = 0, of the weights. The gradient has no component there;
    the CG vectors are kept out of those directions too (`_shift_free`), or
    rounding lets them grow without bound.
    """
    n = len(z)
    curvature = np.mean(probs * (1 - probs), axis=0)  # Per class, for the preconditioner.
    bias_curvature = np.maximum(curvature, np.finfo(probs.dtype).tiny)

    def preconditioned(res_w, res_b):
        pre_w = preconditioner.solve(res_w, curvature, l2)
        return (_shift_free(pre_w) if l2 == 0 else pre_w), _shift_free(res_b / bias_curvature)
    grad_size = np.sqrt(np.sum(grad_w**2) + np.sum(grad_b**2))
    target = min(0.5, np.sqrt(grad_size)) * grad_size
    step_w, step_b = np.zeros_like(grad_w), np.zeros_like(grad_b)
    res_w, res_b = -grad_w, -grad_b
    pre_w, pre_b = preconditioned(res_w, res_b)
    dir_w, dir_b = pre_w, pre_b
    inner = float(np.sum(res_w * pre_w) + np.sum(res_b * pre_b))
    for products in range(1, _MAX_CG_STEPS + 1):
        # Hessian of the mean softmax cross-entropy times (dir_w, dir_b).
        change = z @ dir_w + dir_b
        change = probs * (change - np.sum(probs * change, axis=1, keepdims=True)) / n
        hess_w = _transposed_product(z, change) + l2 * dir_w
        hess_b = change.sum(axis=0)
        curve = float(np.sum(dir_w * hess_w) + np.sum(dir_b * hess_b))
        if curve <= 0:  # Flat direction (l2 = 0 and saturated probabilities).
            break
        alpha = inner / curve
        step_w += alpha * dir_w
        step_b += alpha * dir_b
        res_w -= alpha * hess_w
        res_b -= alpha * hess_b
        if (max(np.abs(res_w).max(), np.abs(res_b).max()) <= tolerance / 2
                or np.sqrt(np.sum(res_w**2) + np.sum(res_b**2)) <= target):
            break
        pre_w, pre_b = preconditioned(res_w, res_b)
        new_inner = float(np.sum(res_w * pre_w) + np.sum(res_b * pre_b))
        dir_w = pre_w + (new_inner / inner) * dir_w
        dir_b = pre_b + (new_inner / inner) * dir_b
        inner = new_inner
    if not step_w.any() and not step_b.any():
        step_w, step_b = -grad_w, -grad_b  # No curvature found: fall back to the gradient.
    return step_w, step_b, products


def _shift_free(values):
    """Removes the part of `values` [..., K] that shifts all K classes alike."""
    return values - values.mean(axis=-1, keepdims=True)


def _transposed_product(a, b):
    """Returns ``a.T @ b`` for a tall `a` and a narrow `b`."""
    # As (b^T a)^T: BLAS then reads `a` row by row; measured 1.6-1.9x faster for
    # [2000, 2000] x [2000, 12] float32 than a.T @ b.
    return (b.T @ a).T


def _max_abs_gradient(x, targets, logits, weights, l2):
    """Largest absolute gradient entry of the problem on standardised features `x`."""
    residual = scipy.special.softmax(logits.astype(np.float64), axis=1)
    residual[np.arange(len(x)), targets] -= 1
    residual /= len(x)
    grad_w = _transposed_product(x, residual.astype(x.dtype)) + l2 * weights
    return max(float(np.abs(grad_w).max()), float(np.abs(residual.sum(axis=0)).max()))


def _predict_standardised(features, mean, std, weights, bias, block=4096):
    """Class indices of raw `features`, standardised block by block (no full-size copy)."""
    out = []
    for i in range(0, len(features), block):
        xb = (np.asarray(features[i:i + block], weights.dtype) - mean) / std
        out.append(np.argmax(xb @ weights + bias, axis=1))
    return np.concatenate(out)


def _as_matrix(features, name):
    x = features if isinstance(features, np.ndarray) else np.asarray(features)
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


def _accuracy(logits, targets):
    return float(np.mean(np.argmax(logits, axis=1) == targets))
