"""SimCLR: views, head, NT-Xent, online probe, multi-replica equality, training."""

import os

import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.losses import nt_xent_loss
from tests.helpers.contrastive_training import (
    example, fit_losses, orbit_run, random_examples, tiny_method, tiny_shapes_examples,
)
from tests.helpers.numpy_losses import softmax_cross_entropy


def test_two_views_are_drawn_independently_eagerly_and_in_tf_data():
    method = tiny_method("simclr", augmentation="simclr_cifar")
    image = np.random.RandomState(0).rand(16, 16, 3).astype(np.float32)
    views = method.preprocess(example(image, label=2))
    assert views["view_1"].shape == views["view_2"].shape == (16, 16, 3)
    assert not np.allclose(views["view_1"], views["view_2"])
    assert int(views["label"]) == 2
    # Views are seeded by the example's index: another index, other views; the same, the same.
    same_image = tf.data.Dataset.from_tensor_slices(
        {"image": np.stack([image] * 3), "label": np.zeros(3, np.int64), "index": np.array([0, 1, 0])})
    batch = next(iter(method.make_dataset(same_image, 3)))
    assert batch["view_1"].shape == (3, 16, 16, 3)
    assert not np.allclose(batch["view_1"][0], batch["view_1"][1])
    np.testing.assert_array_equal(batch["view_1"][0], batch["view_1"][2])


def test_head_and_loss():
    method = tiny_method("simclr", temperature=0.5, hidden_dim=32, num_head_layers=3)
    assert [l.name for l in method.head.layers if "dense" in l.name] == ["dense_0", "dense_1", "dense_2"]
    assert method.head.output_shape == (None, 128)
    batch = next(iter(method.make_dataset(random_examples(4), 4)))
    loss, metrics = method.compute_pretext_loss(batch, training=False)
    views = tf.concat([batch["view_1"], batch["view_2"]], 0)
    z = method.head(method.backbone(views)["pre_logits"])
    expected, _, _ = nt_xent_loss(z[:4], z[4:], 0.5)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert set(metrics) == {"contrastive_loss", "contrastive_accuracy"}


def test_views_one_at_a_time_normalise_each_view_with_its_own_statistics():
    method = tiny_method("simclr", temperature=0.5, views_in_one_batch=False)
    batch = next(iter(method.make_dataset(random_examples(4), 4)))
    loss, _ = method.compute_pretext_loss(batch, training=True)
    z1, z2 = (method.head(method.backbone(batch[v], training=True)["pre_logits"], training=True)
              for v in ("view_1", "view_2"))
    expected, _, _ = nt_xent_loss(z1, z2, 0.5)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    # Batch norm in training mode: one batch of both views gives another loss.
    joint = tiny_method("simclr", temperature=0.5)
    joint.set_weights(method.get_weights())
    assert float(joint.compute_pretext_loss(batch, training=True)[0]) != pytest.approx(
        float(loss), rel=1e-4)


@pytest.mark.parametrize("norm, kinds", [
    (None, ["BatchNormalization", "Activation", "Dense", "BatchNormalization"]),
    ("none", ["BatchNormalization", "Activation", "Dense"]),
    ("affine", ["BatchNormalization", "Activation", "Dense", "BatchNormalization"]),
])
def test_head_output_batch_norm(norm, kinds):
    head = tiny_method("simclr", head_output_batch_norm=norm).head
    assert [type(layer).__name__ for layer in head.layers[1:]] == kinds
    last = head.layers[-1]
    if norm is None:  # SimCLR v2's scale-only norm
        assert last.scale and not last.center
    if norm == "affine":
        assert last.scale and last.center


def test_head_batch_norm_epsilon_reaches_every_norm_and_the_output():
    """PyTorch's BatchNorm1d epsilon (1e-5) against Keras' (1e-3): a different output."""
    heads = {eps: tiny_method("simclr", head_output_batch_norm="affine",
                              head_batch_norm_epsilon=eps).head for eps in (1e-3, 1e-5)}
    width = heads[1e-3].layers[0].kernel.shape[0]
    x = tf.random.stateless_normal([16, width], seed=[0, 1]) * 0.02  # variance near Keras' eps
    norms = [layer for layer in heads[1e-5].layers if "BatchNormalization" in type(layer).__name__]
    assert len(norms) == 2 and all(layer.epsilon == 1e-5 for layer in norms)
    heads[1e-5].set_weights(heads[1e-3].get_weights())
    outputs = {eps: head(x, training=True).numpy() for eps, head in heads.items()}
    assert np.abs(outputs[1e-5] - outputs[1e-3]).max() > 1e-2


def test_head_output_batch_norm_without_head_batch_norm_is_refused():
    with pytest.raises(ValueError, match="needs head_batch_norm = True"):
        tiny_method("simclr", head_batch_norm=False, head_output_batch_norm="none")


def test_online_probe_sees_no_gradient_path_and_ignores_unlabelled():
    method = tiny_method("simclr", num_classes=3)
    batch = next(iter(method.make_dataset(random_examples(4), 4)))
    batch["label"] = tf.constant([0, -1, 2, -1], tf.int32)
    with tf.GradientTape() as tape:
        _, metrics = method.compute_pretext_loss(batch, training=True)
        probe = metrics["probe_loss"]
    grads = tape.gradient(probe, method.backbone.trainable_variables + method.probe.trainable_variables)
    assert all(g is None for g in grads[:-2]) and all(g is not None for g in grads[-2:])
    pre = method.backbone(tf.concat([batch["view_1"], batch["view_2"]], 0), training=True)["pre_logits"]
    logits = method.probe(pre).numpy()
    labels = np.tile([0, -1, 2, -1], 2)
    keep = labels >= 0
    expected = softmax_cross_entropy(logits[keep], labels[keep])
    assert float(probe) == pytest.approx(expected, rel=1e-4)


@pytest.mark.slow
def test_loss_falls_on_tiny_shapes(data_dir):
    method = tiny_method("simclr", augmentation="simclr_cifar", temperature=0.5)
    history = fit_losses(method, tiny_shapes_examples(data_dir))
    assert history["loss"][-1] < history["loss"][0]


@pytest.mark.slow
def test_trains_with_keras_ssl_train_and_lars(data_dir, tmp_path):
    outputs, model_dir = orbit_run(
        data_dir, tmp_path, "simclr",
        **{"simclr.augmentation": "'simclr_cifar'", "simclr.num_classes": 12,
           "keras_ssl.build_optimizer.name": "'lars'"},
    )
    assert np.isfinite(outputs["loss"]) and 0.0 <= outputs["probe_accuracy"] <= 1.0
    assert os.path.exists(os.path.join(model_dir, "ckpt-4.index"))


@pytest.mark.parametrize("path", [
    "simclr/cifar_resnet18.gin", "simclr/imagenet_resnet50.gin", "moco/imagenet_resnet50.gin",
    "moco/cifar_resnet18.gin", "npid/imagenet_resnet50.gin", "npid/cifar_resnet18.gin",
    "simclr/synthetic_shapes.gin", "moco/synthetic_shapes.gin", "npid/synthetic_shapes.gin",
])
def test_contrastive_gin_configs_parse_and_bind(path):
    import gin

    from tests.helpers import REPO
    from keras_ssl import config

    config.parse_gin([os.path.join(REPO, "gin_configs", path)])
    try:
        method = gin.query_parameter("keras_ssl.build_method.method")
        assert method in ("simclr", "moco", "npid")
        assert gin.query_parameter("keras_ssl.train.batch_size") > 0
    finally:
        gin.clear_config()
