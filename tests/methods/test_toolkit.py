"""keras_ssl.toolkit, piece by piece, against numpy: bank, queue, nearest neighbour, bases, grid, end-points.

The first-party methods built on these pieces are tested in their own files
(NPID, PIRL, CMC, MoCo, SwAV, Jigsaw, ...); here each piece is checked alone,
as a plugin author would use it.
"""

import json
import os
import subprocess
import sys
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.toolkit import (
    ContrastiveMethod, MultiViewMethod, add_memory_bank, add_queue, bank_rows, bank_scores,
    cut_grid, enqueue, move_bank_rows, nearest_neighbour, noise_index, oldest_first,
    require_endpoint, standardize_patches,
)
from keras_ssl.augment.view_specs import ViewSpec
from tests.helpers import HELPERS
from keras_ssl.testing import tiny_backbone

RNG = np.random.RandomState(0)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class _Host(keras.layers.Layer):
    """What owns a bank and a queue: a method, or any layer."""

    def __init__(self, bank_rows=10, queue_rows=5, dim=4):
        super().__init__()
        self.memory_bank = add_memory_bank(self, bank_rows, dim)
        self.queue, self.queue_pointer = add_queue(self, queue_rows, dim)


# ------------------------------------------------------------------ memory bank
def test_a_memory_bank_is_a_checkpointed_variable_of_unit_rows(tmp_path):
    host = _Host()
    assert host.memory_bank.shape == (10, 4) and not host.memory_bank.trainable
    np.testing.assert_allclose(np.linalg.norm(host.memory_bank.numpy(), axis=1), 1.0, rtol=1e-5)
    assert host.queue.shape == (5, 4) and host.queue_pointer.dtype == "int32"
    path = tf.train.Checkpoint(host=host).save(str(tmp_path / "ckpt"))
    names = {name for name, _ in tf.train.list_variables(path)}
    assert {"host/memory_bank/.ATTRIBUTES/VARIABLE_VALUE", "host/queue/.ATTRIBUTES/VARIABLE_VALUE",
            "host/queue_pointer/.ATTRIBUTES/VARIABLE_VALUE"} <= names


