"""Jigsaw: the permutation set, the tile builder, the order the model sees, training."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.registry import METHODS
from keras_ssl_methods import _permutations
from tests.helpers.classic_methods import fit_losses
from tests.helpers.numpy_losses import softmax_cross_entropy
from keras_ssl.testing import TINY_PATCH_GRID, tiny_backbone

SMALL = TINY_PATCH_GRID


def _method(**kwargs):
    net = tiny_backbone()
    return METHODS.get("jigsaw")(net, **{"num_permutations": 10, **SMALL, **kwargs})


def _example(image):
    return {"image": tf.constant(image, tf.float32), "label": tf.constant(0, tf.int64),
            "index": tf.constant(0, tf.int64)}


# ------------------------------------------------------------ permutations
@pytest.mark.parametrize("size,expected_min_distance", [(10, 8), (100, 6), (1000, 5)])
def test_permutation_set_size_uniqueness_and_min_distance(size, expected_min_distance, tmp_path,
                                                          monkeypatch):
    monkeypatch.setenv("KERAS_SSL_CACHE", str(tmp_path))
    perms = _permutations.permutation_set(size, seed=0, use_disk=False)
    assert perms.shape == (size, 9)
    assert (np.sort(perms, axis=1) == np.arange(9)).all()          # every row a permutation
    assert len({p.tobytes() for p in perms}) == size                # unique
    assert _permutations.min_hamming_distance(perms) == expected_min_distance


def test_greedy_choice_maximises_the_minimum_distance_at_every_step():
    perms = _permutations.greedy_max_min_hamming(12, seed=3)
    everything = np.array(list(itertools.permutations(range(9))))
    for k in range(1, 12):
        to_chosen = (everything[:, None, :] != perms[None, :k, :]).sum(-1).min(1)
        chosen = (perms[k][None, :] != perms[:k]).sum(-1).min()
        assert chosen == to_chosen.max()


def test_permutation_set_is_deterministic_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_SSL_CACHE", str(tmp_path))
    monkeypatch.setattr(_permutations, "_MEMORY", {})
    first = _permutations.permutation_set(20, seed=5)
    assert (tmp_path / "permutations_9_20_5.npy").exists()
    assert _permutations.permutation_set(20, seed=5) is first        # memory cache
    monkeypatch.setattr(_permutations, "_MEMORY", {})
    np.testing.assert_array_equal(_permutations.permutation_set(20, seed=5), first)  # disk
    np.testing.assert_array_equal(_permutations.greedy_max_min_hamming(20, seed=5), first)
    assert not np.array_equal(_permutations.permutation_set(20, seed=6), first)
    np.save(tmp_path / "permutations_9_20_7.npy", np.zeros((20, 9), np.int32))  # corrupt
    assert _permutations.min_hamming_distance(_permutations.permutation_set(20, seed=7)) >= 7


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="num_permutations"):
        _method(num_permutations=5)
    with pytest.raises(ValueError, match="patch .* must fit"):
        _method(patch_size=20)


# ------------------------------------------------------------------ inputs
def _cell_image(grid=3, cell=16):
    """Cell (r, c) is filled with the value (3r + c + 1) / 10."""
    image = np.zeros((grid * cell, grid * cell, 3), np.float32)
    for r, c in itertools.product(range(grid), repeat=2):
        image[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = (3 * r + c + 1) / 10
    return image


def test_tiles_are_in_the_permuted_order_of_the_label():
    method = _method(resize=48, crop=48, patch_size=12, grayscale_probability=0.0)
    image = _cell_image()
    seen = set()
    for _ in range(15):
        inputs = method.preprocess(_example(image))
        patches, label = inputs["patches"].numpy(), int(inputs["permutation"])
        assert patches.shape == (9, 12, 12, 3)
        order = method.permutations[label]
        for slot in range(9):
            np.testing.assert_allclose(patches[slot], (order[slot] + 1) / 10, atol=1e-5)
        seen.add(label)
    assert len(seen) > 3  # labels are drawn per image


def test_tiles_are_random_crops_inside_their_cells_and_grayscale_is_whole_image():
    method = _method(resize=48, crop=48, patch_size=12, grayscale_probability=1.0)
    rng = np.random.RandomState(0)
    image = rng.rand(48, 48, 3).astype(np.float32)
    gray = tf.image.rgb_to_grayscale(image).numpy()[..., 0]
    offsets = set()
    inputs = method.preprocess(_example(image))
    order = method.permutations[int(inputs["permutation"])]
    for slot, tile in enumerate(inputs["patches"].numpy()):
        np.testing.assert_allclose(tile[..., 0], tile[..., 2])
        r, c = divmod(int(order[slot]), 3)
        matches = [(dy, dx) for dy in range(5) for dx in range(5)
                   if np.allclose(gray[16 * r + dy:16 * r + dy + 12, 16 * c + dx:16 * c + dx + 12],
                                  tile[..., 0], atol=1e-4)]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 1  # jitter


def test_per_patch_standardisation():
    method = _method()
    patches = tf.random.uniform([5, 12, 12, 3]) * 3.0 + 2.0
    out = method.export_input_transform(patches).numpy()
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=(1, 2, 3)), 1.0, atol=1e-3)


def test_model_sees_tiles_in_slot_order_and_loss_is_cross_entropy():
    keras.utils.set_random_seed(0)
    method = _method(embedding_dim=6, hidden_units=16)
    images = np.random.RandomState(1).rand(2, 16, 16, 3).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices(
        {"image": images, "label": np.zeros(2, np.int64), "index": np.arange(2)})
    batch = next(iter(method.make_dataset(dataset, 2)))
    loss, metrics = method.compute_pretext_loss(batch, training=False)
    features = method.slot_features(batch["patches"], training=False).numpy()
    for b in range(2):
        for slot in range(9):
            tile = method.export_input_transform(batch["patches"][b, slot][None])
            expected = method.patch_embedding(method.backbone(tile)["pre_logits"]).numpy()[0]
            np.testing.assert_allclose(features[b, 6 * slot:6 * slot + 6], expected, atol=2e-4)
    logits = method.head(tf.constant(features), training=False).numpy()
    labels = batch["permutation"].numpy()
    assert float(loss) == pytest.approx(softmax_cross_entropy(logits, labels), rel=1e-4)
    assert float(metrics["permutation_accuracy"]) == pytest.approx((logits.argmax(1) == labels).mean())


@pytest.mark.slow
def test_loss_falls_on_synthetic_shapes(data_dir):
    keras.utils.set_random_seed(0)
    method = _method(embedding_dim=32, hidden_units=64)
    losses = fit_losses(method, data_dir, batch_size=4, steps=8, learning_rate=0.01)
    assert losses[-1] < losses[0]
