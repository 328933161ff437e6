"""Contrastive losses against brute-force numpy versions of their formulas."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_ssl import losses
from tests.helpers import HELPERS
from tests.helpers.numpy_losses import normalize, numpy_triplet


def _log_softmax(row):
    m = row.max()
    return row - m - np.log(np.exp(row - m).sum())


def numpy_nt_xent(z1, z2, tau):
    """Loop over the 2B anchors: -log softmax of the positive among the 2B-1 others."""
    h1, h2 = normalize(z1), normalize(z2)
    b = len(h1)
    total_a = total_b = 0.0
    for i in range(b):
        # view 1 anchor: candidates h2[0..B) then h1[j != i]
        cand = np.concatenate([h2, np.delete(h1, i, 0)])
        total_a -= _log_softmax(cand @ h1[i] / tau)[i]
        cand = np.concatenate([h1, np.delete(h2, i, 0)])
        total_b -= _log_softmax(cand @ h2[i] / tau)[i]
    return total_a / b + total_b / b


def test_nt_xent_matches_numpy():
    rng = np.random.RandomState(0)
    z1, z2 = rng.randn(6, 5).astype(np.float32), rng.randn(6, 5).astype(np.float32)
    loss, logits_ab, labels = losses.nt_xent_loss(z1, z2, temperature=0.5)
    assert float(loss) == pytest.approx(numpy_nt_xent(z1, z2, 0.5), rel=1e-5)
    assert logits_ab.shape == (6, 6)
    assert labels.numpy().tolist() == list(range(6))


def test_nt_xent_is_low_for_matching_views():
    z = np.random.RandomState(1).randn(8, 16).astype(np.float32)
    same = float(losses.nt_xent_loss(z, z, temperature=0.1)[0])
    other = float(losses.nt_xent_loss(z, np.roll(z, 1, 0), temperature=0.1)[0])
    assert same < other


def test_info_nce_matches_numpy():
    rng = np.random.RandomState(2)
    q, k, queue = rng.randn(4, 8), rng.randn(4, 8), rng.randn(10, 8)
    loss, logits = losses.info_nce_loss(q.astype(np.float32), k.astype(np.float32), queue.astype(np.float32), 0.2)
    qn, kn, nn = normalize(q), normalize(k), normalize(queue)
    expected = np.mean([
        -_log_softmax(np.concatenate([[qn[i] @ kn[i]], nn @ qn[i]]) / 0.2)[0] for i in range(4)
    ])
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert logits.shape == (4, 11)


def test_nce_matches_numpy():
    rng = np.random.RandomState(3)
    pos, noise = rng.uniform(-1, 1, 5), rng.uniform(-1, 1, (5, 7))
    n, tau = 100, 0.1
    loss, z = losses.nce_loss(pos.astype(np.float32), noise.astype(np.float32), n, tau)
    zz = np.exp(noise / tau).mean() * n
    h = lambda s: (np.exp(s / tau) / zz) / (np.exp(s / tau) / zz + 7 / n)  # noqa: E731
    expected = -np.mean(np.log(h(pos)) + np.log(1 - h(noise)).sum(1))
    assert float(z) == pytest.approx(zz, rel=1e-5)
    assert float(loss) == pytest.approx(expected, rel=1e-4)
    fixed, _ = losses.nce_loss(pos, noise, n, tau, normalization_constant=3.0 * n)
    zz = 3.0 * n
    assert float(fixed) == pytest.approx(-np.mean(np.log(h(pos)) + np.log(1 - h(noise)).sum(1)), rel=1e-4)


@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard"])
def test_triplet_matches_numpy(mining):
    rng = np.random.RandomState(4)
    e = rng.randn(12, 6).astype(np.float32)
    labels = np.repeat(np.arange(4), 3)
    for margin in (0.5, 2.0):
        got = float(losses.triplet_loss(e, labels, margin=margin, mining=mining))
        assert got == pytest.approx(numpy_triplet(e, labels, margin, mining), rel=1e-4, abs=1e-6)


def test_triplet_normalises_each_embedding_and_has_finite_gradients():
    e = tf.Variable(np.random.RandomState(5).randn(8, 4).astype(np.float32))
    labels = np.repeat(np.arange(4), 2)
    scaled = losses.triplet_loss(e * 10.0, labels)
    assert float(scaled) == pytest.approx(float(losses.triplet_loss(e, labels)), rel=1e-5)
    with tf.GradientTape() as tape:
        loss = losses.triplet_loss(tf.concat([e, e[:1]], 0), np.append(labels, 0), mining="semi_hard")
    assert np.all(np.isfinite(tape.gradient(loss, e).numpy()))


def test_triplet_batch_hard_by_hand():
    # Two classes on a line: 0 at {0, 1}, 1 at {1.2, 3}; margin 0.5, not normalised.
    x = np.array([[0.0], [1.0], [1.2], [3.0]], np.float32)
    labels = [0, 0, 1, 1]
    # per anchor, hardest positive - closest negative + margin:
    # 0: 1 - 1.2 + .5 = .3; 1: 1 - .2 + .5 = 1.3; 2: 1.8 - .2 + .5 = 2.1; 3: 1.8 - 2 + .5 = .3
    got = losses.triplet_loss(x, labels, margin=0.5, normalize=False)
    assert float(got) == pytest.approx((0.3 + 1.3 + 2.1 + 0.3) / 4, rel=1e-5)


@pytest.mark.parametrize("mining", losses.TRIPLET_MINING)
def test_triplet_gradient_is_finite_with_identical_embeddings(mining):
    x = tf.Variable(np.tile(np.eye(3, dtype=np.float32), (2, 1)))  # pairs of identical rows
    with tf.GradientTape() as tape:
        loss = losses.triplet_loss(x, [0, 1, 2, 0, 1, 2], 0.5, mining, normalize=False)
    assert np.isfinite(tape.gradient(loss, x).numpy()).all()


def test_triplet_refuses_unknown_mining():
    with pytest.raises(ValueError, match="mining must be one of"):
        losses.triplet_loss(np.eye(2, dtype=np.float32), [0, 1], mining="hardest")


def test_npair_matches_numpy():
    rng = np.random.RandomState(6)
    a, p = rng.randn(5, 4).astype(np.float32), rng.randn(5, 4).astype(np.float32)
    labels = np.array([0, 1, 0, 2, 1])
    logits = a @ p.T
    targets = (labels[:, None] == labels[None]).astype(float)
    targets /= targets.sum(1, keepdims=True)
    ce = -np.mean([(targets[i] * _log_softmax(logits[i])).sum() for i in range(5)])
    reg = 0.25 * 0.002 * ((a ** 2).sum(1).mean() + (p ** 2).sum(1).mean())
    assert float(losses.npair_loss(a, p, labels)) == pytest.approx(ce + reg, rel=1e-5)
    ce_ids = -np.mean([_log_softmax(logits[i])[i] for i in range(5)])
    assert float(losses.npair_loss(a, p)) == pytest.approx(ce_ids + reg, rel=1e-5)


@pytest.mark.slow
def test_nt_xent_on_two_replicas_equals_one_device():
    result = subprocess.run(
        [sys.executable, os.path.join(HELPERS, "contrastive_replicas.py"), "nt_xent"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    assert report["loss_difference"] < 1e-5
    assert report["max_gradient_difference"] < 1e-6
    assert report["max_gradient"] > 1e-4