def test_bank_rows_and_scores_match_numpy_and_carry_no_gradient():
    host = _Host()
    bank = host.memory_bank.numpy()
    index, noise = np.array([3, 1], np.int32), np.array([[0, 9, 3], [1, 1, 7]], np.int32)
    features = tf.Variable(_unit(RNG.randn(2, 4)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        positives, noise_rows = bank_rows(host.memory_bank, index), bank_rows(host.memory_bank, noise)
        positive_scores, noise_scores = bank_scores(features, positives, noise_rows)
    np.testing.assert_array_equal(positives.numpy(), bank[index])
    np.testing.assert_array_equal(noise_rows.numpy(), bank[noise])
    f = features.numpy()
    np.testing.assert_allclose(positive_scores.numpy(), np.sum(f * bank[index], -1), rtol=1e-5)
    np.testing.assert_allclose(noise_scores.numpy(), np.einsum("bd,bkd->bk", f, bank[noise]),
                               rtol=1e-5)
    assert tape.gradient(positives, host.memory_bank) is None
    assert tape.gradient(noise_scores, features) is not None


def test_move_bank_rows_is_the_moving_average_of_unit_rows():
    host = _Host()
    before = host.memory_bank.numpy()
    index, features = np.array([4, 0], np.int32), RNG.randn(2, 4).astype(np.float32)
    move_bank_rows(host.memory_bank, index, features, 0.8)
    expected = before.copy()
    expected[index] = _unit(0.8 * before[index] + 0.2 * features)
    np.testing.assert_allclose(host.memory_bank.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_noise_index_is_uniform_rows_keyed_by_the_step():
    iterations = tf.Variable(0, dtype=tf.int64)
    method = types.SimpleNamespace(optimizer=types.SimpleNamespace(iterations=iterations), seed=0)
    first = noise_index(method, 64, 50, 10, noise_seed=1).numpy()
    assert first.shape == (64, 50) and first.dtype == np.int32
    assert first.min() == 0 and first.max() == 9
    np.testing.assert_array_equal(noise_index(method, 64, 50, 10, noise_seed=1), first)
    assert not np.array_equal(noise_index(method, 64, 50, 10, noise_seed=2), first)
    iterations.assign(1)
    assert not np.array_equal(noise_index(method, 64, 50, 10, noise_seed=1), first)


# ------------------------------------------------------------------ FIFO queue
def _numpy_enqueue(queue, pointer, rows, when=True):
    if not when:
        return queue, pointer
    queue = queue.copy()
    for row in rows:
        queue[pointer] = row
        pointer = (pointer + 1) % len(queue)
    return queue, pointer


def test_enqueue_writes_a_ring_buffer_and_oldest_first_reads_it_in_order():
    host = _Host(queue_rows=5)
    queue, pointer = host.queue.numpy(), 0
    pushes = [(RNG.randn(3, 4).astype(np.float32), True), (RNG.randn(3, 4).astype(np.float32), True),
              (RNG.randn(2, 4).astype(np.float32), False), (RNG.randn(2, 4).astype(np.float32), True)]
    for rows, when in pushes:
        enqueue(host.queue, host.queue_pointer, rows, when=tf.constant(when))
        queue, pointer = _numpy_enqueue(queue, pointer, rows, when)
        np.testing.assert_array_equal(host.queue.numpy(), queue)
        assert int(host.queue_pointer.numpy()) == pointer
    # Written in order: rows 3..5 of the pushes kept, the oldest first.
    kept = np.concatenate([pushes[0][0], pushes[1][0], pushes[3][0]])[-5:]
    np.testing.assert_array_equal(oldest_first(host.queue, host.queue_pointer).numpy(), kept)


def test_nearest_neighbour_is_the_row_of_largest_similarity_without_gradient():
    rows = _unit(RNG.randn(7, 4)).astype(np.float32)
    queries = tf.Variable(_unit(RNG.randn(3, 4)).astype(np.float32))
    with tf.GradientTape() as tape:
        neighbours = nearest_neighbour(queries, rows)
    np.testing.assert_array_equal(neighbours.numpy(), rows[np.argmax(queries.numpy() @ rows.T, 1)])
    assert tape.gradient(neighbours, queries) is None


def test_bank_and_queue_on_two_replicas_equal_one_device_and_numpy():
    # Three steps of 8 rows (4 per replica): a bank of 10 rows, momentum 0.5, a queue of 12.
    result = subprocess.run([sys.executable, os.path.join(HELPERS, "toolkit_replicas.py")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    bank = np.array(report["inputs"]["bank"], np.float32)
    queue, pointer = np.zeros((12, bank.shape[1]), np.float32), 0
    for index, features, keys, when in report["inputs"]["steps"]:
        bank[index] = _unit(0.5 * bank[index] + 0.5 * np.array(features, np.float32))
        queue, pointer = _numpy_enqueue(queue, pointer, np.array(keys, np.float32), when)
    for state in (report["one"], report["two"]):
        np.testing.assert_allclose(state["bank"], bank, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(state["queue"], queue)
        assert state["pointer"] == pointer == 4  # 16 rows written into 12, the third step skipped
    # Each replica draws its rows of the one device's draw for the whole batch.
    assert report["two"]["noise"] == report["one"]["noise"]
    assert np.array(report["one"]["noise"]).shape == (3, 8, 3)


# ------------------------------------------------------------------ bases
def test_online_probe_is_masked_cross_entropy_on_stop_gradient_features():
    method = ContrastiveMethod(tiny_backbone(), num_classes=3)
    features = tf.Variable(RNG.randn(4, 128).astype(np.float32))
    labels = np.array([0, 2, -1, 1])
    with tf.GradientTape() as tape:
        loss, metrics = method.probe_loss(features, labels)
    kernel, bias = (w.numpy() for w in method.probe.weights)
    logits = features.numpy() @ kernel + bias
    log_p = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    valid = labels >= 0
    np.testing.assert_allclose(loss.numpy(), -np.mean(log_p[valid, labels[valid]]), rtol=1e-5)
    np.testing.assert_allclose(metrics["probe_accuracy"].numpy(),
                               np.mean(np.argmax(logits[valid], 1) == labels[valid]))
    assert tape.gradient(loss, features) is None
    no_probe = ContrastiveMethod(tiny_backbone())
    loss, metrics = no_probe.probe_loss(features, labels)
    assert float(loss) == 0.0 and metrics == {}


def test_encode_views_calls_the_network_once_per_view_size():
    net = tiny_backbone()
    method = MultiViewMethod(net, views=[ViewSpec(size=16), ViewSpec(size=16), ViewSpec(size=8)])
    views = [tf.random.stateless_uniform([2, s, s, 3], [i, 0]) for i, s in enumerate((16, 16, 8))]
    calls = []

    def network(images, training):
        calls.append(images.shape)
        return net(images, training=training)

    encoded = method.encode_views(network, views, training=False)
    assert calls == [(4, 16, 16, 3), (2, 8, 8, 3)]
    for view, features in zip(views, encoded):
        np.testing.assert_allclose(features, net(view, training=False)["pre_logits"], atol=1e-5)


def test_multi_view_needs_two_views():
    with pytest.raises(ValueError, match="needs at least two views, got 1"):
        MultiViewMethod(tiny_backbone(), views=[ViewSpec(size=16)])


# ------------------------------------------------------------------ patch grid
def test_cut_grid_without_jitter_is_centred_patches_in_row_major_order():
    image = RNG.rand(30, 30, 3).astype(np.float32)
    patches = cut_grid(tf.constant(image), grid=3, cell=10, patch=6, jitter=0).numpy()
    expected = [image[10 * r + 2:10 * r + 8, 10 * c + 2:10 * c + 8] for r in range(3) for c in range(3)]
    np.testing.assert_array_equal(patches, np.stack(expected))


def test_standardize_patches_gives_each_patch_zero_mean_and_unit_variance():
    patches = RNG.rand(2, 9, 6, 6, 3).astype(np.float32) * 5 + 2
    mean = patches.mean(axis=(-3, -2, -1), keepdims=True)
    expected = (patches - mean) / np.sqrt(patches.var(axis=(-3, -2, -1), keepdims=True) + 1e-5)
    np.testing.assert_allclose(standardize_patches(tf.constant(patches)), expected, rtol=1e-4,
                               atol=1e-5)


# ------------------------------------------------------------------ end-points
_OUTPUTS = types.SimpleNamespace(output={
    "block3": tf.zeros([2, 4, 4, 8]), "tokens": tf.zeros([2, 5, 8]), "pre_logits": tf.zeros([2, 8])})


@pytest.mark.parametrize("name,spatial,message", [
    ("block4", None, r"^m.x: the backbone has no end-point 'block4'; choose one of block3, "
                     r"tokens, pre_logits\.$"),
    ("pre_logits", True, r"^m.x: end-point 'pre_logits' is not a spatial feature map .*choose "
                         r"one of block3\.$"),
    ("tokens", False, r"^m.x: end-point 'tokens' has shape .*must be \[batch, D\] or"),
])
def test_require_endpoint_names_the_end_points_the_backbone_has(name, spatial, message):
    with pytest.raises(ValueError, match=message):
        require_endpoint(_OUTPUTS, name, "m.x", spatial=spatial)


def test_require_endpoint_returns_a_fitting_name():
    assert require_endpoint(_OUTPUTS, "block3", "m.x", spatial=True) == "block3"
    assert require_endpoint(_OUTPUTS, "pre_logits", "m.x", spatial=False) == "pre_logits"
    assert require_endpoint(_OUTPUTS, "tokens", "m.x") == "tokens"
