"""Split-Brain: targets and loss against numpy, per-half heads, end-points, bad input, training."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.registry import METHODS
from keras_ssl_methods import _lab
from keras_ssl_methods.split_brain import lightness_bin
from tests.helpers.classic_methods import fit_losses
from tests.helpers.method_runs import build_configured_method
from keras_ssl.testing import tiny_backbone


def _method(**kwargs):
    return METHODS.get("split_brain")(tiny_backbone(), **{
        "head_units": 8, "lightness_bins": 10, "endpoint": "block2", **kwargs})


def _examples(images):
    return tf.data.Dataset.from_tensor_slices({
        "image": np.asarray(images, np.float32), "label": np.zeros(len(images), np.int64),
        "index": np.arange(len(images), dtype=np.int64)})


def _numpy_cross_entropy(logits, labels):
    logits = logits - logits.max(-1, keepdims=True)
    log_probabilities = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probabilities, labels[..., None], -1).mean()


def _numpy_targets(images, factor, ab_bins, lightness_bins):
    """Nearest ab bin and L bin of each factor x factor block's mean Lab."""
    lab = _lab.rgb_to_lab(images).numpy()
    b, h, w, _ = lab.shape
    lab = lab.reshape(b, h // factor, factor, w // factor, factor, 3).mean((2, 4))
    distances = ((lab[..., None, 1:] - ab_bins) ** 2).sum(-1)
    l_bins = np.clip(np.floor(lab[..., 0] * lightness_bins / 100.0), 0, lightness_bins - 1)
    return distances.argmin(-1), l_bins.astype(np.int64)


def test_lightness_bins_split_0_to_100_equally():
    np.testing.assert_array_equal(
        lightness_bin(tf.constant([0.0, 9.99, 10.0, 55.0, 99.9, 100.0, 104.0]), 10),
        [0, 0, 1, 5, 9, 9, 9])


def test_pretext_loss_is_both_cross_entropies_against_numpy_targets():
    method = _method()
    images = np.random.RandomState(0).rand(2, 16, 16, 3).astype(np.float32)
    loss, metrics = method.compute_pretext_loss({"image": tf.constant(images)}, training=False)
    ab_logits, l_logits = (t.numpy() for t in method.logits(tf.constant(images), False))
    assert ab_logits.shape == (2, 8, 8, len(method.ab_bins)) and l_logits.shape == (2, 8, 8, 10)
    ab_target, l_target = _numpy_targets(images, 2, method.ab_bins, 10)
    ab_loss = _numpy_cross_entropy(ab_logits, ab_target)
    l_loss = _numpy_cross_entropy(l_logits, l_target)
    assert float(metrics["ab_loss"]) == pytest.approx(ab_loss, rel=1e-4)
    assert float(metrics["l_loss"]) == pytest.approx(l_loss, rel=1e-4)
    assert float(loss) == pytest.approx(ab_loss + l_loss, rel=1e-4)
    assert float(metrics["l_bin_accuracy"]) == pytest.approx(
        (l_logits.argmax(-1) == l_target).mean())


def test_each_head_reads_only_its_half():
    """The ab prediction comes from L alone, and the L prediction from ab alone."""
    method = _method()
    rng = np.random.RandomState(1)
    image = rng.rand(1, 16, 16, 3).astype(np.float32)
    gray = np.repeat(image.mean(-1, keepdims=True), 3, -1)  # other colours, close lightness
    ab_logits, l_logits = method.logits(tf.constant(image), False)
    same_l = _lab.lab_to_rgb(tf.concat([_lab.rgb_to_lab(image)[..., :1],
                                        _lab.rgb_to_lab(gray)[..., 1:]], -1))
    ab_same_l, l_other_ab = method.logits(same_l, False)
    np.testing.assert_allclose(ab_same_l, ab_logits, atol=2e-3)  # L kept (up to clipping)
    assert np.abs(l_other_ab - l_logits).max() > 1e-3


def test_preprocess_eager_and_inside_tf_data():
    method = _method(augmentation="none")
    image = np.random.RandomState(2).rand(16, 16, 3).astype(np.float32)
    eager = method.preprocess({"image": tf.constant(image), "label": tf.constant(0, tf.int64),
                               "index": tf.constant(0, tf.int64)})
    in_data = next(iter(_examples([image]).map(method.preprocess)))
    np.testing.assert_allclose(eager["image"], image)
    np.testing.assert_allclose(in_data["image"], image)


def test_export_end_points_are_the_concatenation_and_both_halves():
    out = _method()(tf.zeros([2, 16, 16, 3]))
    assert out["block2"].shape[-1] == out["l_block2"].shape[-1] + out["ab_block2"].shape[-1]
    assert out["pre_logits"].shape == (2, 256)
    assert _method().export_metadata()["split_brain"]["lightness_bins"] == 10


@pytest.mark.parametrize("kwargs,message", [
    ({"endpoint": "pre_logits"}, r"split_brain.endpoint: end-point 'pre_logits' is not a "
                                 r"spatial feature map.*choose one of after_root, block1, "
                                 r"block2, block3, block4\."),
    ({"endpoint": "block9"}, r"split_brain.endpoint: the backbone has no end-point 'block9'; "
                             r"choose one of after_root, .*pre_logits\."),
    ({"lightness_bins": 1}, "lightness_bins must be >= 2"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _method(**kwargs)


def test_grayscale_only_data_are_refused_before_training():
    gray = np.full((4, 16, 16, 3), 0.5, np.float32)
    with pytest.raises(ValueError, match="split_brain: the first 4 training images are grayscale"):
        method = _method()
        method.registry_name = "split_brain"
        method.adapt(_examples(gray))


def test_loss_falls_when_training_a_few_steps(data_dir):
    keras.utils.set_random_seed(0)
    losses = fit_losses(_method(), data_dir)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("config", ["synthetic_shapes", "imagenet_resnet50"])
def test_gin_configs_build_the_method(config):
    method = build_configured_method(f"split_brain/{config}.gin", [
        "resnet_v2.widening_factor = 1", "resnet_v2.depth = 10", "split_brain.head_units = 8"])
    ab_logits, l_logits = method.logits(tf.zeros([1, 32, 32, 3]), False)
    assert l_logits.shape[-1] == 100 and ab_logits.shape[-1] == len(method.ab_bins)
