"""CMC and its L | ab two-halves backbone: end-points, the loss against numpy, banks, bad input."""


import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.registry import METHODS
from keras_ssl_methods import _lab
from keras_ssl_methods._two_halves import lab_halves_backbone, lab_input
from keras_ssl_methods.cmc import cross_view_info_nce, memory_bank_info_nce
from tests.helpers.classic_methods import fit_losses
from tests.helpers.method_runs import build_configured_method
from keras_ssl.testing import TINY_NUM_EXAMPLES, check_replicas, tiny_backbone

ENDPOINTS = ("after_root", "block1", "block2", "block3", "block4", "pre_logits")


def _method(**kwargs):
    return METHODS.get("cmc")(tiny_backbone(), **{
        "num_examples": TINY_NUM_EXAMPLES, "num_negatives": 6, "projection_dim": 16, **kwargs})


def _examples(images):
    n = len(images)
    return tf.data.Dataset.from_tensor_slices({
        "image": np.asarray(images, np.float32), "label": np.zeros(n, np.int64),
        "index": np.arange(n, dtype=np.int64)})


def _numpy_bank_info_nce(features, positives, noise, temperature):
    """-log softmax of the positive among [positive, noise] scores, averaged over the batch."""
    logits = np.concatenate([(features * positives).sum(-1)[:, None],
                             np.einsum("bd,bkd->bk", features, noise)], axis=1) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(logits).sum(1)) - logits[:, 0]))


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_memory_bank_info_nce_matches_numpy():
    rng = np.random.RandomState(0)
    features, positives = _unit(rng.randn(5, 8)), _unit(rng.randn(5, 8))
    noise = _unit(rng.randn(5, 7, 8))
    for temperature in (0.07, 0.5):
        loss, positive_scores = memory_bank_info_nce(
            *(tf.constant(a, tf.float32) for a in (features, positives, noise)), temperature)
        assert float(loss) == pytest.approx(
            _numpy_bank_info_nce(features, positives, noise, temperature), rel=1e-5)
        np.testing.assert_allclose(positive_scores, (features * positives).sum(-1), atol=1e-6)


def test_cross_view_info_nce_matches_numpy():
    rng = np.random.RandomState(8)
    queries, keys = _unit(rng.randn(6, 5)), _unit(rng.randn(6, 5))
    loss, positive_scores = cross_view_info_nce(
        tf.constant(queries, tf.float32), tf.constant(keys, tf.float32), 0.1)
    logits = queries @ keys.T / 0.1
    logits -= logits.max(1, keepdims=True)
    expected = np.mean(np.log(np.exp(logits).sum(1)) - np.diag(logits))
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(positive_scores, (queries * keys).sum(-1), atol=1e-6)


def test_batch_negatives_need_no_bank_and_train():
    method = METHODS.get("cmc")(tiny_backbone(), negatives="batch", projection_dim=16)
    assert not [v for v in method.weights if "memory_bank" in v.path]
    images = np.random.RandomState(9).rand(4, 16, 16, 3).astype(np.float32)
    batch = next(iter(method.make_dataset(_examples(images), 4)))
    assert "index" not in batch
    loss, metrics = method.compute_pretext_loss(batch, training=False)
    assert float(loss) == pytest.approx(
        float(metrics["l_to_ab_loss"]) + float(metrics["ab_to_l_loss"]), rel=1e-5)
    with pytest.raises(ValueError, match="negatives must be one of"):
        METHODS.get("cmc")(tiny_backbone(), negatives="queue")


@pytest.mark.slow
def test_batch_negatives_on_two_replicas_train_like_one_device():
    """The registry's replica check (two steps) with the global batch's negatives."""
    check_replicas("cmc", negatives="batch")


def test_halves_backbone_concatenates_the_halves_and_keeps_their_end_points():
    net = lab_halves_backbone(tiny_backbone())
    assert net.endpoint_names == ENDPOINTS + tuple(
        f"{prefix}_{name}" for prefix in ("l", "ab") for name in ENDPOINTS)
    lab = lab_input(tf.random.uniform([2, 16, 16, 3], seed=1))
    outputs = net(lab)
    assert outputs["pre_logits"].shape == (2, 256) and outputs["l_pre_logits"].shape == (2, 128)
    for name in ENDPOINTS:
        np.testing.assert_allclose(
            outputs[name], tf.concat([outputs[f"l_{name}"], outputs[f"ab_{name}"]], -1))
    # Each half reads its own channels only: changing ab leaves the L half as it was.
    changed = net(tf.concat([lab[..., :1], -lab[..., 1:]], -1))
    np.testing.assert_allclose(changed["l_block3"], outputs["l_block3"], atol=1e-6)
    assert np.abs(changed["ab_block3"] - outputs["ab_block3"]).max() > 1e-3
    first_kernels = [v.shape for v in net.weights if "kernel" in v.path][:1]
    assert first_kernels[0][2] in (1, 2)


