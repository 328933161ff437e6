"""Tests of keras_ssl_eval.probes.linear (the linear probe)."""

import numpy as np
import pytest
import scipy.special
from sklearn.linear_model import LogisticRegression

from keras_ssl_eval.probes import _memory, heads, knn, linear
from keras_ssl_eval.probes.linear import DEFAULT_L2_GRID, fit_linear_probe


def _blobs(n, dim, num_classes, spread, seed):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).normal(size=[num_classes, dim]) * 3
    labels = rng.integers(0, num_classes, n)
    return centres[labels] + spread * rng.normal(size=[n, dim]), labels


def test_separable_features_reach_full_accuracy():
    x, y = _blobs(120, 6, 3, 0.1, seed=0)
    xt, yt = _blobs(60, 6, 3, 0.1, seed=1)
    result = fit_linear_probe(x, y, xt, yt)
    assert result.test_accuracy == 1.0 and result.train_accuracy == 1.0
    assert result.l2 in DEFAULT_L2_GRID and set(result.validation_accuracy) == set(DEFAULT_L2_GRID)
    assert result.num_classes == 3 and result.iterations > 0 and result.grad_norm >= 0
    np.testing.assert_array_equal(result.predict(xt), yt)


def test_random_labels_give_chance_accuracy():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=[300, 20]), rng.integers(0, 5, 300)
    xt, yt = rng.normal(size=[500, 20]), rng.integers(0, 5, 500)
    result = fit_linear_probe(x, y, xt, yt)
    assert abs(result.test_accuracy - 0.2) < 0.07


@pytest.mark.parametrize("l2", [1e-3, 1e-1])
def test_matches_scikit_learn(l2):
    x, y = _blobs(400, 12, 4, 6.0, seed=2)  # Overlapping classes: accuracy well below 1.
    xt, yt = _blobs(400, 12, 4, 6.0, seed=3)
    ours = fit_linear_probe(x, y, xt, yt, l2_grid=[l2], tolerance=1e-8, dtype=np.float64)
    assert ours.converged and ours.validation_accuracy == {}
    mean, std = x.mean(0), x.std(0)
    # sklearn minimises C * sum(CE) + ||W||^2 / 2, i.e. ours with l2 = 1 / (C * n).
    reference = LogisticRegression(C=1 / (l2 * len(x)), tol=1e-10, max_iter=5000)
    reference.fit((x - mean) / std, y)
    theirs = reference.score((xt - mean) / std, yt)
    assert 0.5 < ours.test_accuracy < 0.99
    assert abs(ours.test_accuracy - theirs) <= 0.005, (ours.test_accuracy, theirs)
    np.testing.assert_allclose(ours.weights, reference.coef_.T, atol=2e-3)


def test_float32_solver_agrees():
    x, y = _blobs(200, 8, 3, 2.0, seed=4)
    a = fit_linear_probe(x, y, x, y, l2_grid=[1e-2], dtype=np.float64)
    b = fit_linear_probe(x, y, x, y, l2_grid=[1e-2], dtype=np.float32)
    assert abs(a.test_accuracy - b.test_accuracy) <= 0.01


def test_class_absent_from_training_counts_as_error():
    x, y = _blobs(90, 5, 2, 0.1, seed=5)
    xt, yt = _blobs(40, 5, 2, 0.1, seed=6)
    yt = yt.copy()
    yt[:10] = 7  # A class the probe never saw.
    result = fit_linear_probe(x, y, xt, yt, l2_grid=[1e-3])
    assert result.num_classes == 2
    assert result.test_accuracy == pytest.approx(30 / 40)


def test_labels_need_not_be_contiguous():
    x, y = _blobs(60, 4, 2, 0.1, seed=7)
    result = fit_linear_probe(x, np.where(y == 0, 3, 10), x, np.where(y == 0, 3, 10))
    assert result.test_accuracy == 1.0 and list(result.classes) == [3, 10]


def test_one_class_is_an_error():
    with pytest.raises(ValueError, match="at least two classes"):
        fit_linear_probe(np.ones([5, 3]), np.zeros(5))


def test_unlabelled_is_an_error():
    with pytest.raises(ValueError, match="unlabelled"):
        fit_linear_probe(np.ones([4, 3]), [0, 1, -1, 1])


def test_shape_errors():
    with pytest.raises(ValueError, match="3 entries for 4"):
        fit_linear_probe(np.ones([4, 3]), [0, 1, 1])
    with pytest.raises(ValueError, match="2 dimensions, train_features 3"):
        fit_linear_probe(np.eye(4)[:, :3], [0, 1, 0, 1], np.ones([2, 2]), [0, 1])


