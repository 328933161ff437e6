"""Relative Patch Location: patch geometry (gaps, jitter), colour dropping, pairs, training."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.registry import METHODS
from keras_ssl_methods.relative_patch_location import NEIGHBOURS, drop_colors
from tests.helpers.classic_methods import fit_losses
from tests.helpers.numpy_losses import softmax_cross_entropy
from keras_ssl.testing import TINY_PATCH_GRID, tiny_backbone

SMALL = dict(TINY_PATCH_GRID, jitter=1)


def _method(**kwargs):
    net = tiny_backbone()
    return METHODS.get("relative_patch_location")(net, **{**SMALL, **kwargs})


def _example(image):
    return {"image": tf.constant(image, tf.float32), "label": tf.constant(0, tf.int64),
            "index": tf.constant(0, tf.int64)}


def _offsets(method, image):
    """Where each of the 9 patches came from: (top, left) in the 48-px image."""
    patches = method.preprocess(_example(image))["patches"].numpy()
    found = []
    for i, patch in enumerate(patches):
        r, c = divmod(i, 3)
        hits = [(16 * r + dy, 16 * c + dx) for dy in range(5) for dx in range(5)
                if np.array_equal(image[16 * r + dy:16 * r + dy + 12, 16 * c + dx:16 * c + dx + 12],
                                  patch)]
        assert len(hits) == 1
        found.append(hits[0])
    return found


def test_patches_are_centred_in_cells_without_jitter():
    method = _method(crop=48, jitter=0, color_handling="none")
    image = np.random.RandomState(0).rand(48, 48, 3).astype(np.float32)
    assert _offsets(method, image) == [(16 * r + 2, 16 * c + 2) for r in range(3) for c in range(3)]


def test_gaps_and_jitter_between_patches():
    method = _method(crop=48, jitter=1, color_handling="none")
    image = np.random.RandomState(1).rand(48, 48, 3).astype(np.float32)
    gaps, shifts = set(), set()
    for _ in range(5):
        offsets = _offsets(method, image)
        for i, (top, left) in enumerate(offsets):
            r, c = divmod(i, 3)
            shifts.add((top - 16 * r - 2, left - 16 * c - 2))
            if c < 2:
                gaps.add(offsets[i + 1][1] - (left + 12))
    assert shifts <= {(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)} and len(shifts) > 1
    assert gaps <= {2, 3, 4, 5, 6} and len(gaps) > 1  # 16 - 12 = 4 px, +-2 * jitter


def test_labels_are_the_eight_neighbours_in_order():
    inputs = _method().preprocess(_example(np.zeros((16, 16, 3), np.float32)))
    assert inputs["patches"].shape == (9, 12, 12, 3)
    assert inputs["location"].numpy().tolist() == list(range(8))
    assert NEIGHBOURS == (0, 1, 2, 3, 5, 6, 7, 8)


def test_colour_dropping_keeps_one_channel():
    patch = tf.random.uniform([12, 12, 3])
    kept = set()
    for _ in range(20):
        out = drop_colors(patch).numpy()
        same = [np.array_equal(out[..., k], patch.numpy()[..., k]) for k in range(3)]
        assert sum(same) == 1
        keep = same.index(True)
        kept.add(keep)
        others = np.delete(out, keep, axis=-1)
        assert others.std() < 0.05 * patch.numpy()[..., keep].std()
    assert kept == {0, 1, 2}


def test_grayscale_handling():
    inputs = _method(color_handling="grayscale").preprocess(
        _example(np.random.RandomState(2).rand(16, 16, 3).astype(np.float32)))
    patches = inputs["patches"].numpy()
    np.testing.assert_allclose(patches[..., 0], patches[..., 2])


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="color_handling"):
        _method(color_handling="shift")


def test_pairs_are_centre_then_neighbour_and_loss_is_cross_entropy():
    keras.utils.set_random_seed(0)
    method = _method(embedding_dim=5, hidden_units=16)
    images = np.random.RandomState(3).rand(2, 16, 16, 3).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices(
        {"image": images, "label": np.zeros(2, np.int64), "index": np.arange(2)})
    batch = next(iter(method.make_dataset(dataset, 2)))
    loss, metrics = method.compute_pretext_loss(batch, training=False)
    pairs = method.pair_features(batch["patches"], training=False).numpy()
    assert pairs.shape == (16, 10)

    def embed(patch):
        x = method.export_input_transform(patch[None])
        return method.patch_embedding(method.backbone(x)["pre_logits"]).numpy()[0]

    for b in range(2):
        centre = embed(batch["patches"][b, 4])
        for label, n in enumerate(NEIGHBOURS):
            expected = np.concatenate([centre, embed(batch["patches"][b, n])])
            np.testing.assert_allclose(pairs[8 * b + label], expected, atol=2e-4)
    logits = method.head(tf.constant(pairs), training=False).numpy()
    labels = np.tile(np.arange(8), 2)
    assert float(loss) == pytest.approx(softmax_cross_entropy(logits, labels), rel=1e-4)
    assert float(metrics["location_accuracy"]) == pytest.approx((logits.argmax(1) == labels).mean())


@pytest.mark.slow
def test_loss_falls_on_synthetic_shapes(data_dir):
    keras.utils.set_random_seed(0)
    method = _method(embedding_dim=32, hidden_units=64)
    losses = fit_losses(method, data_dir, batch_size=4, steps=8, learning_rate=0.01)
    assert losses[-1] < losses[0]
