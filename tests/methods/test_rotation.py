"""Rotation: its inputs (eagerly and inside tf.data), its loss, and that it learns."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.registry import METHODS
from tests.helpers.numpy_losses import softmax_cross_entropy
from keras_ssl.testing import tiny_backbone


def _method(**kwargs):
    net = tiny_backbone()
    return METHODS.get("rotation")(net, **kwargs)


def _example(image):
    return {"image": image, "label": tf.constant(3, tf.int64), "index": tf.constant(7, tf.int64)}


def _check_rotations(inputs, image):
    images = np.asarray(inputs["images"])
    assert images.shape == (4,) + image.shape
    assert np.asarray(inputs["rotation"]).tolist() == [0, 1, 2, 3]
    for k in range(4):
        # np.rot90 turns counter-clockwise in the (row, column) plane, as tf.image.rot90.
        np.testing.assert_array_equal(images[k], np.rot90(image, k))


def test_preprocess_eager():
    image = np.random.RandomState(0).rand(8, 8, 3).astype(np.float32)
    _check_rotations(_method().preprocess(_example(tf.constant(image))), image)


def test_preprocess_inside_tf_data():
    image = np.random.RandomState(1).rand(8, 8, 3).astype(np.float32)
    dataset = tf.data.Dataset.from_tensors(_example(tf.constant(image))).map(_method().preprocess)
    _check_rotations(next(iter(dataset)), image)


def test_augmentation_is_shared_by_the_four_copies():
    method = _method(augmentation="flip")
    image = np.random.RandomState(2).rand(8, 8, 3).astype(np.float32)
    for _ in range(4):
        inputs = method.preprocess(_example(tf.constant(image)))
        upright = np.asarray(inputs["images"][0])
        assert np.array_equal(upright, image) or np.array_equal(upright, image[:, ::-1])
        for k in range(4):
            np.testing.assert_array_equal(inputs["images"][k], np.rot90(upright, k))


def test_two_rotations_are_0_and_180_degrees():
    image = np.random.RandomState(3).rand(8, 8, 3).astype(np.float32)
    inputs = _method(num_rotations=2).preprocess(_example(tf.constant(image)))
    np.testing.assert_array_equal(inputs["images"][1], np.rot90(image, 2))


def test_non_square_images_are_rejected():
    with pytest.raises(ValueError, match="square images, got 8x6"):
        _method().preprocess(_example(tf.zeros((8, 6, 3))))


def test_loss_is_cross_entropy_of_the_head_on_pre_logits():
    method = _method()
    batch = method.make_dataset(
        tf.data.Dataset.from_tensors(_example(tf.random.uniform((16, 16, 3)))).repeat(2), 2
    )
    batch = next(iter(batch))
    loss, metrics = method.compute_pretext_loss(batch, training=False)
    flat = tf.reshape(batch["images"], (-1, 16, 16, 3))
    logits = method.head(method.backbone(flat, training=False)["pre_logits"]).numpy()
    labels = np.tile(np.arange(4), 2)
    assert float(loss) == pytest.approx(softmax_cross_entropy(logits, labels), rel=1e-5)
    expected_accuracy = (logits.argmax(1) == labels).mean()
    assert float(metrics["rotation_accuracy"]) == pytest.approx(expected_accuracy)


def test_loss_falls_when_training_a_few_steps():
    keras.utils.set_random_seed(0)
    method = _method()
    # Oriented content (a bright top-left corner) so the rotation is learnable.
    images = np.zeros((4, 16, 16, 3), np.float32)
    for i in range(4):
        images[i, : 4 + i, : 6 - i] = 1.0
    dataset = tf.data.Dataset.from_tensor_slices(
        {"image": images, "label": np.zeros(4, np.int64), "index": np.arange(4)}
    )
    batches = method.make_dataset(dataset, 4).cache().repeat()
    method.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    history = method.fit(batches, steps_per_epoch=15, epochs=2, verbose=0).history
    first = method.compute_pretext_loss(next(iter(batches)), training=False)[0]
    assert history["loss"][-1] < history["loss"][0]
    assert float(first) < 1.2  # below chance, log(4) = 1.386, in inference mode too
