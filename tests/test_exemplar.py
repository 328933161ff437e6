"""Exemplar: copies and grayscale, the triplet losses against brute force, training."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from _classic_methods import fit_losses, train_tiny
from helpers.tiny import tiny_backbone
from keras_ssl.registry import METHODS
from keras_ssl_methods import _triplet


def _method(**kwargs):
    net = tiny_backbone()
    return METHODS.get("exemplar")(net, **kwargs)


def _example(image):
    return {"image": tf.constant(image), "label": tf.constant(0, tf.int64),
            "index": tf.constant(0, tf.int64)}


# ------------------------------------------------------------ brute force
def _distances(x):
    return np.array([[np.sqrt(((a - b) ** 2).sum()) for b in x] for a in x])


def _batch_hard_reference(labels, x, margin):
    d = _distances(x)
    losses = []
    for a in range(len(x)):
        pos = [d[a, p] for p in range(len(x)) if p != a and labels[p] == labels[a]]
        neg = [d[a, n] for n in range(len(x)) if labels[n] != labels[a]]
        if pos and neg:
            losses.append(max(max(pos) - min(neg) + margin, 0.0))
    return np.mean(losses)


def _semi_hard_reference(labels, x, margin):
    d = _distances(x)
    losses = []
    for a, p in itertools.permutations(range(len(x)), 2):
        if labels[a] != labels[p]:
            continue
        neg = [d[a, n] for n in range(len(x)) if labels[n] != labels[a]]
        if not neg:
            continue
        farther = [v for v in neg if v > d[a, p]]
        chosen = min(farther) if farther else max(neg)
        losses.append(max(d[a, p] - chosen + margin, 0.0))
    return np.mean(losses)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("variant,reference", [
    ("batch_hard", _batch_hard_reference), ("semi_hard", _semi_hard_reference)])
def test_triplet_losses_match_brute_force(seed, variant, reference):
    rng = np.random.RandomState(seed)
    labels = np.repeat(np.arange(4), 3)
    x = rng.randn(12, 5).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    got = _triplet.triplet_loss(tf.constant(labels), tf.constant(x), 0.5, variant)
    assert float(got) == pytest.approx(reference(labels, x, 0.5), rel=1e-4, abs=1e-5)


def test_triplet_loss_gradient_is_finite_with_identical_embeddings():
    x = tf.Variable(np.tile(np.eye(3, dtype=np.float32), (2, 1)))  # pairs of identical rows
    labels = tf.constant([0, 1, 2, 0, 1, 2])
    for variant in _triplet.TRIPLET_VARIANTS:
        with tf.GradientTape() as tape:
            loss = _triplet.triplet_loss(labels, x, 0.5, variant)
        assert np.isfinite(tape.gradient(loss, x).numpy()).all()


def test_hand_computed_batch_hard_value():
    # Two classes on a line: 0 at {0, 1}, 1 at {1.2, 3}; margin 0.5.
    x = np.array([[0.0], [1.0], [1.2], [3.0]], np.float32)
    labels = [0, 0, 1, 1]
    # anchor: hardest positive - closest negative + margin
    # 0: 1 - 1.2 + .5 = .3; 1: 1 - .2 + .5 = 1.3; 2: 1.8 - .2 + .5 = 2.1; 3: 1.8 - 2 + .5 = .3
    expected = (0.3 + 1.3 + 2.1 + 0.3) / 4
    got = _triplet.batch_hard_triplet_loss(tf.constant(labels), tf.constant(x), 0.5)
    assert float(got) == pytest.approx(expected, rel=1e-5)


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
    x = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert float(loss) == pytest.approx(_semi_hard_reference(labels, x, 0.5), rel=1e-4)
    assert 0.0 <= float(metrics["nearest_neighbour_accuracy"]) <= 1.0


@pytest.mark.slow
def test_loss_falls_on_synthetic_shapes(data_dir):
    keras.utils.set_random_seed(0)
    method = _method(num_copies=4, embedding_dim=32)
    losses = fit_losses(method, data_dir, batch_size=4, steps=8, learning_rate=0.01)
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_trains_with_keras_ssl_train_and_exports(data_dir, tmp_path):
    losses, outputs, export, metadata = train_tiny(
        data_dir, str(tmp_path / "run"), "exemplar", steps=2, steps_per_loop=2,
        **{"exemplar.num_copies": 4, "exemplar.embedding_dim": 32})
    assert np.isfinite(losses).all() and "nearest_neighbour_accuracy" in outputs
    assert metadata["method"] == "exemplar" and metadata["input_form"] == "image"
    assert tf.saved_model.load(export)(tf.zeros([1, 16, 16, 3])).shape == (1, 128)
