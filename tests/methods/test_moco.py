"""MoCo v2: momentum encoder, queue, InfoNCE, checkpoints, training."""

import os

import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.losses import info_nce_loss
from tests.helpers import HELPERS
from tests.helpers.contrastive_training import (
    fit_losses, orbit_run, random_examples, tiny_method, tiny_shapes_examples,
)
from keras_ssl.testing import tiny_backbone


def test_key_encoder_starts_as_a_copy_and_is_not_trained():
    method = tiny_method("moco", queue_size=16)
    for q, k in zip(method.backbone.weights + method.head.weights,
                    method.key_backbone.weights + method.key_head.weights):
        np.testing.assert_array_equal(q.numpy(), k.numpy())
    trainable = {id(v) for v in method.trainable_variables}
    assert not any(id(v) in trainable for v in method.key_backbone.weights + method.key_head.weights)
    assert method.queue.shape == (16, 128) and not method.queue.trainable


def test_loss_is_info_nce_against_the_queue_without_key_gradient():
    method = tiny_method("moco", queue_size=16, temperature=0.2)
    batch = next(iter(method.make_dataset(random_examples(4), 4)))
    with tf.GradientTape() as tape:
        loss, metrics = method.compute_pretext_loss(batch, training=False)
    q = method.head(method.backbone(batch["query_view"])["pre_logits"])
    k = method.key_head(method.key_backbone(batch["key_view"])["pre_logits"])
    expected, _ = info_nce_loss(q, k, method.queue.numpy(), 0.2)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    grads = tape.gradient(loss, method.key_backbone.weights)
    assert all(g is None for g in grads)


def test_shuffled_bn_normalises_keys_in_permuted_groups():
    method = tiny_method("moco", queue_size=16, shuffle_bn_groups=2)
    batch = next(iter(method.make_dataset(random_examples(8), 8)))
    views = batch["key_view"]
    permutation = method.key_permutation(8).numpy()
    assert sorted(permutation) == list(range(8)) and list(permutation) != list(range(8))
    keys = method._keys(views, training=True).numpy()  # pylint: disable=protected-access

    def encode(rows):  # One batch-norm group, statistics of its own 4 images.
        features = method.key_backbone(tf.gather(views, rows), training=True)["pre_logits"]
        return tf.math.l2_normalize(method.key_head(features, training=True), axis=-1).numpy()

    expected = np.zeros_like(keys)
    for group in (permutation[:4], permutation[4:]):
        expected[group] = encode(group)
    np.testing.assert_allclose(keys, expected, atol=1e-5)
    whole = tf.math.l2_normalize(method.key_head(
        method.key_backbone(views, training=True)["pre_logits"], training=True), axis=-1)
    assert np.abs(keys - whole.numpy()).max() > 1e-3  # The groups' statistics do matter.


def test_shuffled_bn_refuses_synchronized_bn_and_uneven_groups():
    from keras_ssl.registry import METHODS

    net = tiny_backbone(small_image_stem=False, synchronized_bn=True)
    with pytest.raises(ValueError, match="synchronized"):
        METHODS.get("moco")(net, queue_size=16, shuffle_bn_groups=2)
    method = tiny_method("moco", queue_size=16, shuffle_bn_groups=3)
    batch = next(iter(method.make_dataset(random_examples(8), 8)))
    with pytest.raises(ValueError, match="not a multiple of shuffle_bn_groups"):
        method.compute_pretext_loss(batch, training=True)


