"""DINOv2: KoLeo on the student's masked class tokens, Sinkhorn-Knopp centring, registers, refusals."""

import keras
import numpy as np
import pytest

from keras_ssl.backbones.vit import encode_tokens
from keras_ssl.testing import build_tiny_method, check_method, tiny_backbone, tiny_examples
from keras_ssl_methods.dinov2 import DINOv2, dinov2_views
from tests.core.losses.test_masked_distillation import numpy_koleo


def _built(backbone=None, **settings):
    keras.utils.set_random_seed(0)
    backbone = backbone or tiny_backbone("vit", mask_token=True)
    method = build_tiny_method(DINOv2, backbone=backbone, **settings)
    batch = next(iter(method.make_dataset(tiny_examples(DINOv2, 4), 4)))
    return method, batch


def test_defaults_are_the_papers():
    method = DINOv2(tiny_backbone("vit", mask_token=True), num_outputs=16, num_patch_outputs=16,
                    hidden_dim=16, bottleneck_dim=8)
    assert method.centering == "sinkhorn_knopp" and method.koleo_weight == 0.1
    assert method.mask_probability == 0.5 and method.mask_ratio_range == (0.1, 0.5)
    assert method.patch_head is not method.head  # separate DINO and iBOT heads
    assert len(method.views) == 10 and method.views == dinov2_views()
    assert method.views[0].area_range == (0.32, 1.0) and method.views[2].area_range == (0.05, 0.32)


def test_koleo_term_is_the_numpy_koleo_of_each_masked_global_views_class_tokens():
    method, batch = _built()
    loss, metrics = method.compute_pretext_loss(batch, training=False)
    expected = sum(
        numpy_koleo(encode_tokens(method.backbone, batch[f"view_{v}"],
                                  masked=batch[f"mask_{v}"])["class_token"].numpy())
        for v in range(2))
    np.testing.assert_allclose(metrics["koleo_loss"].numpy(), expected, rtol=1e-4)
    np.testing.assert_allclose(
        loss.numpy(),
        (metrics["class_loss"] + metrics["patch_loss"] + 0.1 * metrics["koleo_loss"]).numpy(),
        rtol=1e-5)
    method.koleo_weight = 0.0
    without, metrics = method.compute_pretext_loss(batch, training=False)
    assert "koleo_loss" not in metrics
    np.testing.assert_allclose(without.numpy(), loss.numpy() - 0.1 * expected, rtol=1e-4)


def test_softmax_centring_is_an_option():
    method, batch = _built()
    _, metrics = method.compute_pretext_loss(batch, training=False)
    assert np.isfinite(float(metrics["teacher_entropy"]))
    method.centering = "softmax"
    _, softmax_metrics = method.compute_pretext_loss(batch, training=False)
    assert float(softmax_metrics["class_loss"]) != float(metrics["class_loss"])


def test_registers_and_layer_scale_train():
    backbone = tiny_backbone("vit", mask_token=True, num_registers=2, layer_scale=1e-5)
    method, batch = _built(backbone=backbone)
    method.compile(optimizer=keras.optimizers.SGD(0.01))
    outputs = method.train_step(batch)
    assert np.isfinite(float(outputs["loss"]))


@pytest.mark.parametrize("settings, message", [
    (dict(koleo_weight=-0.1), r"dinov2.koleo_weight must be >= 0"),
    (dict(centering="centering"), r"dinov2.centering: unknown centering 'centering'"),
    (dict(mask_ratio_range=(0.1, 1.5)), r"dinov2.mask_ratio_range must be"),
])
def test_bad_settings_are_refused_naming_the_binding(settings, message):
    with pytest.raises(ValueError, match=message):
        build_tiny_method(DINOv2, backbone=tiny_backbone("vit", mask_token=True), **settings)


@pytest.mark.slow
def test_dinov2_keeps_the_method_contract():
    check_method(DINOv2, replicas=False)