def test_to_dict_is_json_ready():
    import json  # pylint: disable=import-outside-toplevel

    x, y = _blobs(40, 3, 2, 0.5, seed=8)
    summary = fit_linear_probe(x, y, x, y, l2_grid=[1e-3, 1e-2]).to_dict()
    assert set(summary) >= {"train_accuracy", "test_accuracy", "l2", "iterations", "converged",
                            "grad_norm", "validation_accuracy"}
    json.dumps(summary)


def test_more_dimensions_than_examples_solves_the_same_problem():
    """The row-space reduction used when D > N gives the full-space optimum."""
    x, y = _blobs(60, 200, 3, 4.0, seed=7)
    xt, yt = _blobs(60, 200, 3, 4.0, seed=8)
    reduced = fit_linear_probe(x, y, xt, yt, l2_grid=[1e-2], tolerance=1e-9, dtype=np.float64)
    # Appending examples that are copies of the data turns D > N into D < N
    # without changing the optimum of the mean loss.
    full = fit_linear_probe(np.tile(x, (4, 1)), np.tile(y, 4), xt, yt, l2_grid=[1e-2],
                            tolerance=1e-9, dtype=np.float64)
    np.testing.assert_allclose(reduced.weights, full.weights, atol=1e-4)
    np.testing.assert_allclose(reduced.predict(xt), full.predict(xt))
    assert reduced.test_accuracy == full.test_accuracy


def test_small_float32_problems_converge_to_tight_tolerances():
    # Solved in float64 once small enough, so float32 rounding cannot stall
    # the line search before the tolerance is met.
    x, y = _blobs(300, 20, 4, 6.0, seed=9)
    result = fit_linear_probe(x.astype(np.float32), y, l2_grid=[1e-3], tolerance=1e-8)
    assert result.converged and result.grad_norm < 1e-6


# ------------------------------------------- the Newton-CG solver's optimum --


def _standardised(x, like=None):
    """`x` standardised with the mean and std of `like` (default: `x` itself)."""
    like = x if like is None else like
    std = like.std(0)
    std[std == 0] = 1
    return (x - like.mean(0)) / std


def _objective(x, targets, weights, bias, l2):
    """The probe's objective on standardised `x`, in float64."""
    logits = x @ weights + bias
    cross_entropy = scipy.special.logsumexp(logits, axis=1) - logits[np.arange(len(x)), targets]
    return cross_entropy.mean() + 0.5 * l2 * np.sum(weights**2)


def _scikit_learn(x, y, l2):
    """scikit-learn's multinomial fit of the same problem: l2 = 1 / (C N)."""
    return LogisticRegression(C=1 / (l2 * len(x)), tol=1e-10, max_iter=10000).fit(x, y)


@pytest.fixture(params=["float64", "float32 randomised preconditioner"])
def solver_path(request, monkeypatch):
    """Runs a test on the small-problem path and on the large-problem one.

    The second forces float32 products and the randomised (rank < m)
    preconditioner, which only problems of 2^20+ entries get by themselves.
    """
    solve_dtypes = []
    original = linear._solve_dtype  # pylint: disable=protected-access

    def recording(*args):
        solve_dtypes.append(original(*args))
        return solve_dtypes[-1]

    monkeypatch.setattr(linear, "_solve_dtype", recording)
    if request.param != "float64":
        monkeypatch.setattr(linear, "_FLOAT64_MAX_ENTRIES", 0)
        monkeypatch.setattr(linear, "_PRECONDITIONER_RANK", 8)
    yield request.param
    assert solve_dtypes and all(dtype == np.dtype(request.param.split()[0])
                                for dtype in solve_dtypes)


@pytest.mark.parametrize("n,dim", [(240, 30), (60, 150)], ids=["N>D", "N<D"])
def test_newton_cg_reaches_scikit_learns_optimum(n, dim, solver_path):
    x, y = _blobs(n, dim, 4, 5.0, seed=11)
    xt, yt = _blobs(300, dim, 4, 5.0, seed=12)
    l2 = 1e-2
    ours = fit_linear_probe(x, y, xt, yt, l2_grid=[l2], tolerance=1e-5)
    assert ours.converged and ours.grad_norm <= 1e-5
    xs, targets = _standardised(x), y
    reference = _scikit_learn(xs, y, l2)
    ours_objective = _objective(xs, targets, ours.weights.astype(np.float64), ours.bias, l2)
    theirs_objective = _objective(xs, targets, reference.coef_.T, reference.intercept_, l2)
    # At gradient tolerance g the objective is within ~g^2 / l2 of the optimum.
    assert ours_objective == pytest.approx(theirs_objective, rel=1e-6, abs=1e-7)
    theirs = reference.score(_standardised(xt, like=x), yt)
    assert abs(ours.test_accuracy - theirs) <= 0.005, (ours.test_accuracy, theirs)