def test_train_step_moves_key_encoder_by_momentum_and_enqueues_keys():
    method = tiny_method("moco", queue_size=12, momentum=0.9)
    batch = next(iter(method.make_dataset(random_examples(8), 8)))
    method.compile(optimizer="sgd")
    key_before = [w.numpy() for w in method.key_backbone.trainable_weights]
    queue_before = method.queue.numpy()
    method.fit(
        tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0
    )
    query_after = [w.numpy() for w in method.backbone.trainable_weights]
    for k0, q1, k1 in zip(key_before, query_after, [w.numpy() for w in method.key_backbone.trainable_weights]):
        np.testing.assert_allclose(k1, 0.9 * k0 + 0.1 * q1, rtol=1e-5, atol=1e-6)
    # 8 keys went into rows 0..7; the pointer moved to 8.
    assert int(method.queue_pointer.numpy()) == 8
    assert not np.allclose(method.queue.numpy()[:8], queue_before[:8])
    np.testing.assert_array_equal(method.queue.numpy()[8:], queue_before[8:])
    np.testing.assert_allclose(np.linalg.norm(method.queue.numpy()[:8], axis=1), 1.0, rtol=1e-5)
    # The queue wraps around: next 8 keys go to rows 8..11 then 0..3.
    method.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
    assert int(method.queue_pointer.numpy()) == 4


def test_queue_and_key_encoder_are_in_checkpoints(tmp_path):
    method = tiny_method("moco", queue_size=8)
    method.queue.assign(np.full((8, 128), 0.5, np.float32))
    method.queue_pointer.assign(3)
    path = tf.train.Checkpoint(method=method).write(str(tmp_path / "ckpt"))
    other = tiny_method("moco", queue_size=8)
    tf.train.Checkpoint(method=other).read(path).assert_consumed()
    np.testing.assert_array_equal(other.queue.numpy(), 0.5)
    assert int(other.queue_pointer.numpy()) == 3


@pytest.mark.slow
def test_loss_falls_on_tiny_shapes(data_dir):
    # A queue of one batch: filled with real keys after the first step, so the
    # loss is not inflated by the random initial queue being replaced.
    method = tiny_method("moco", queue_size=8, momentum=0.9)
    history = fit_losses(method, tiny_shapes_examples(data_dir), steps=5, epochs=3)
    assert history["loss"][-1] < history["loss"][0]


@pytest.mark.slow
def test_trains_with_keras_ssl_train_and_sync_bn(data_dir, tmp_path):
    outputs, model_dir = orbit_run(
        data_dir, tmp_path, "moco",
        **{"moco.queue_size": 16, "moco.momentum": 0.99, "resnet_v2.synchronized_bn": True},
    )
    assert np.isfinite(outputs["loss"])
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "ckpt-4"))
    names = reader.get_variable_to_shape_map()
    queue = [n for n in names if "queue" in n and "pointer" not in n and "OPTIMIZER" not in n]
    assert queue and names[queue[0]] == [16, 128]


@pytest.mark.slow
def test_queue_key_encoder_and_npid_bank_on_two_replicas():
    # Two Orbit steps of MoCo on 2 mirrored CPUs equal one device (queue, pointer,
    # momentum encoder, weights), with synchronized BN and with shuffled BN (2 replicas x 1
    # group = 1 device x 2 groups); so do NPID's bank, Z and weights (its noise draw is keyed by
    # the step and the global row), and both stay identical on every replica.
    import json
    import subprocess
    import sys

    helper = os.path.join(HELPERS, "contrastive_replicas.py")
    result = subprocess.run([sys.executable, helper, "stateful"], capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["moco_pointer"] == [4, 4]  # 2 steps x 8 keys in a queue of 12
    assert report["moco_queue_difference"] < 1e-5
    assert report["moco_key_weight_difference"] < 1e-5
    assert report["moco_weight_difference"] < 1e-5
    assert report["moco_replica_spread"] == 0.0 and report["npid_replica_spread"] == 0.0
    assert report["npid_bank_row_norms"] == pytest.approx([1.0] * 8, abs=1e-4)
    assert report["npid_bank_change"] > 1e-2  # The steps did move the bank ...
    assert report["npid_bank_difference"] < 1e-5  # ... by the same on 2 replicas as on one.
    assert report["npid_weight_difference"] < 1e-5
    assert report["moco_shuffled_bn_weight_difference"] < 1e-5
    assert report["moco_shuffled_bn_queue_difference"] < 1e-5
    assert report["npid_normalization_constants"][0] == pytest.approx(report["npid_normalization_constants"][1], rel=1e-5)
