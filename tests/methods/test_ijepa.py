"""I-JEPA: its loss against the paper's formula, the exact static-shape context and predictor, the EMA target encoder, masks, refusals, configs."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl import random as ssl_random
from keras_ssl.backbones.vit import encode_tokens
from keras_ssl.testing import check_method, tiny_backbone, tiny_examples
from keras_ssl.toolkit.masking import multi_block_masks, sincos_position_embedding
from keras_ssl_methods.ijepa import IJEPA, ijepa_loss, linear_momentum, normalize_tokens
from tests.helpers.method_runs import build_configured_method


def _method(**overrides):
    keras.utils.set_random_seed(0)
    return IJEPA(tiny_backbone("vit"), **{**IJEPA.tiny_settings(), **overrides})


def _batch(method, count=4):
    return next(iter(method.make_dataset(tiny_examples(IJEPA, count), count)))


def test_loss_is_each_blocks_mean_squared_l2_distance_per_patch_and_channel_over_blocks_and_images():
    rng = np.random.default_rng(0)
    b, m, n, c = 3, 2, 9, 5
    predictions = rng.normal(size=(b, m, n, c))
    targets = rng.normal(size=(b, n, c))
    masks = rng.random((b, m, n)) < 0.4
    masks[:, :, 0] = True  # every block holds a patch
    expected = np.mean([[np.mean([np.sum((predictions[i, k, j] - targets[i, j]) ** 2) / c
                                  for j in np.flatnonzero(masks[i, k])])
                         for k in range(m)] for i in range(b)])
    got = ijepa_loss(tf.constant(predictions, tf.float32), tf.constant(targets, tf.float32),
                     tf.constant(masks))
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_no_gradient_flows_into_the_targets_and_none_from_positions_outside_the_blocks():
    predictions = tf.Variable(tf.ones((1, 1, 4, 2)))
    targets = tf.Variable(tf.zeros((1, 4, 2)))
    with tf.GradientTape(persistent=True) as tape:
        loss = ijepa_loss(predictions, targets, tf.constant([[[True, False, True, False]]]))
    assert tape.gradient(loss, targets) is None
    gradient = tape.gradient(loss, predictions).numpy()[0, 0]
    np.testing.assert_allclose(gradient, [[.5, .5], [0, 0], [.5, .5], [0, 0]])  # 2(p - t)/(|B| C)


def test_targets_are_layer_normalised_over_channels_without_parameters():
    x = np.random.default_rng(1).normal(size=(2, 3, 8)) * 3 + 1
    expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(normalize_tokens(tf.constant(x, tf.float32)), expected, rtol=1e-4,
                               atol=1e-5)


def test_context_tokens_encoded_with_the_key_mask_equal_those_of_encoding_the_context_alone():
    net = tiny_backbone("vit", depth=2)
    image = tf.random.stateless_uniform((1, 16, 16, 3), (1, 2))
    context = np.zeros((1, 16), bool)
    context[0, [1, 2, 5, 6, 9, 13]] = True
    masked = encode_tokens(net, image, visible=tf.constant(context))
    alone = encode_tokens(net, image, keep=tf.constant(np.flatnonzero(context)[None], tf.int32))
    np.testing.assert_allclose(masked["patch_tokens"].numpy()[context][None],
                               alone["patch_tokens"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(masked["class_token"], alone["class_token"], rtol=1e-5, atol=1e-5)
    # The non-context tokens do differ from a pass without the mask (the mask acts).
    full = encode_tokens(net, image)["patch_tokens"].numpy()[context][None]
    assert np.abs(full - alone["patch_tokens"].numpy()).max() > 1e-3


def test_predictor_outputs_one_prediction_per_block_and_position():
    method = _method(num_targets=3, target_scale=(0.1, 0.15))
    batch = _batch(method)
    predictions = method.predict_targets(batch["image"], batch["context"], batch["targets"],
                                         training=False)
    assert tuple(batch["targets"].shape) == (4, 3, 16)
    assert tuple(predictions.shape) == (4, 3, 16, 64)
    assert tuple(method.target_tokens(batch["image"], False).shape) == (4, 16, 64)


def test_predictions_at_a_block_equal_the_papers_predictor_on_context_and_mask_tokens_alone():
    method = _method(predictor_depth=2)
    predictor = method.predictor
    rng = np.random.default_rng(2)
    tokens = tf.constant(rng.normal(size=(1, 16, 64)), tf.float32)
    context = np.zeros((1, 16), bool)
    context[0, [0, 1, 4, 5, 8]] = True
    targets = np.zeros((1, 2, 16), bool)
    targets[0, 0, [10, 14]] = True
    targets[0, 1, [2, 3, 6]] = True
    got = predictor(tokens, tf.constant(context), tf.constant(targets), grid=(4, 4)).numpy()
    # The paper's predictor: the context tokens (mapped, plus their positions) followed by a
    # mask token at each of the block's positions, a sequence of their own length, no mask.
    positions = sincos_position_embedding(4, 4, 16)
    for i in range(2):
        context_index, target_index = np.flatnonzero(context[0]), np.flatnonzero(targets[0, i])
        x = predictor.embed(tokens).numpy()[0, context_index] + positions[context_index]
        masks = predictor.mask_token.numpy()[0] + positions[target_index]
        sequence = tf.constant(np.concatenate([x, masks])[None], tf.float32)
        for block in predictor.blocks:
            sequence = block(sequence)
        expected = predictor.projection(predictor.norm(sequence)).numpy()[0, len(context_index):]
        np.testing.assert_allclose(got[0, i, target_index], expected, rtol=1e-4, atol=1e-5)


def test_target_encoder_gets_no_gradient_and_follows_the_backbone_by_its_momentum():
    method = _method()
    batch = _batch(method)
    target_weights = method.target_backbone.trainable_weights
    trained = {id(v) for v in method.trainable_variables}
    assert target_weights and not any(id(v) in trained for v in target_weights)
    with tf.GradientTape() as tape:
        loss, _ = method.compute_pretext_loss(batch, training=True)
    assert all(g is None for g in tape.gradient(loss, target_weights))

    method.compile(optimizer=keras.optimizers.SGD(0.5))
    method.train_steps = 4
    before = [v.numpy() for v in target_weights]
    np.testing.assert_array_equal(before[3], method.backbone.trainable_weights[3].numpy())
    method.train_step(batch)
    momentum = float(linear_momentum(0.996, 1 / 4))  # after_update runs at step 1 of 4
    assert momentum == pytest.approx(0.997)
    changed = 0
    for old, target, source in zip(before, target_weights, method.backbone.trainable_weights):
        expected = momentum * old + (1 - momentum) * source.numpy()
        np.testing.assert_allclose(target.numpy(), expected, rtol=1e-5, atol=1e-7)
        changed += not np.array_equal(target.numpy(), old)
    assert changed > len(before) // 2


def test_momentum_rises_linearly_by_default_and_along_a_cosine_on_request():
    assert float(linear_momentum(0.996, 0.0)) == pytest.approx(0.996)
    assert float(linear_momentum(0.996, 0.25)) == pytest.approx(0.997)
    assert float(linear_momentum(0.996, 1.0)) == pytest.approx(1.0)
    cosine = _method(momentum_schedule="cosine")
    cosine.compile(optimizer=keras.optimizers.SGD(0.1))
    cosine.train_steps = 4
    cosine.optimizer.iterations.assign(1)
    expected = 1 - 0.004 * (np.cos(np.pi / 4) + 1) / 2  # BYOL's rule a quarter of the way
    assert float(cosine.momentum()) == pytest.approx(expected)


def test_masks_are_drawn_per_example_reproducibly():
    method = _method(num_targets=4, target_scale=(0.1, 0.2))
    example = next(iter(tiny_examples(IJEPA, 1)))

    def masks(index):
        with ssl_random.seeded(ssl_random.example_seed(0, 0, index)):
            out = method.preprocess(example)
        return out["context"].numpy(), out["targets"].numpy(), out["image"].numpy()

    first, again = masks(7), masks(7)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    others = [masks(i) for i in range(8)]
    assert any(not np.array_equal(first[1], other[1]) for other in others)
    # The context never holds a target patch.
    for context, targets, _ in others:
        assert not np.any(context & targets.any(0))
    # Through make_dataset: the same seed and index give the same masks.
    one, two = _batch(method), _batch(method)
    for key in ("context", "targets", "image"):
        np.testing.assert_array_equal(one[key].numpy(), two[key].numpy())


@pytest.mark.slow
def test_ijepa_keeps_the_method_contract():
    check_method(IJEPA, replicas=False)


def test_num_targets_below_one_is_refused():
    with pytest.raises(ValueError, match=r"ijepa.num_targets"):
        _method(num_targets=0)


def test_target_blocks_that_cannot_fit_the_grid_are_refused():
    with pytest.raises(ValueError, match="hold no patch"):
        multi_block_masks(4, 4, target_scale=(0.01, 0.02))
    with pytest.raises(ValueError, match=r"do not fit the 4 x 4 patch grid.*ijepa.target_scale"):
        _method(target_scale=(0.01, 0.02))
    method = _method()
    with pytest.raises(ValueError, match=r"1 x 1 patch grid of keras_ssl.train.image_size = 4"):
        method.check_training_setup(4, 4)
    method.check_training_setup(4, 32)


@pytest.mark.parametrize("setting, value, match", [
    ("context_scale", (0.9, 1.2), "ijepa.context_scale"),
    ("target_aspect_ratio", (2.0, 1.0), "ijepa.target_aspect_ratio"),
    ("crop_area_range", (0.0, 1.0), "ijepa.crop_area_range"),
    ("predictor_num_heads", 3, "ijepa.predictor_num_heads"),
    ("predictor_width", 18, "multiple of 4.*ijepa.predictor_width"),
    ("predictor_depth", 0, "ijepa.predictor_depth"),
    ("base_momentum", 1.5, "ijepa.base_momentum"),
    ("momentum_schedule", "step", "ijepa.momentum_schedule"),
])
def test_bad_settings_are_refused_naming_their_binding(setting, value, match):
    with pytest.raises(ValueError, match=match):
        _method(**{setting: value})


def test_a_backbone_other_than_a_vit_is_refused():
    with pytest.raises(ValueError, match="keras_ssl.build_method.backbone = 'vit'"):
        IJEPA(tiny_backbone(), **IJEPA.tiny_settings())


@pytest.mark.parametrize("config", ["synthetic_shapes", "imagenet_vit_huge"])
def test_gin_configs_build_the_method(config):
    method = build_configured_method(f"ijepa/{config}.gin", [
        "vit.widening_factor = 1", "vit.depth = 1", "ijepa.predictor_width = 16",
        "ijepa.predictor_depth = 1", "ijepa.predictor_num_heads = 2"])
    assert method.num_targets == 4 and method.momentum_schedule == "linear"
    assert method.target_scale == (0.15, 0.2) and method.crop_area_range == (0.3, 1.0)
