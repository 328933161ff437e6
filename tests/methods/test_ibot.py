"""iBOT: block masks per example, the teacher unmasked, DINO's loss without masks, refusals."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.augment.view_specs import ViewSpec, multi_crop
from keras_ssl.backbones.vit import encode_tokens
from keras_ssl.method import BackboneMismatchError
from keras_ssl.random import example_seed, seeded
from keras_ssl.testing import build_tiny_method, check_method, tiny_backbone, tiny_examples
from keras_ssl_methods.dino import DINO
from keras_ssl_methods.ibot import IBOT

GRID = 4  # the tiny ViT's 16-px global views in 4-px patches


def _built(**settings):
    keras.utils.set_random_seed(0)
    method = build_tiny_method(IBOT, backbone=tiny_backbone("vit", mask_token=True), **settings)
    batch = next(iter(method.make_dataset(tiny_examples(IBOT, 4), 4)))
    return method, batch


def _with_masks(batch, value):
    return {**batch, **{k: tf.fill(tf.shape(v), value) for k, v in batch.items()
                        if k.startswith("mask_")}}


def test_preprocess_draws_one_block_mask_per_global_view_reproducibly():
    method, _ = _built(mask_probability=1.0, mask_ratio_range=(0.3, 0.3))
    example = {"image": tf.random.stateless_uniform([16, 16, 3], [1, 2]), "label": 0, "index": 3}
    with seeded(example_seed(0, 3)):
        first = method.preprocess(example)
    with seeded(example_seed(0, 3)):
        again = method.preprocess(example)
    assert sorted(k for k in first if k.startswith("mask_")) == ["mask_0", "mask_1"]
    for key in ("mask_0", "mask_1"):
        assert first[key].shape == (GRID * GRID,) and first[key].dtype == tf.bool
        np.testing.assert_array_equal(first[key].numpy(), again[key].numpy())
        # round(0.3 * 16) = 5 patches at most, and at least one block of 4.
        assert 4 <= int(tf.reduce_sum(tf.cast(first[key], tf.int32))) <= 5


def test_mask_probability_zero_masks_nothing():
    _, batch = _built(mask_probability=0.0)
    assert not np.any(batch["mask_0"].numpy()) and not np.any(batch["mask_1"].numpy())


def test_without_masked_patches_the_loss_is_dinos():
    method, batch = _built()
    batch = _with_masks(batch, False)
    loss, metrics = method.compute_pretext_loss(batch, training=False)
    # DINO's own loss on the same networks (IBOT's class head and teacher are DINO's).
    dino, _ = DINO.compute_pretext_loss(method, batch, training=False)
    assert float(metrics["patch_loss"]) == 0.0
    np.testing.assert_allclose(loss.numpy(), dino.numpy(), rtol=1e-5)
    np.testing.assert_allclose(metrics["class_loss"].numpy(), dino.numpy(), rtol=1e-5)


def test_the_teacher_never_sees_the_masks():
    method, batch = _built()
    outputs = {}
    for value in (False, True):
        loss, metrics = method.compute_pretext_loss(_with_masks(batch, value), training=False)
        outputs[value] = (method._take_saved(), metrics)
    for key in ("teacher", "patch_teacher"):
        np.testing.assert_array_equal(outputs[False][0][key].numpy(), outputs[True][0][key].numpy())
    # ... while the student does: its class-token loss changes.
    assert float(outputs[True][1]["class_loss"]) != float(outputs[False][1]["class_loss"])
    assert float(outputs[True][1]["masked_fraction"]) == 1.0


def test_patch_loss_is_the_masked_cross_entropy_to_the_teachers_patches():
    method, batch = _built(mask_probability=1.0)
    _, metrics = method.compute_pretext_loss(batch, training=False)
    expected = 0.0
    for v in range(2):
        view, mask = batch[f"view_{v}"].numpy(), batch[f"mask_{v}"].numpy()
        student = encode_tokens(method.backbone, view, masked=mask)["patch_tokens"]
        teacher = encode_tokens(method.teacher_backbone, view)["patch_tokens"]
        s = method.patch_head(tf.reshape(student, [-1, 64])).numpy().reshape(4, 16, -1)
        t = method.teacher_patch_head(tf.reshape(teacher, [-1, 64])).numpy().reshape(4, 16, -1)
        target = np.exp((t - method.patch_center.numpy()) / 0.07)
        target /= target.sum(-1, keepdims=True)
        log_p = s / 0.1 - np.log(np.exp(s / 0.1).sum(-1, keepdims=True))
        ce = -(target * log_p).sum(-1)
        expected += np.mean((ce * mask).sum(1) / np.maximum(mask.sum(1), 1)) / 2
    np.testing.assert_allclose(metrics["patch_loss"].numpy(), expected, rtol=1e-4)


def test_a_step_moves_both_centres_and_shared_heads_share_weights():
    method, batch = _built(center_momentum=0.9)
    method.compile(optimizer=keras.optimizers.SGD(0.0))
    view = batch["view_0"], batch["view_1"]
    teacher = encode_tokens(method.teacher_backbone, tf.concat(view, 0), training=True)
    patches = method.teacher_patch_head(tf.reshape(teacher["patch_tokens"], [-1, 64]))
    method.train_step(batch)
    np.testing.assert_allclose(method.patch_center.numpy(), 0.1 * patches.numpy().mean(0),
                               rtol=1e-3, atol=1e-6)
    assert np.any(method.center.numpy())
    shared, _ = _built(shared_head=True)
    assert shared.patch_head is shared.head and shared.teacher_patch_head is shared.teacher_head


def test_sinkhorn_knopp_centring_leaves_the_centres_alone():
    method, batch = _built(centering="sinkhorn_knopp")
    method.compile(optimizer=keras.optimizers.SGD(0.01))
    method.train_step(batch)
    assert not np.any(method.center.numpy()) and not np.any(method.patch_center.numpy())


@pytest.mark.parametrize("settings, message", [
    (dict(mask_ratio_range=(0.5, 0.1)), r"ibot.mask_ratio_range must be \(low, high\) with 0"),
    (dict(mask_ratio_range=(0.1, 1.0)), r"ibot.mask_ratio_range must be"),
    (dict(mask_ratio_range=0.3), r"ibot.mask_ratio_range must be"),
    (dict(mask_probability=1.5), r"ibot.mask_probability must be in \[0, 1\]"),
    (dict(centering="mean"), r"ibot.centering: unknown centering 'mean'; choose one of"),
    (dict(shared_head=True, num_patch_outputs=16), r"set ibot.num_patch_outputs = 32"),
    (dict(patch_loss_weight=-1.0), r"ibot.patch_loss_weight must be >= 0"),
])
def test_bad_settings_are_refused_naming_the_binding(settings, message):
    with pytest.raises(ValueError, match=message):
        build_tiny_method(IBOT, backbone=tiny_backbone("vit", mask_token=True), **settings)


def test_blocks_that_cannot_fit_the_grid_are_refused_at_build_or_setup():
    # Global views of the image's size: the grid is known at setup.
    method = build_tiny_method(IBOT, backbone=tiny_backbone("vit", mask_token=True),
                               min_block_patches=10)
    with pytest.raises(ValueError, match=r"ibot.min_block_patches .*cannot be placed on a 4 x 4"):
        method.check_training_setup(4, 16)
    method.check_training_setup(4, 32)  # an 8 x 8 grid holds them
    with pytest.raises(ValueError, match=r"ibot.min_block_patches \(views\[0\]: 16 px"):
        build_tiny_method(IBOT, backbone=tiny_backbone("vit", mask_token=True),
                          min_block_patches=10, views=multi_crop(num_local_views=1, local_size=8,
                                                                 global_views=(ViewSpec(16),) * 2))


def test_a_vit_without_mask_token_is_refused():
    with pytest.raises(BackboneMismatchError, match="vit.mask_token = True"):
        build_tiny_method(IBOT, backbone=tiny_backbone("vit"))


@pytest.mark.slow
def test_ibot_keeps_the_method_contract():
    check_method(IBOT, replicas=False)
