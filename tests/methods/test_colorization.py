"""Colorization: Lab, the ab bins, soft targets, rebalancing, decoding, loss, export, the CLI."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.registry import METHODS
from keras_ssl_methods import _lab
from tests.helpers.classic_methods import fit_losses, train_tiny
from keras_ssl.testing import tiny_backbone


def _method(**kwargs):
    net = tiny_backbone()
    return METHODS.get("colorization")(net, **{"head_units": 16, **kwargs})


# -------------------------------------------------------------------- Lab
KNOWN = [  # sRGB -> CIE Lab (D65), reference values (e.g. Bruce Lindbloom's calculator)
    ((1.0, 1.0, 1.0), (100.0, 0.0, 0.0)),
    ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ((1.0, 0.0, 0.0), (53.2408, 80.0925, 67.2032)),
    ((0.0, 1.0, 0.0), (87.7347, -86.1827, 83.1793)),
    ((0.0, 0.0, 1.0), (32.2970, 79.1875, -107.8602)),
    ((0.5, 0.5, 0.5), (53.3890, 0.0, 0.0)),
    ((1.0, 1.0, 0.0), (97.1393, -21.5537, 94.4780)),
]


@pytest.mark.parametrize("rgb,lab", KNOWN)
def test_rgb_to_lab_known_values(rgb, lab):
    np.testing.assert_allclose(_lab.rgb_to_lab(tf.constant(rgb)).numpy(), lab, atol=2e-3)


def test_lab_round_trip():
    rgb = tf.random.uniform([50, 3], seed=1)
    np.testing.assert_allclose(_lab.lab_to_rgb(_lab.rgb_to_lab(rgb)).numpy(), rgb.numpy(), atol=1e-4)


def test_in_gamut_bins():
    bins = _lab.in_gamut_bins(10)
    assert 250 <= len(bins) <= 270          # about 260 reached by sRGB colours
    assert (bins % 10 == 0).all() and len(np.unique(bins, axis=0)) == len(bins)
    assert [0.0, 0.0] in bins.tolist()
    ab = _lab.rgb_to_lab(tf.random.uniform([2000, 3], seed=2)).numpy()[:, 1:]
    distance = np.sqrt(((ab[:, None] - bins[None]) ** 2).sum(-1)).min(1)
    assert distance.max() <= 5 * np.sqrt(2) + 1e-3  # every sRGB colour falls in a kept bin


def test_soft_encoding_against_hand_computation():
    bins = np.array([[0, 0], [10, 0], [0, 10], [10, 10], [50, 50]], np.float32)
    ab = np.array([3.0, 1.0], np.float32)
    got = _lab.soft_encode(tf.constant(ab), tf.constant(bins), k=3, sigma=5.0).numpy()
    d2 = np.array([9 + 1, 49 + 1, 9 + 81])          # the three nearest: bins 0, 1, 2
    w = np.exp(-d2 / 50.0)
    np.testing.assert_allclose(got, np.r_[w / w.sum(), 0.0, 0.0], atol=1e-6)


def test_rebalancing_weights():
    bins = _lab.in_gamut_bins(10)
    prior = np.random.RandomState(0).rand(len(bins)) ** 4
    w = _lab.rebalancing_weights(prior, bins, sigma=1e-3, lam=0.5)  # no smoothing
    p = prior / prior.sum()
    expected = 1.0 / (0.5 * p + 0.5 / len(bins))
    np.testing.assert_allclose(w, expected / (p * expected).sum(), rtol=1e-5)
    smooth_w = _lab.rebalancing_weights(prior, bins)  # sigma 5
    assert np.isfinite(smooth_w).all() and (smooth_w > 0).all()


def test_annealed_mean():
    bins = tf.constant([[0.0, 0.0], [10.0, 0.0], [0.0, 20.0]])
    p = tf.constant([0.5, 0.3, 0.2])
    np.testing.assert_allclose(_lab.annealed_mean(p, bins, 1.0).numpy(), [3.0, 4.0], atol=1e-5)
    q = np.array([0.5, 0.3, 0.2]) ** (1 / 0.38)
    q /= q.sum()
    np.testing.assert_allclose(_lab.annealed_mean(p, bins, 0.38).numpy(),
                               [10 * q[1], 20 * q[2]], atol=1e-4)


# -------------------------------------------------------------- the method
def _dataset(images):
    return tf.data.Dataset.from_tensor_slices(
        {"image": images, "label": np.zeros(len(images), np.int64), "index": np.arange(len(images))})


def test_prior_is_estimated_from_the_training_data():
    method = _method()
    red = np.zeros((3, 16, 16, 3), np.float32)
    red[..., 0] = 1.0
    method.make_dataset(_dataset(red), 3)
    bins = method.bins
    red_bin = np.argmin(((bins - np.array([80.0, 67.0])) ** 2).sum(1))
    prior = method.prior.numpy()
    assert prior[red_bin] == pytest.approx(1.0)
    expected = _lab.rebalancing_weights(prior, bins, 5.0, 0.5)
    np.testing.assert_allclose(method.class_weights.numpy(), expected, rtol=1e-5)


def test_user_supplied_bins_and_prior(tmp_path):
    bins = np.array([[a, b] for a in range(-100, 101, 20) for b in range(-100, 101, 20)], np.float32)
    np.save(tmp_path / "bins.npy", bins)
    method = _method(bins=str(tmp_path / "bins.npy"), prior=[1.0] * len(bins))
    assert method.num_bins == len(bins) == 121
    assert method.export_metadata()["num_ab_bins"] == 121
    method.make_dataset(_dataset(np.random.rand(2, 16, 16, 3).astype(np.float32)), 2)
    np.testing.assert_allclose(method.prior.numpy(), 1.0 / 121, rtol=1e-5)  # given prior kept
    with pytest.raises(ValueError, match="prior has shape"):
        _method(prior=[1.0, 2.0])


def test_loss_against_hand_computation():
    keras.utils.set_random_seed(0)
    method = _method(num_neighbors=3)
    images = np.random.RandomState(4).rand(2, 16, 16, 3).astype(np.float32)
    batch = next(iter(method.make_dataset(_dataset(images), 2)))
    loss, metrics = method.compute_pretext_loss(batch, training=False)
    logits = method.logits(batch["image"], training=False).numpy()          # [2, 4, 4, Q]
    # Inputs are the L channel only: colour changes at equal L change nothing.
    assert logits.shape[1:3] == (4, 4)
    ab = _lab.rgb_to_lab(batch["image"]).numpy()[..., 1:]
    ab = ab.reshape(2, 4, 4, 4, 4, 2).mean(axis=(2, 4))                      # area resize 16 -> 4
    bins = method.bins
    d2 = ((ab[..., None, :] - bins) ** 2).sum(-1)
    targets = np.zeros_like(d2)
    nearest = np.argsort(d2, axis=-1)[..., :3]
    for index in np.ndindex(d2.shape[:-1]):
        w = np.exp(-d2[index][nearest[index]] / 50.0)
        targets[index][nearest[index]] = w / w.sum()
    log_softmax = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    ce = -(targets * log_softmax).sum(-1)
    weights = method.class_weights.numpy()[d2.argmin(-1)]
    assert float(loss) == pytest.approx((weights * ce).mean(), rel=1e-3)
    assert float(metrics["bin_accuracy"]) == pytest.approx((logits.argmax(-1) == d2.argmin(-1)).mean())


@pytest.mark.parametrize("endpoint,message", [
    ("block5", r"colorization.endpoint: the backbone has no end-point 'block5'; choose one of "
               r"after_root, block1, block2, block3, block4, pre_logits\."),
    ("pre_logits", r"colorization.endpoint: end-point 'pre_logits' is not a spatial feature "
                   r"map.*choose one of after_root, block1, block2, block3, block4\."),
])
def test_an_end_point_the_backbone_lacks_is_refused_at_build_time(endpoint, message):
    with pytest.raises(ValueError, match=message):
        _method(endpoint=endpoint)


def test_backbone_sees_only_the_lightness():
    method = _method()
    gray = method.export_input_transform(tf.constant([[[[1.0, 0.0, 0.0]]]])).numpy()
    np.testing.assert_allclose(gray[0, 0, 0], [0.532408] * 3, atol=1e-4)


@pytest.mark.slow
def test_loss_falls_on_synthetic_shapes(data_dir):
    keras.utils.set_random_seed(0)
    losses = fit_losses(_method(), data_dir, batch_size=4, steps=8, learning_rate=0.01)
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_export_colorize_signature_and_cli(data_dir, tmp_path):
    from keras_ssl_methods.colorize import colorize_files

    losses, outputs, _, export, metadata = train_tiny(
        data_dir, str(tmp_path / "run"), "colorization", steps=2, steps_per_loop=2,
        **{"colorization.head_units": 16, "colorization.prior_images": 32})
    assert np.isfinite(losses).all() and "bin_accuracy" in outputs
    assert metadata["num_ab_bins"] == len(metadata["colorization"]["ab_bins"]) == 261
    assert sum(metadata["colorization"]["ab_prior"]) == pytest.approx(1.0, abs=1e-4)
    model = tf.saved_model.load(export)
    assert "colorize" in model.signatures
    out = model.signatures["colorize"](images=tf.random.uniform([2, 16, 16, 3]))
    assert out["colorized"].shape == (2, 16, 16, 3)
    # The CLI: a directory of images in, one PNG per image out, with the input's lightness.
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    rng = np.random.RandomState(0)
    sources = []
    for i, size in enumerate([(20, 24), (16, 16)]):
        pixels = (rng.rand(*size, 3) * 255).astype(np.uint8)
        tf.io.write_file(str(images_dir / f"im{i}.jpg"), tf.io.encode_jpeg(pixels))
        sources.append(tf.image.decode_jpeg(tf.io.read_file(str(images_dir / f"im{i}.jpg"))))
    written = colorize_files(export, str(images_dir), str(tmp_path / "out"))
    assert [os.path.basename(p) for p in written] == ["im0.png", "im1.png"]
    for path, source in zip(written, sources):
        result = tf.image.decode_png(tf.io.read_file(path))
        assert result.shape == source.shape
        l_in = _lab.rgb_to_lab(tf.image.convert_image_dtype(source, tf.float32))[..., 0]
        l_out = _lab.rgb_to_lab(tf.image.convert_image_dtype(result, tf.float32))[..., 0]
        assert float(tf.reduce_mean(tf.abs(l_in - l_out))) < 5.0
    with pytest.raises(FileNotFoundError, match="No images"):
        colorize_files(export, str(tmp_path / "nothing*.png"), str(tmp_path / "out2"))
