"""VAE: its inputs, the ELBO against numpy, the noise draw, the reconstruct export and binary."""


import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.registry import METHODS
from tests.helpers.classic_methods import fit_losses, train_tiny
from tests.helpers.method_runs import build_configured_method
from keras_ssl.testing import tiny_backbone

SIZE = 16


def _vae(**kwargs):
    return METHODS.get("vae")(tiny_backbone(), **{
        "image_size": SIZE, "latent_dim": 8, "decoder_width": 16, **kwargs})


def _numpy_negative_elbo(images, logits, mean, log_variance, kl_weight):
    """-log p(x | z) (Bernoulli) + kl_weight KL(N(mean, var) || N(0, 1)), per pixel value."""
    images, logits = images.astype(np.float64), logits.astype(np.float64)
    log_p = images * -np.log1p(np.exp(-logits)) + (1 - images) * -np.log1p(np.exp(logits))
    reconstruction = -log_p.sum((1, 2, 3))
    kl = 0.5 * (mean ** 2 + np.exp(log_variance) - 1 - log_variance).sum(-1)
    return (reconstruction + kl_weight * kl).mean() / images[0].size, kl.mean()


def _batch(method, n=4, seed=0):
    images = np.random.RandomState(seed).rand(n, 20, 20, 3).astype(np.float32)
    examples = tf.data.Dataset.from_tensor_slices({
        "image": images, "label": np.zeros(n, np.int64), "index": np.arange(n, dtype=np.int64)})
    return next(iter(method.make_dataset(examples, n)))


@pytest.mark.parametrize("in_tf_data", [False, True])
def test_preprocess_resizes_to_the_image_size(in_tf_data):
    method = _vae()
    example = {"image": tf.fill([20, 24, 3], 0.5), "label": tf.constant(0, tf.int64),
               "index": tf.constant(0, tf.int64)}
    if in_tf_data:
        inputs = next(iter(tf.data.Dataset.from_tensors(example).map(method.preprocess)))
    else:
        inputs = method.preprocess(example)
    assert inputs["image"].shape == (SIZE, SIZE, 3)
    np.testing.assert_allclose(inputs["image"], 0.5, atol=1e-6)


@pytest.mark.parametrize("kl_weight", [1.0, 0.25])
def test_loss_is_the_negative_elbo_per_pixel_value(kl_weight):
    method = _vae(kl_weight=kl_weight)
    batch = _batch(method)
    loss, metrics = method.compute_pretext_loss(batch, training=False)  # z = the mean
    mean, log_variance = method.encode(batch["image"], training=False)
    logits = method.decode(mean).numpy()
    expected, kl = _numpy_negative_elbo(batch["image"].numpy(), logits, mean.numpy(),
                                        log_variance.numpy(), kl_weight)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["kl"]) == pytest.approx(kl, rel=1e-5)
    assert 0.0 <= float(metrics["active_latents"]) <= 1.0


def test_training_samples_the_latent_with_noise_keyed_by_the_step():
    method = _vae()
    batch = _batch(method)
    method.compile(optimizer="sgd")
    method.optimizer.build(method.trainable_variables)
    first = method._noise(4).numpy()
    np.testing.assert_array_equal(method._noise(4).numpy(), first)  # same step, same eps
    assert abs(first.mean()) < 1.0 and first.shape == (4, 8)
    method.optimizer.iterations.assign_add(1)
    assert not np.allclose(method._noise(4).numpy(), first)
    sampled, _ = method.compute_pretext_loss(batch, training=True)
    deterministic, _ = method.compute_pretext_loss(batch, training=False)
    assert float(sampled) != float(deterministic)


@pytest.mark.parametrize("kwargs,message", [
    ({"image_size": 20}, "multiple of 2 \\*\\* num_upsamplings = 8"),
    ({"num_upsamplings": 0}, "num_upsamplings >= 1"),
    ({"latent_dim": 0}, "must be positive"),
    ({"kl_weight": -1.0}, "kl_weight must be non-negative"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _vae(**kwargs)


def test_loss_falls_when_training_a_few_steps(data_dir):
    losses = fit_losses(_vae(), data_dir, image_size=SIZE)
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_export_reconstructs_and_the_binary_writes_image_and_reconstruction_pairs(
        data_dir, tmp_path):
    from keras_ssl_methods.reconstruct import reconstruction_grid

    run = train_tiny(data_dir, str(tmp_path / "run"), "vae", steps=2, steps_per_loop=2, **{
        "vae.image_size": SIZE, "vae.latent_dim": 8, "vae.decoder_width": 16})
    losses, _, _, export, metadata = run
    assert np.isfinite(losses).all()
    assert metadata["vae"]["image_size"] == SIZE
    model = tf.saved_model.load(export)
    out = model.signatures["reconstruct"](images=tf.random.uniform([2, 24, 24, 3]))
    assert out["reconstruction"].shape == (2, SIZE, SIZE, 3)
    assert 0.0 <= float(tf.reduce_min(out["reconstruction"]))
    assert float(tf.reduce_max(out["reconstruction"])) <= 1.0

    images_dir = tmp_path / "images"
    images_dir.mkdir()
    rng = np.random.RandomState(0)
    for i, size in enumerate([(20, 24), (16, 16), (30, 30)]):
        pixels = (rng.rand(*size, 3) * 255).astype(np.uint8)
        tf.io.write_file(str(images_dir / f"im{i}.png"), tf.io.encode_png(pixels))
    written = reconstruction_grid(export, str(images_dir), str(tmp_path / "out" / "pairs.png"),
                                  max_images=2)
    grid = tf.image.decode_png(tf.io.read_file(written)).numpy()
    assert grid.shape == (2 * SIZE, 2 * SIZE, 3)  # two rows of image | reconstruction
    first = tf.image.decode_png(tf.io.read_file(str(images_dir / "im0.png")))
    shown = tf.image.resize(tf.image.convert_image_dtype(first, tf.float32)[None], [SIZE, SIZE],
                            antialias=True)[0].numpy()
    assert np.abs(grid[:SIZE, :SIZE] / 255.0 - np.clip(shown, 0, 1)).max() < 1.5 / 255
    with pytest.raises(FileNotFoundError, match="No images"):
        reconstruction_grid(export, str(tmp_path / "nothing*.png"), str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="max_images must be positive"):
        reconstruction_grid(export, str(images_dir), str(tmp_path / "x.png"), max_images=0)


@pytest.mark.parametrize("config", ["synthetic_shapes", "cifar10_resnet18"])
def test_gin_configs_build_the_method(config):
    import gin

    method = build_configured_method(f"vae/{config}.gin", [
        "resnet_v2.depth = 10", "resnet_v2.widening_factor = 1", "vae.decoder_width = 16"])
    assert method.image_size == gin.query_parameter("keras_ssl.train.image_size")
    batch = tf.zeros([1, method.image_size, method.image_size, 3])
    assert method.reconstruct(batch)["reconstruction"].shape == batch.shape
