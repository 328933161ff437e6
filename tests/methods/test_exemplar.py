"""Exemplar: copies and grayscale, training (its triplet loss is tested in tests/core/losses/test_losses.py)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.registry import METHODS
from tests.helpers.classic_methods import fit_losses, train_tiny
from tests.helpers.method_runs import check_method_run
from tests.helpers.numpy_losses import numpy_triplet
from keras_ssl.testing import tiny_backbone


def _method(**kwargs):
    net = tiny_backbone()
    return METHODS.get("exemplar")(net, **kwargs)


def _example(image):
    return {"image": tf.constant(image), "label": tf.constant(0, tf.int64),
            "index": tf.constant(0, tf.int64)}


# ----------------------------------------------------------------- inputs
def test_copies_are_different_views_and_grayscale_is_shared():
    image = np.random.RandomState(0).rand(16, 16, 3).astype(np.float32)
    gray_runs = 0
    for grayscale_probability in (0.0, 1.0):
        method = _method(num_copies=8, grayscale_probability=grayscale_probability)
        copies = method.preprocess(_example(image))["images"].numpy()
        assert copies.shape == (8, 16, 16, 3)
        assert len({c.tobytes() for c in copies}) == 8  # independently augmented
        gray = [np.allclose(c[..., 0], c[..., 1]) and np.allclose(c[..., 1], c[..., 2])
                for c in copies]
        assert all(gray) == bool(grayscale_probability) and any(gray) == all(gray)
        gray_runs += all(gray)
    assert gray_runs == 1
    method = _method(num_copies=4)
    decisions = []
    for _ in range(40):
        copies = method.preprocess(_example(image))["images"].numpy()
        gray = [np.allclose(c[..., 0], c[..., 2]) for c in copies]
        assert len(set(gray)) == 1  # one decision for all copies
        decisions.append(gray[0])
    assert 0.35 < np.mean(decisions) < 0.92  # p = 0.66


def test_loss_uses_l2_normalised_embeddings_and_image_index_labels():
    keras.utils.set_random_seed(0)
    method = _method(num_copies=2, embedding_dim=8, triplet="semi_hard")
    images = np.random.RandomState(1).rand(3, 16, 16, 3).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices(
        {"image": images, "label": np.zeros(3, np.int64), "index": np.arange(3)})
    batch = next(iter(method.make_dataset(dataset, 3)))
    loss, metrics = method.compute_pretext_loss(batch, training=False)
    flat = tf.reshape(batch["images"], (-1, 16, 16, 3))
    raw = method.embedding(method.backbone(flat, training=False)["pre_logits"]).numpy()
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert float(loss) == pytest.approx(numpy_triplet(raw, labels, 0.5, "semi_hard"), rel=1e-4)
    assert 0.0 <= float(metrics["nearest_neighbour_accuracy"]) <= 1.0


@pytest.mark.slow
def test_loss_falls_on_synthetic_shapes(data_dir):
    keras.utils.set_random_seed(0)
    method = _method(num_copies=4, embedding_dim=32)
    losses = fit_losses(method, data_dir, batch_size=4, steps=8, learning_rate=0.01)
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_trains_with_keras_ssl_train_and_exports(data_dir, tmp_path):
    run = train_tiny(data_dir, str(tmp_path / "run"), "exemplar", steps=2, steps_per_loop=2,
                     **{"exemplar.num_copies": 4, "exemplar.embedding_dim": 32})
    check_method_run(run, "exemplar", "nearest_neighbour_accuracy", batch=1)
