"""MAE: its masks, the encoder on the visible patches only, the loss against numpy, the export."""

import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.method import BackboneMismatchError
from keras_ssl.testing import check_method, tiny_backbone
from keras_ssl_methods.mae import MAE, MAEDecoder
from tests.helpers.method_runs import build_configured_method

SIZE, PATCH = 16, 4
N = (SIZE // PATCH) ** 2  # 16 patches


def _mae(**kwargs):
    return MAE(tiny_backbone("vit"), **{**MAE.tiny_settings(), **kwargs})


def _batch(method, n=4, seed=0):
    images = np.random.RandomState(seed).rand(n, SIZE, SIZE, 3).astype(np.float32)
    examples = tf.data.Dataset.from_tensor_slices({
        "image": images, "label": np.zeros(n, np.int64), "index": np.arange(n, dtype=np.int64)})
    return next(iter(method.make_dataset(examples, n)))


def _numpy_patches(images, p):
    b, h, w, c = images.shape
    x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def _numpy_mae_loss(images, predictions, masked, normalized):
    """The paper's loss: per-patch MSE, mean over the masked patches, norm_pix target."""
    target = _numpy_patches(images.astype(np.float64), PATCH)
    if normalized:
        mean = target.mean(-1, keepdims=True)
        var = target.var(-1, ddof=1, keepdims=True)  # torch's unbiased .var()
        target = (target - mean) / np.sqrt(var + 1e-6)
    per_patch = ((predictions.astype(np.float64) - target) ** 2).mean(-1)
    return (per_patch * masked).sum() / masked.sum()


def test_preprocess_masks_three_quarters_of_the_patches_per_image_reproducibly():
    method = _mae()
    batch = _batch(method)
    keep, masked = batch["keep"].numpy(), batch["masked"].numpy()
    k = int(N * 0.25)
    assert keep.shape == (4, k) and masked.shape == (4, N) and batch["image"].shape == (4, 16, 16, 3)
    for row_keep, row_masked in zip(keep, masked):
        assert list(row_keep) == sorted(row_keep) and len(set(row_keep)) == k
        assert set(np.flatnonzero(~row_masked)) == set(row_keep)
    assert len({tuple(row) for row in keep}) > 1  # each image draws its own
    np.testing.assert_array_equal(_batch(method)["keep"], keep)  # seeded per example


@pytest.mark.parametrize("normalized", [True, False])
def test_loss_is_the_mse_on_masked_patches_against_numpy(normalized):
    method = _mae(normalized_pixels=normalized)
    batch = _batch(method)
    loss, metrics = method.compute_pretext_loss(batch, training=False)
    predictions = method.predict_patches(batch["image"], batch["keep"], training=False).numpy()
    masked = batch["masked"].numpy().astype(np.float64)
    expected = _numpy_mae_loss(batch["image"].numpy(), predictions, masked, normalized)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["visible_mse"]) == pytest.approx(
        _numpy_mae_loss(batch["image"].numpy(), predictions, 1 - masked, normalized), rel=1e-5)


def test_the_encoder_runs_on_the_k_visible_patches_and_the_decoder_gets_them(monkeypatch):
    method = _mae()
    batch = _batch(method)
    k = int(N * 0.25)
    width = 64  # TINY_VIT's
    seen = []
    call = MAEDecoder.call

    def spy(self, tokens, keep, grid=None):
        seen.append((tuple(tokens.shape), tuple(keep.shape), grid))
        return call(self, tokens, keep, grid=grid)

    monkeypatch.setattr(MAEDecoder, "call", spy)
    predictions = method.predict_patches(batch["image"], batch["keep"], training=False)
    assert seen == [((4, 1 + k, width), (4, k), (4, 4))]  # class token + K encoded patches
    assert predictions.shape == (4, N, PATCH * PATCH * 3)
    # What the masked patches hold never reaches the encoder nor the decoder.
    images = batch["image"].numpy()
    pixel_mask = np.repeat(np.repeat(batch["masked"].numpy().reshape(4, 4, 4), PATCH, 1), PATCH, 2)
    noisy = np.where(pixel_mask[..., None], np.random.RandomState(1).rand(*images.shape), images)
    np.testing.assert_allclose(
        method.predict_patches(tf.constant(noisy, tf.float32), batch["keep"], False), predictions,
        atol=1e-5)


def test_the_decoder_puts_each_encoded_token_back_at_its_position():
    decoder = MAEDecoder(width=8, depth=1, num_heads=2, mlp_ratio=2.0, pixels_per_patch=3)
    tokens = tf.random.stateless_normal([2, 3, 8], seed=[0, 1])
    keep = tf.constant([[0, 2], [3, 1]], tf.int32)  # any order
    decoder(tokens, keep, grid=(2, 2))
    # Same tokens given in another order with their positions: the same output.
    swapped = tf.gather(tokens, [0, 2, 1], axis=1)
    np.testing.assert_allclose(decoder(tokens, keep, grid=(2, 2)),
                               decoder(swapped, tf.reverse(keep, [1]), grid=(2, 2)), atol=1e-5)


