"""Tests of keras_ssl_eval.linear (the linear probe)."""

import numpy as np
import pytest
import sklearn.linear_model  # a test dependency (the [test] extra): missing, the suite fails

from keras_ssl_eval.linear import DEFAULT_L2_GRID, fit_linear_probe


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
    reference = sklearn.linear_model.LogisticRegression(C=1 / (l2 * len(x)), tol=1e-10, max_iter=5000)
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
