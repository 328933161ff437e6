"""PIRL: the image and its shuffled tiles, the two NCE terms against one bank, its updates."""


import numpy as np
import pytest
import tensorflow as tf

from tests.helpers.contrastive_training import (
    fit_losses, random_examples, tiny_method, tiny_shapes_examples,
)
from tests.helpers.method_runs import build_configured_method
from tests.helpers.numpy_losses import numpy_nce, normalize
from keras_ssl.testing import TINY_PATCH_GRID

GRID_ARGS = dict(TINY_PATCH_GRID)  # 48 px resized, a 45-px crop, 12-px tiles of 15-px cells


def _pirl(**kwargs):
    return tiny_method("pirl", **{"num_examples": 8, "num_negatives": 5, "projection_dim": 16,
                                  "augmentation": "none", **GRID_ARGS, **kwargs})


def test_num_examples_is_required_and_named_as_pirl():
    with pytest.raises(ValueError, match="pirl.num_examples"):
        tiny_method("pirl", **GRID_ARGS)


@pytest.mark.parametrize("kwargs,message", [
    ({"jigsaw_weight": 1.5}, "jigsaw_weight must be in"),
    ({"crop": 50}, "crop .50. must not exceed resize"),
    ({"patch_size": 16}, "must fit in a cell of crop // 3 = 45 // 3 = 15"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _pirl(**kwargs)


def test_an_index_beyond_the_bank_stops_the_pipeline_naming_the_binding():
    bad = random_examples(12, size=48).skip(11).map(_pirl().preprocess)
    with pytest.raises(tf.errors.InvalidArgumentError, match="pirl.num_examples"):
        next(iter(bad))


@pytest.mark.parametrize("in_tf_data", [False, True])
def test_tiles_are_the_grid_cells_of_the_image_in_a_random_order(in_tf_data):
    # resize == crop and tile == cell: the tiles are exactly the nine cells.
    method = _pirl(resize=45, crop=45, patch_size=15)
    image = np.random.RandomState(0).rand(45, 45, 3).astype(np.float32)
    example = {"image": tf.constant(image), "label": tf.constant(1, tf.int64),
               "index": tf.constant(3, tf.int64)}
    if in_tf_data:
        inputs = next(iter(tf.data.Dataset.from_tensors(example).map(method.preprocess)))
    else:
        inputs = method.preprocess(example)
    np.testing.assert_allclose(inputs["image"], image, atol=1e-6)
    cells = [image[r * 15:(r + 1) * 15, c * 15:(c + 1) * 15] for r in range(3) for c in range(3)]
    tiles = inputs["tiles"].numpy()
    order = [int(np.argmin([np.abs(tile - cell).max() for cell in cells])) for tile in tiles]
    assert sorted(order) == list(range(9))
    for tile, cell in zip(tiles, order):
        np.testing.assert_allclose(tile, cells[cell], atol=1e-5)
    assert int(inputs["index"]) == 3


def test_each_image_draws_its_own_tile_order():
    method = _pirl(resize=45, crop=45, patch_size=15)
    image = np.random.RandomState(1).rand(45, 45, 3).astype(np.float32)
    examples = tf.data.Dataset.from_tensor_slices({
        "image": np.repeat(image[None], 6, 0), "label": np.zeros(6, np.int64),
        "index": np.arange(6, dtype=np.int64)})
    batch = next(iter(method.make_dataset(examples, 6)))
    orders = {batch["tiles"][i].numpy().tobytes() for i in range(6)}
    assert len(orders) == 6


def test_loss_is_the_weighted_sum_of_both_nce_terms_against_the_same_bank_rows(monkeypatch):
    n, k, temperature, weight = 8, 5, 0.1, 0.3
    method = _pirl(num_negatives=k, temperature=temperature, jigsaw_weight=weight,
                   fix_normalization=False)
    batch = next(iter(method.make_dataset(random_examples(8, size=48).skip(2), 4)))
    noise_index = np.random.RandomState(0).randint(0, n, size=(4, k)).astype(np.int32)
    monkeypatch.setattr("keras_ssl_methods.npid.noise_index", lambda *args: tf.constant(noise_index))

    loss, metrics = method.compute_pretext_loss(batch, training=False)

    def unit(x):
        return normalize(x.numpy().astype(np.float64))

    features = unit(method.head(method.backbone(batch["image"])["pre_logits"]))
    tiles = tf.reshape(batch["tiles"], (-1, 12, 12, 3))
    projected = method.tile_projection(method.backbone(tiles)["pre_logits"])
    jigsaw = unit(method.jigsaw_projection(tf.reshape(projected, (4, 9 * 16))))
    bank = method.memory_bank.numpy().astype(np.float64)
    positives, noise = bank[batch["index"].numpy()], bank[noise_index]

    def scores(encoded):
        return np.sum(encoded * positives, 1), np.einsum("bd,bkd->bk", encoded, noise)

    z = n * np.mean(np.exp(scores(features)[1] / temperature))  # from f's noise scores
    image_loss = numpy_nce(*scores(features), n, temperature, z)
    jigsaw_loss = numpy_nce(*scores(jigsaw), n, temperature, z)
    assert float(metrics["image_nce_loss"]) == pytest.approx(image_loss, rel=1e-4)
    assert float(metrics["jigsaw_nce_loss"]) == pytest.approx(jigsaw_loss, rel=1e-4)
    assert float(loss) == pytest.approx(weight * jigsaw_loss + (1 - weight) * image_loss,
                                        rel=1e-4)


def test_train_step_moves_the_bank_towards_the_image_features_only():
    method = _pirl(num_negatives=4, bank_momentum=0.5)
    batch = next(iter(method.make_dataset(random_examples(8, size=48).skip(4), 4)))
    before = method.memory_bank.numpy()
    method.compile(optimizer="sgd")
    features = normalize(method.head(
        method.backbone(batch["image"], training=True)["pre_logits"]).numpy())
    method.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
    after = method.memory_bank.numpy()
    np.testing.assert_allclose(after[4:], normalize(0.5 * before[4:] + 0.5 * features),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(after[:4], before[:4])


@pytest.mark.slow
def test_loss_falls_on_tiny_shapes(data_dir):
    method = _pirl(num_examples=96, num_negatives=32, fix_normalization=False)
    examples = tiny_shapes_examples(data_dir, n=16).map(
        lambda e: {**e, "image": tf.image.resize(e["image"], [48, 48])})
    history = fit_losses(method, examples, learning_rate=0.03)
    assert history["loss"][-1] < history["loss"][0]


@pytest.mark.parametrize("config", ["synthetic_shapes", "imagenet_resnet50"])
def test_gin_configs_build_the_method(config):
    import gin

    method = build_configured_method(f"pirl/{config}.gin", [
        "resnet_v2.depth = 10", "resnet_v2.widening_factor = 1", "pirl.projection_dim = 8"])
    assert method.memory_bank.shape[0] == gin.query_parameter("pirl.num_examples")


def test_tiles_normalise_in_training_mode_but_leave_the_moving_statistics_to_the_images():
    import keras

    method = _pirl()
    batch = next(iter(method.make_dataset(random_examples(8, size=48), 4)))
    layers = [layer for layer in method.backbone._flatten_layers()
              if isinstance(layer, keras.layers.BatchNormalization)]
    method.compute_pretext_loss(batch, training=False)  # builds the heads

    def moving():
        return [np.concatenate([layer.moving_mean.numpy(), layer.moving_variance.numpy()])
                for layer in layers]

    before = moving()
    method.jigsaw_features(batch["tiles"], training=True)
    for was, now in zip(before, moving()):
        np.testing.assert_array_equal(now, was)
    assert all(layer.momentum == 0.99 for layer in layers)
    method.image_features(batch["image"], training=True)
    assert any(np.abs(now - was).max() > 0 for was, now in zip(before, moving()))


@pytest.mark.slow
def test_two_replicas_tracing_the_tiles_leave_batch_norm_as_it_was():
    # Setting each layer's momentum to 1 around the tiles did this on one
    # device, but the replicas trace in turns on the same layers: one
    # replica's restore left every momentum at 1, freezing the export's
    # moving statistics for the rest of training.
    import json
    import os
    import subprocess
    import sys

    from tests.helpers import HELPERS

    helper = os.path.join(HELPERS, "pirl_replicas.py")
    result = subprocess.run([sys.executable, helper], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["momenta"] == [0.99]
    assert report["moving_change"] == 0.0