@pytest.mark.parametrize("n,dim", [(200, 20), (80, 120)], ids=["N>D", "N<D"])
def test_l2_grid_path_matches_scikit_learn_at_every_l2(n, dim, solver_path):
    """Every hold-out fit of the warm-started path, and the refit, is scikit-learn's optimum."""
    x, y = _blobs(n, dim, 3, 6.0, seed=13)
    grid = (1e-1, 1e-2, 1e-3)
    result = fit_linear_probe(x, y, x, y, l2_grid=grid, seed=5, tolerance=1e-5)
    assert result.converged and result.grad_norm <= 1e-5
    fit_idx, val_idx = linear._holdout(n, 0.2, 5)  # pylint: disable=protected-access
    # The hold-out split is standardised with the statistics of the whole training set.
    xs = _standardised(x)
    for l2 in grid:
        reference = _scikit_learn(xs[fit_idx], y[fit_idx], l2)
        assert result.validation_accuracy[l2] == pytest.approx(
            reference.score(xs[val_idx], y[val_idx]), abs=1 / len(val_idx) + 1e-9)
    reference = _scikit_learn(xs, y, result.l2)
    ours = _objective(xs, y, result.weights.astype(np.float64), result.bias, result.l2)
    theirs = _objective(xs, y, reference.coef_.T, reference.intercept_, result.l2)
    assert ours == pytest.approx(theirs, rel=1e-6, abs=1e-7)
    assert abs(result.train_accuracy - reference.score(xs, y)) <= 0.005


def test_row_space_coordinates_are_exact():
    """The pivoted-Cholesky coordinates reproduce the Gram matrix; weights map back exactly."""
    rng = np.random.default_rng(14)
    x = _standardised(rng.normal(size=[30, 80]))  # Centred: rank 29.
    space = linear._RowSpace(x)  # pylint: disable=protected-access
    z = space.coordinates
    assert z.shape == (30, 29)
    np.testing.assert_allclose(z @ z.T, x @ x.T, atol=1e-9)
    weights = rng.normal(size=[29, 3])
    np.testing.assert_allclose(x @ space.to_features(weights), z @ weights, atol=1e-9)
    # An orthonormal basis keeps the norm, so the l2 penalty is the same problem.
    np.testing.assert_allclose(np.linalg.norm(space.to_features(weights)),
                               np.linalg.norm(weights), rtol=1e-10)


# ------------------------------------------------------- too large for memory --


@pytest.fixture
def little_memory(monkeypatch):
    """Pretends only 1 MiB of memory is available."""
    monkeypatch.setattr(_memory, "available_bytes", lambda: 2**20)


def test_linear_probe_refuses_features_too_large_for_memory(little_memory):
    with pytest.raises(MemoryError, match=r"600 x 400 training features needs about .* MiB "
                                          r"of memory, but only 1.0 MiB .*--max_train_examples"):
        fit_linear_probe(np.zeros([600, 400], np.float32), np.arange(600) % 2)


def test_knn_and_heads_refuse_features_too_large_for_memory(little_memory):
    x, y = np.zeros([600, 400], np.float32), np.arange(600) % 2
    with pytest.raises(MemoryError, match=r"kNN on 600 x 400 .*--max_train_examples"):
        knn.knn_classify(x, y, x[:10])
    with pytest.raises(MemoryError, match=r"mlp head on 600 x 400 .*--max_train_examples"):
        heads.train_head(x, y, head="mlp", epochs=1)


def test_memory_check_passes_what_fits():
    _memory.check_memory(1024, "a tiny matrix", "never shown")


def test_no_regularisation_reaches_scikit_learns_optimum(solver_path):
    """l2 = 0: the Hessian is singular along class shifts; the solver stays out of them."""
    x, y = _blobs(150, 5, 3, 4.0, seed=15)
    ours = fit_linear_probe(x, y, l2_grid=[0.0])
    assert ours.converged and ours.grad_norm <= 1e-5
    xs = _standardised(x)
    reference = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10000).fit(xs, y)
    assert _objective(xs, y, ours.weights.astype(np.float64), ours.bias, 0.0) == pytest.approx(
        _objective(xs, y, reference.coef_.T, reference.intercept_, 0.0), rel=1e-6)