def test_reconstruct_pastes_the_visible_patches_and_is_reproducible():
    method = _mae()
    images = tf.random.stateless_uniform([3, SIZE, SIZE, 3], seed=[3, 4])
    out = method.reconstruct(images)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "masked": (3, SIZE, SIZE, 3), "reconstruction": (3, SIZE, SIZE, 3),
        "mask": (3, SIZE, SIZE, 1)}
    mask = out["mask"].numpy()
    assert set(np.unique(mask)) == {0.0, 1.0}
    np.testing.assert_allclose(mask.mean((1, 2, 3)), 0.75)
    visible = 1.0 - mask
    np.testing.assert_allclose(out["reconstruction"] * visible, images * visible, atol=1e-6)
    np.testing.assert_allclose(out["masked"], images * visible + 0.5 * mask, atol=1e-6)
    again = method.reconstruct(images[1:2])  # the same image alone: the same mask
    np.testing.assert_array_equal(again["mask"][0], mask[1])
    assert not np.array_equal(mask[0], mask[1])


@pytest.mark.parametrize("kwargs,message", [
    ({"mask_ratio": 1.0}, "mae.mask_ratio must be in \\[0, 1\\)"),
    ({"mask_ratio": -0.1}, "mae.mask_ratio must be in \\[0, 1\\)"),
    ({"decoder_width": 30, "decoder_heads": 4}, "mae.decoder_width \\(30\\) must be a multiple"),
    ({"decoder_depth": 0}, "mae.decoder_depth must be a positive integer"),
    ({"area_range": (0.0, 1.0)}, "mae.area_range must satisfy"),
])
def test_bad_settings_are_refused_in_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        _mae(**kwargs)
    assert "\n" not in str(error.value)


def test_a_convolutional_backbone_and_a_ratio_leaving_nothing_visible_are_refused():
    with pytest.raises(BackboneMismatchError, match="keras_ssl.build_method.backbone = 'vit'"):
        MAE(tiny_backbone("resnet_v2"))
    with pytest.raises(ValueError, match="mae.mask_ratio = 0.97 leaves no visible patch of 16"):
        _mae(mask_ratio=0.97).check_training_setup(4, SIZE)


@pytest.mark.slow
def test_mae_keeps_the_method_contract():
    check_method(MAE, replicas=False)


@pytest.mark.parametrize("config", ["synthetic_shapes", "imagenet_vit_base"])
def test_gin_configs_build_the_method(config):
    method = build_configured_method(f"mae/{config}.gin", [
        "vit.widening_factor = 1", "vit.depth = 1", "mae.decoder_depth = 1"])
    assert method.mask_ratio == 0.75 and method.normalized_pixels
    size = method.image_size
    assert method.reconstruct(tf.zeros([1, size, size, 3]))["mask"].shape == (1, size, size, 1)


@pytest.mark.slow
def test_the_export_reconstructs_and_the_binary_writes_image_masked_reconstruction_rows(
        data_dir, tmp_path):
    from keras_ssl_methods.reconstruct import reconstruction_grid
    from tests.helpers.classic_methods import train_tiny

    run = train_tiny(data_dir, str(tmp_path / "run"), "mae", steps=2, steps_per_loop=2, **{
        "keras_ssl.build_method.backbone": "'vit'", "vit.widening_factor": 1, "vit.depth": 1,
        "vit.patch_size": PATCH, "vit.image_size": SIZE,
        "mae.decoder_depth": 1, "mae.decoder_width": 32, "mae.decoder_heads": 2})
    assert np.isfinite(run.losses).all() and "masked_mse" in run.outputs
    assert run.metadata["mae"]["mask_ratio"] == 0.75
    model = tf.saved_model.load(run.export)
    out = model.signatures["reconstruct"](images=tf.random.uniform([2, 24, 24, 3]))
    assert out["reconstruction"].shape == (2, SIZE, SIZE, 3) and out["mask"].shape == (2, SIZE, SIZE, 1)

    images_dir = tmp_path / "images"
    images_dir.mkdir()
    rng = np.random.RandomState(0)
    for i, size in enumerate([(20, 24), (16, 16), (30, 30)]):
        tf.io.write_file(str(images_dir / f"im{i}.png"),
                         tf.io.encode_png((rng.rand(*size, 3) * 255).astype(np.uint8)))
    written = reconstruction_grid(run.export, str(images_dir), str(tmp_path / "out.png"),
                                  max_images=2)
    grid = tf.image.decode_png(tf.io.read_file(written)).numpy() / 255.0
    assert grid.shape == (2 * SIZE, 3 * SIZE, 3)  # two rows of image | masked | reconstruction
    image, masked, reconstruction = (grid[:SIZE, i * SIZE:(i + 1) * SIZE] for i in range(3))
    grey = np.all(np.abs(masked - 0.5) < 1 / 255, axis=-1)
    assert 0.5 <= grey.mean() <= 0.9  # 75% of the patches masked
    visible = ~grey
    assert np.abs(reconstruction[visible] - image[visible]).max() <= 1.5 / 255