def test_lab_input_is_normalised_lab():
    rgb = np.random.RandomState(2).rand(4, 4, 3).astype(np.float32)
    np.testing.assert_allclose(
        lab_input(rgb), _lab.rgb_to_lab(rgb).numpy() / [100.0, 110.0, 110.0], rtol=1e-6)


def test_preprocess_eager_and_inside_tf_data():
    method = _method(augmentation="none")
    image = np.random.RandomState(3).rand(16, 16, 3).astype(np.float32)
    eager = method.preprocess(
        {"image": tf.constant(image), "label": tf.constant(2, tf.int64), "index": tf.constant(5, tf.int64)})
    in_data = next(iter(_examples([image]).map(method.preprocess)))
    for inputs, index in ((eager, 5), (in_data, 0)):
        np.testing.assert_allclose(inputs["image"], image)
        assert int(inputs["index"]) == index


def test_pretext_loss_is_both_directions_against_the_other_views_bank(monkeypatch):
    method = _method()
    images = np.random.RandomState(4).rand(4, 16, 16, 3).astype(np.float32)
    batch = next(iter(method.make_dataset(_examples(images), 4)))
    noise = np.random.RandomState(5).randint(0, TINY_NUM_EXAMPLES, (4, 6))
    monkeypatch.setattr("keras_ssl_methods.cmc.noise_index", lambda *args: tf.constant(noise))
    loss, metrics = method.compute_pretext_loss(batch, training=False)
    outputs = method.backbone(lab_input(batch["image"]))
    z_l = _unit(method.l_head(outputs["l_pre_logits"]).numpy())
    z_ab = _unit(method.ab_head(outputs["ab_pre_logits"]).numpy())
    index = batch["index"].numpy()
    l_bank, ab_bank = method.l_memory_bank.numpy(), method.ab_memory_bank.numpy()
    l_to_ab = _numpy_bank_info_nce(z_l, ab_bank[index], ab_bank[noise], 0.07)
    ab_to_l = _numpy_bank_info_nce(z_ab, l_bank[index], l_bank[noise], 0.07)
    assert float(metrics["l_to_ab_loss"]) == pytest.approx(l_to_ab, rel=1e-4)
    assert float(metrics["ab_to_l_loss"]) == pytest.approx(ab_to_l, rel=1e-4)
    assert float(loss) == pytest.approx(l_to_ab + ab_to_l, rel=1e-4)


def test_after_update_moves_each_bank_towards_its_own_view():
    method = _method()
    l_before, ab_before = method.l_memory_bank.numpy(), method.ab_memory_bank.numpy()
    rng = np.random.RandomState(6)
    l_features, ab_features = _unit(rng.randn(2, 16)), _unit(rng.randn(2, 16))
    method.after_update({"index": tf.constant([1, 3]),
                         "l_features": tf.constant(l_features, tf.float32),
                         "ab_features": tf.constant(ab_features, tf.float32)})
    np.testing.assert_allclose(
        method.l_memory_bank.numpy()[[1, 3]], _unit(0.5 * l_before[[1, 3]] + 0.5 * l_features),
        atol=1e-6)
    np.testing.assert_allclose(
        method.ab_memory_bank.numpy()[[1, 3]], _unit(0.5 * ab_before[[1, 3]] + 0.5 * ab_features),
        atol=1e-6)
    np.testing.assert_array_equal(method.l_memory_bank.numpy()[[0, 2]], l_before[[0, 2]])


def test_grayscale_only_data_are_refused_before_training():
    gray = np.repeat(np.random.RandomState(7).rand(3, 16, 16, 1), 3, axis=-1).astype(np.float32)
    with pytest.raises(ValueError, match="first 3 training images are grayscale.*colour"):
        _method().adapt(_examples(gray))
    with pytest.raises(ValueError, match="grayscale"):
        _method().make_dataset(_examples(gray), 2)
    colour = gray.copy()
    colour[0, 0, 0] = [1.0, 0.0, 0.0]
    _method().adapt(_examples(colour))


def test_single_channel_images_are_refused():
    with pytest.raises(ValueError, match=r"needs RGB images, \[H, W, 3\]"):
        _method().adapt(_examples(np.zeros((2, 16, 16, 1), np.float32)))


def test_a_bank_size_is_required():
    with pytest.raises(ValueError, match="bind `cmc.num_examples = N`"):
        METHODS.get("cmc")(tiny_backbone())


def test_loss_falls_when_training_a_few_steps(data_dir):
    keras.utils.set_random_seed(0)
    losses = fit_losses(_method(), data_dir)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("config", ["synthetic_shapes", "imagenet_resnet50"])
def test_gin_configs_build_the_method(config):
    method = build_configured_method(f"cmc/{config}.gin", [
        "resnet_v2.widening_factor = 1", "resnet_v2.depth = 10", "cmc.num_examples = 16",
        "cmc.num_negatives = 4"])
    outputs = method(tf.zeros([1, 32, 32, 3]))
    assert outputs["pre_logits"].shape[-1] == 2 * outputs["l_pre_logits"].shape[-1]
    assert method.negatives == {"synthetic_shapes": "batch"}.get(config, "memory_bank")
