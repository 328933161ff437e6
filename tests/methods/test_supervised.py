"""Supervised baseline: inputs, loss, the no-label error, a short run and its export."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.registry import METHODS
from tests.helpers.classic_methods import fit_losses, train_tiny
from tests.helpers.method_runs import check_method_run
from tests.helpers.numpy_losses import softmax_cross_entropy
from keras_ssl.testing import tiny_backbone


def _method(**kwargs):
    net = tiny_backbone()
    return METHODS.get("supervised")(net, **kwargs)


def _examples(labels, size=16):
    images = np.random.RandomState(0).rand(len(labels), size, size, 3).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices(
        {"image": images, "label": np.asarray(labels, np.int64), "index": np.arange(len(labels))}
    )


def test_preprocess_keeps_image_and_label():
    method = _method(num_classes=12)
    example = next(iter(_examples([5])))
    inputs = method.preprocess(example)
    np.testing.assert_array_equal(inputs["image"], example["image"])
    assert int(inputs["label"]) == 5


def test_unlabelled_dataset_is_rejected_clearly():
    method = _method(num_classes=12)
    with pytest.raises(tf.errors.InvalidArgumentError, match="has no labels"):
        next(iter(method.make_dataset(_examples([-1, -1]), 2)))


def test_label_out_of_range_is_rejected():
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_classes"):
        next(iter(_method(num_classes=3).make_dataset(_examples([1, 7]), 2)))


def test_loss_is_cross_entropy_of_linear_head_on_pre_logits():
    method = _method(num_classes=4)
    batch = next(iter(method.make_dataset(_examples([0, 3, 1]), 3)))
    loss, metrics = method.compute_pretext_loss(batch, training=False)
    features = method.backbone(batch["image"], training=False)["pre_logits"].numpy()
    kernel, bias = (v.numpy() for v in method.head.weights)
    logits = features @ kernel + bias
    labels = np.array([0, 3, 1])
    assert float(loss) == pytest.approx(softmax_cross_entropy(logits, labels), rel=1e-5)
    assert float(metrics["accuracy"]) == pytest.approx((logits.argmax(1) == labels).mean())


@pytest.mark.slow
def test_loss_falls_on_synthetic_shapes(data_dir):
    keras.utils.set_random_seed(0)
    losses = fit_losses(_method(num_classes=12), data_dir, batch_size=8, steps=8, learning_rate=0.02)
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_trains_with_keras_ssl_train_and_exports(data_dir, tmp_path):
    run = train_tiny(data_dir, str(tmp_path / "run"), "supervised", steps=2, steps_per_loop=2,
                     **{"supervised.num_classes": 12})
    check_method_run(run, "supervised", "accuracy")


@pytest.mark.parametrize("name", [
    "supervised/synthetic_shapes", "supervised/resnet50_v2", "exemplar/synthetic_shapes",
    "exemplar/resnet50_v2", "jigsaw/synthetic_shapes", "jigsaw/resnet50_v2",
    "relative_patch_location/synthetic_shapes", "relative_patch_location/resnet50_v2",
    "colorization/synthetic_shapes", "colorization/resnet50_v2"])
def test_gin_configs_of_the_classic_methods_parse(name):
    import gin

    from keras_ssl import config
    from tests.helpers import REPO

    config.parse_gin([os.path.join(REPO, "gin_configs", name + ".gin")])
    method = name.split("/")[0]
    assert gin.query_parameter("keras_ssl.build_method.method") == method
    if name.endswith("synthetic_shapes"):  # small enough to build: every binding is checked
        from keras_ssl.building import build_method

        assert type(build_method()).__name__ == METHODS.get(method).__name__
