"""MoCo v3: its loss against the paper's formula, the frozen patch projection, heads, configs."""

import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.testing import build_tiny_method, tiny_backbone, tiny_examples
from keras_ssl_methods.moco_v3 import moco_v3_loss
from tests.helpers.method_runs import build_configured_method
from tests.helpers.numpy_losses import normalize, softmax_cross_entropy


def test_loss_is_two_tau_times_the_cross_entropy_of_each_query_against_all_keys():
    rng = np.random.default_rng(0)
    queries, keys = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    for tau in (0.2, 1.0):
        logits = normalize(queries) @ normalize(keys).T / tau
        expected = 2 * tau * softmax_cross_entropy(logits, np.arange(6)).mean()
        loss, got_logits, labels = moco_v3_loss(tf.constant(queries, tf.float32),
                                                tf.constant(keys, tf.float32), tau)
        assert float(loss) == pytest.approx(expected, rel=1e-5)
        np.testing.assert_allclose(got_logits, logits, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(labels, np.arange(6))


def test_no_gradient_reaches_the_keys():
    queries, keys = tf.Variable(tf.ones((4, 3))), tf.Variable(tf.eye(4, 3))
    with tf.GradientTape() as tape:
        loss, _, _ = moco_v3_loss(queries, keys, 0.2)
    assert tape.gradient(loss, keys) is None


def _step(method):
    import keras

    examples = tiny_examples("moco_v3", 4)
    batch = next(iter(method.make_dataset(examples, 4)))
    method.compute_pretext_loss(batch, training=False)
    method.compile(optimizer=keras.optimizers.SGD(0.1))
    method.train_step(batch)


def test_the_frozen_patch_projection_stays_at_its_initialisation_in_both_encoders():
    method = build_tiny_method("moco_v3", backbone=tiny_backbone("vit"),
                               freeze_patch_embedding=True)
    frozen = method.backbone.get_layer("patch_embedding")
    before = [w.numpy() for w in frozen.weights]
    blocks = method.backbone.get_layer("block1_transformer").weights[2].numpy()
    _step(method)
    for was, now in zip(before, frozen.weights):
        np.testing.assert_array_equal(now.numpy(), was)
    for was, now in zip(before, method.momentum_backbone.get_layer("patch_embedding").weights):
        np.testing.assert_array_equal(now.numpy(), was)
    assert not np.array_equal(method.backbone.get_layer("block1_transformer").weights[2].numpy(),
                              blocks)


def test_freezing_a_patch_projection_a_resnet_lacks_is_refused():
    with pytest.raises(ValueError, match="has none; bind `moco_v3.freeze_patch_embedding = False`"):
        build_tiny_method("moco_v3", freeze_patch_embedding=True)


def test_heads_follow_the_paper_and_the_momentum_starts_at_its_base():
    method = build_tiny_method("moco_v3", backbone=tiny_backbone("vit"))
    dense = [layer for layer in method.projector.layers if "dense" in layer.name]
    norms = [layer for layer in method.projector.layers if "bn" in layer.name]
    assert len(dense) == 3 and len(norms) == 3
    assert not norms[-1].center and not norms[-1].scale  # the last BN has no affine transform
    assert len([layer for layer in method.predictor.layers if "bn" in layer.name]) == 1
    assert float(method.momentum()) == pytest.approx(0.99)


@pytest.mark.parametrize("config", ["synthetic_shapes_vit", "imagenet_vit_small"])
def test_gin_configs_build_the_method(config):
    method = build_configured_method(f"moco_v3/{config}.gin", [
        "vit.widening_factor = 1", "vit.depth = 1", "moco_v3.hidden_dim = 16",
        "moco_v3.projection_dim = 8"])
    assert method.freeze_patch_embedding
