"""iBOT's and DINOv2's losses against numpy loops of the papers' formulas."""

import numpy as np
import pytest
import tensorflow as tf

from keras_ssl import losses
from tests.helpers.numpy_losses import normalize

RNG = np.random.RandomState(31)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _log_softmax(x):
    return np.log(_softmax(x))


def numpy_koleo(x, eps=1e-8):
    """-1/n sum_i log(min_{j != i} ||x_i - x_j|| + eps) of the l2-normalised rows."""
    x = normalize(x.astype(np.float64))
    total = 0.0
    for i in range(len(x)):
        nearest = min(np.linalg.norm(x[i] - x[j]) for j in range(len(x)) if j != i)
        total += np.log(nearest + eps)
    return -total / len(x)


def numpy_sinkhorn(logits, temperature, iterations):
    """SwAV's / DINOv2's Sinkhorn-Knopp, written out: Q [K, B], rows to 1/K, columns to 1/B."""
    q = np.exp(logits.astype(np.float64) / temperature).T
    k, b = q.shape
    q /= q.sum()
    for _ in range(iterations):
        for row in range(k):
            q[row] /= q[row].sum() * k
        for column in range(b):
            q[:, column] /= q[:, column].sum() * b
    return (q * b).T


def numpy_masked_patch_loss(student, targets, mask, tau):
    """mean over images of the mean over its masked patches of CE(target, softmax(s / tau))."""
    per_image = []
    for b in range(len(student)):
        terms = [-(targets[b, n] * _log_softmax(student[b, n] / tau)).sum()
                 for n in range(student.shape[1]) if mask[b, n]]
        per_image.append(np.mean(terms) if terms else 0.0)
    return np.mean(per_image)


def test_koleo_matches_numpy():
    x = RNG.normal(size=(9, 5)).astype(np.float32)
    np.testing.assert_allclose(losses.koleo_loss(x).numpy(), numpy_koleo(x), rtol=1e-5)


def test_koleo_is_lower_for_spread_features_and_finite_for_duplicates():
    spread = np.eye(4, dtype=np.float32)
    close = np.eye(4, dtype=np.float32) + 5.0
    assert float(losses.koleo_loss(spread)) < float(losses.koleo_loss(close))
    duplicates = tf.Variable(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32))
    with tf.GradientTape() as tape:
        loss = losses.koleo_loss(duplicates)
    assert np.isfinite(float(loss))
    assert np.all(np.isfinite(tape.gradient(loss, duplicates).numpy()))


@pytest.mark.parametrize("iterations", [1, 3])
def test_sinkhorn_knopp_centering_matches_a_numpy_loop(iterations):
    logits = RNG.normal(size=(12, 6)).astype(np.float32)
    targets = losses.sinkhorn_knopp_centering(logits, 0.5, iterations).numpy()
    expected = numpy_sinkhorn(logits, 0.5, iterations)
    np.testing.assert_allclose(targets, expected, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-5)  # a column step ends each round
    # SwAV's codes are the same normalisation at epsilon = tau_t.
    np.testing.assert_allclose(targets, losses.sinkhorn_knopp(logits, 0.5, iterations).numpy(),
                               rtol=1e-4, atol=1e-7)


def test_sinkhorn_knopp_centering_equipartitions_after_many_iterations():
    logits = RNG.normal(size=(12, 4)).astype(np.float32)
    targets = losses.sinkhorn_knopp_centering(logits, 0.5, iterations=100).numpy()
    np.testing.assert_allclose(targets.sum(0), 12 / 4, rtol=1e-3)  # each prototype n / K
    np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-5)


def test_weighted_sinkhorn_knopp_uses_only_the_rows_that_take_part():
    logits = RNG.normal(size=(10, 5)).astype(np.float32)
    weights = np.array([1, 0, 1, 1, 0, 0, 1, 1, 0, 1], bool)
    targets = losses.sinkhorn_knopp_centering(logits, 0.3, 3, weights=weights).numpy()
    np.testing.assert_allclose(targets[weights], numpy_sinkhorn(logits[weights], 0.3, 3),
                               rtol=1e-4, atol=1e-7)
    assert np.all(targets[~weights] == 0)
    none = losses.sinkhorn_knopp_centering(logits, 0.3, 3, weights=np.zeros(10, bool)).numpy()
    assert np.all(none == 0)  # no masked patch anywhere: zero targets, no NaN


def test_teacher_targets_softmax_centring_and_unknown_centering():
    logits, center = RNG.normal(size=(3, 4)), RNG.normal(size=4)
    np.testing.assert_allclose(
        losses.teacher_targets(logits.astype(np.float32), "softmax", center.astype(np.float32),
                               0.04).numpy(),
        _softmax((logits - center) / 0.04), rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="Unknown centering 'mean'; choose one of"):
        losses.teacher_targets(logits, "mean", center, 0.04)


def test_cross_view_loss_with_softmax_targets_is_dino_loss():
    student = [RNG.normal(size=(4, 7)).astype(np.float32) for _ in range(4)]
    teacher = [RNG.normal(size=(4, 7)).astype(np.float32) for _ in range(2)]
    center = (RNG.normal(size=7) * 0.1).astype(np.float32)
    targets = [losses.teacher_targets(t, "softmax", center, 0.04) for t in teacher]
    np.testing.assert_allclose(losses.cross_view_loss(student, targets, 0.1).numpy(),
                               losses.dino_loss(student, teacher, center, 0.1, 0.04).numpy(),
                               rtol=1e-6)


def test_masked_patch_loss_matches_numpy_and_reads_masked_patches_only():
    student = RNG.normal(size=(3, 6, 5)).astype(np.float32)
    targets = _softmax(RNG.normal(size=(3, 6, 5))).astype(np.float32)
    mask = np.array([[1, 0, 1, 0, 0, 1], [0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]], bool)
    loss = losses.masked_patch_loss(student, targets, mask, 0.1).numpy()
    np.testing.assert_allclose(loss, numpy_masked_patch_loss(student, targets, mask, 0.1),
                               rtol=1e-5)
    changed = student.copy()
    changed[~mask] = RNG.normal(size=changed[~mask].shape)
    np.testing.assert_allclose(losses.masked_patch_loss(changed, targets, mask, 0.1).numpy(),
                               loss, rtol=1e-6)
    assert float(losses.masked_patch_loss(student, targets, np.zeros_like(mask), 0.1)) == 0.0
