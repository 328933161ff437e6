"""NPID: memory bank, NCE loss, moving-average updates, checkpoints, training."""

import os

import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.losses import nce_loss
from tests.helpers.numpy_losses import numpy_nce
from tests.helpers.contrastive_training import (
    fit_losses, orbit_run, random_examples, tiny_method, tiny_shapes_examples,
)


def test_num_examples_is_required():
    with pytest.raises(ValueError, match="npid.num_examples"):
        tiny_method("npid")


def test_bank_holds_unit_rows_and_out_of_range_index_fails():
    method = tiny_method("npid", num_examples=10, num_negatives=4)
    np.testing.assert_allclose(np.linalg.norm(method.memory_bank.numpy(), axis=1), 1.0, rtol=1e-5)
    bad = random_examples(12).skip(11).map(method.preprocess)
    with pytest.raises(tf.errors.InvalidArgumentError, match="npid.num_examples"):
        next(iter(bad))


def test_loss_is_nce_over_bank_entries():
    method = tiny_method("npid", num_examples=8, num_negatives=5, temperature=0.1)
    batch = next(iter(method.make_dataset(random_examples(8), 4)))
    tf.random.set_seed(3)
    loss, metrics = method.compute_pretext_loss(batch, training=False)
    features = tf.math.l2_normalize(method.head(method.backbone(batch["image"])["pre_logits"]), -1)
    bank = method.memory_bank.numpy()
    positive = np.sum(features.numpy() * bank[batch["index"].numpy()], -1)
    assert float(metrics["positive_similarity"]) == pytest.approx(positive.mean(), abs=1e-5)
    # The loss is NCE with some K=5 noise rows; its positive part is fixed:
    upper, _ = nce_loss(positive, np.full((4, 5), -1.0, np.float32), 8, 0.1, normalization_constant=8.0)
    assert np.isfinite(float(loss)) and float(loss) > 0 and np.isfinite(float(upper))


@pytest.mark.parametrize("fix_normalization,stored_z,uses_stored_z", [
    (True, 0.0, False),   # first step: Z estimated from this batch's noise
    (True, 2.5, True),    # later steps: the Z kept from the first step
    (False, 2.5, False),  # re-estimated on every batch, whatever was kept
])
def test_loss_equals_numpy_nce(fix_normalization, stored_z, uses_stored_z, monkeypatch):
    n, k, temperature = 8, 5, 0.1
    method = tiny_method("npid", num_examples=n, num_negatives=k, temperature=temperature,
                         fix_normalization=fix_normalization, augmentation="none")
    method.normalization_constant.assign(stored_z)
    batch = next(iter(method.make_dataset(random_examples(8).skip(2), 4)))  # indices 2..5
    # Fixed noise rows (with repeats and the positives' own rows), so the
    # reference sees exactly the bank entries the method uses.
    noise_index = np.random.RandomState(0).randint(0, n, size=(4, k)).astype(np.int32)
    monkeypatch.setattr("keras_ssl_methods.npid.noise_index", lambda *args: tf.constant(noise_index))

    loss, metrics = method.compute_pretext_loss(batch, training=False)

    pre_logits = method.backbone(batch["image"], training=False)["pre_logits"]
    features = method.head(pre_logits).numpy().astype(np.float64)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    bank = method.memory_bank.numpy().astype(np.float64)
    positive = np.sum(features * bank[batch["index"].numpy()], axis=1)
    noise = np.einsum("bd,bkd->bk", features, bank[noise_index])
    z = stored_z if uses_stored_z else n * np.mean(np.exp(noise / temperature))
    expected = numpy_nce(positive, noise, n, temperature, z)
    assert float(metrics["nce_loss"]) == pytest.approx(expected, rel=1e-4)
    assert float(loss) == pytest.approx(expected, rel=1e-4)  # no probe: the loss is the NCE


def test_train_step_updates_bank_rows_by_moving_average():
    method = tiny_method("npid", num_examples=8, num_negatives=4, bank_momentum=0.5)
    batch = next(iter(method.make_dataset(random_examples(8).skip(4), 4)))  # indices 4..7
    before = method.memory_bank.numpy()
    method.compile(optimizer="sgd")
    # The step computed features in training mode with the weights before the update.
    pre_logits = method.backbone(batch["image"], training=True)["pre_logits"]
    features = tf.math.l2_normalize(method.head(pre_logits), -1).numpy()
    method.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
    after = method.memory_bank.numpy()
    expected = 0.5 * before[4:] + 0.5 * features
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(after[4:], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(after[:4], before[:4])
    assert float(method.normalization_constant.numpy()) > 0  # estimated on the first step


@pytest.mark.slow
def test_loss_falls_on_tiny_shapes(data_dir):
    method = tiny_method("npid", num_examples=96, num_negatives=32, fix_normalization=False,
                         augmentation="none")
    history = fit_losses(method, tiny_shapes_examples(data_dir, n=16), learning_rate=0.03)
    assert history["loss"][-1] < history["loss"][0]


@pytest.mark.slow
def test_trains_with_keras_ssl_train_and_bank_is_checkpointed(data_dir, tmp_path):
    outputs, model_dir = orbit_run(
        data_dir, tmp_path, "npid",
        **{"npid.num_examples": 96, "npid.num_negatives": 16, "npid.fix_normalization": False},
    )
    assert np.isfinite(outputs["loss"])
    names = tf.train.load_checkpoint(os.path.join(model_dir, "ckpt-4")).get_variable_to_shape_map()
    bank = [n for n in names if "memory_bank" in n and "OPTIMIZER" not in n]
    assert bank and names[bank[0]] == [96, 128]
