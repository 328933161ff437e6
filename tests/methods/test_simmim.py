"""SimMIM: its masks in units of patches, the masked L1 against numpy, the export."""

import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.method import BackboneMismatchError
from keras_ssl.testing import check_method, tiny_backbone
from keras_ssl_methods.simmim import IMAGENET_MEAN, IMAGENET_STD, SimMIM
from tests.helpers.method_runs import build_configured_method

SIZE, PATCH = 16, 4
GRID = SIZE // PATCH  # 4 x 4 patches, 2 x 2 mask units of 8 px


def _simmim(**kwargs):
    return SimMIM(tiny_backbone("vit", mask_token=True), **{**SimMIM.tiny_settings(), **kwargs})


def _batch(method, n=4, seed=0, size=SIZE):
    images = np.random.RandomState(seed).rand(n, size, size, 3).astype(np.float32)
    examples = tf.data.Dataset.from_tensor_slices({
        "image": images, "label": np.zeros(n, np.int64), "index": np.arange(n, dtype=np.int64)})
    return next(iter(method.make_dataset(examples, n)))


def _numpy_simmim_loss(images, predictions, masked, normalized):
    """The paper's code: (|x - x_rec| * mask).sum() / (mask.sum() + 1e-5) / in_chans."""
    target = images.astype(np.float64)
    if normalized:
        target = (target - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    b = images.shape[0]
    mask = masked.reshape(b, GRID, GRID).repeat(PATCH, 1).repeat(PATCH, 2)[..., None]
    l1 = np.abs(predictions.astype(np.float64) - target)
    return (l1 * mask).sum() / (mask.sum() + 1e-5) / 3


def test_preprocess_masks_whole_units_of_the_mask_patch_size():
    method = _simmim(mask_ratio=0.6)
    batch = _batch(method)
    masked = batch["masked"].numpy().reshape(4, GRID, GRID)
    for image in masked:
        units = image.reshape(2, 2, 2, 2).transpose(0, 2, 1, 3).reshape(4, 4)
        assert np.all(units.min(1) == units.max(1))  # each 8-px unit all masked or all not
        assert units[:, 0].sum() == 3  # ceil(4 units x 0.6)
    assert len({image.tobytes() for image in masked}) > 1  # each image draws its own
    np.testing.assert_array_equal(_batch(method)["masked"].numpy().reshape(4, GRID, GRID), masked)


def test_at_224_px_thirty_of_the_49_units_are_masked():
    method = SimMIM(tiny_backbone("vit", mask_token=True, patch_size=16, image_size=32))
    from keras_ssl.random import example_seed, seeded

    with seeded(example_seed(0, 1)):
        mask = method.draw_mask(224, 224).numpy()
    assert mask.shape == (196,) and mask.sum() == 30 * 4  # ceil(49 x 0.6) units of 2 x 2


@pytest.mark.parametrize("normalized", [True, False])
def test_loss_is_the_l1_on_masked_pixels_against_numpy(normalized):
    method = _simmim(normalized_target=normalized)
    batch = _batch(method)
    loss, _ = method.compute_pretext_loss(batch, training=False)
    predictions = method.predict_pixels(batch["image"], batch["masked"], training=False).numpy()
    expected = _numpy_simmim_loss(batch["image"].numpy(), predictions,
                                  batch["masked"].numpy().astype(np.float64), normalized)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_the_encoder_sees_mask_tokens_in_place_of_the_masked_patches():
    method = _simmim()
    batch = _batch(method)
    predictions = method.predict_patches(batch["image"], batch["masked"], training=False)
    assert predictions.shape == (4, GRID * GRID, PATCH * PATCH * 3)  # every token, one linear head
    images = batch["image"].numpy()
    pixel_mask = batch["masked"].numpy().reshape(4, GRID, GRID).repeat(PATCH, 1).repeat(PATCH, 2)
    noisy = np.where(pixel_mask[..., None], np.random.RandomState(1).rand(*images.shape), images)
    np.testing.assert_allclose(
        method.predict_patches(tf.constant(noisy, tf.float32), batch["masked"], False),
        predictions, atol=1e-5)


def test_reconstruct_pastes_the_visible_patches_and_is_reproducible():
    method = _simmim()
    images = tf.random.stateless_uniform([3, SIZE, SIZE, 3], seed=[3, 4])
    out = method.reconstruct(images)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "masked": (3, SIZE, SIZE, 3), "reconstruction": (3, SIZE, SIZE, 3),
        "mask": (3, SIZE, SIZE, 1)}
    mask = out["mask"].numpy()
    np.testing.assert_allclose(mask.mean((1, 2, 3)), 0.75)  # 3 of the 4 units
    visible = 1.0 - mask
    np.testing.assert_allclose(out["reconstruction"] * visible, images * visible, atol=1e-6)
    np.testing.assert_allclose(out["masked"], images * visible + 0.5 * mask, atol=1e-6)
    np.testing.assert_array_equal(method.reconstruct(images[2:])["mask"][0], mask[2])


@pytest.mark.parametrize("kwargs,message", [
    ({"mask_ratio": 0.0}, "simmim.mask_ratio must be in \\(0, 1\\)"),
    ({"mask_ratio": 1.0}, "simmim.mask_ratio must be in \\(0, 1\\)"),
    ({"mask_patch_size": 6}, "simmim.mask_patch_size \\(6\\) must be a multiple of the ViT's "
                             "patch size 4"),
    ({"area_range": (0.5, 0.2)}, "simmim.area_range must satisfy"),
])
def test_bad_settings_are_refused_in_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        _simmim(**kwargs)
    assert "\n" not in str(error.value)


def test_a_backbone_without_mask_token_or_images_the_units_do_not_tile_are_refused():
    with pytest.raises(BackboneMismatchError, match="vit.mask_token = True"):
        SimMIM(tiny_backbone("vit"), mask_patch_size=8)
    with pytest.raises(BackboneMismatchError, match="keras_ssl.build_method.backbone = 'vit'"):
        SimMIM(tiny_backbone("resnet_v2"))
    with pytest.raises(ValueError, match="simmim.mask_patch_size \\(8\\) must divide the image "
                                         "side 20"):
        _simmim().check_training_setup(4, 20)
    with pytest.raises(ValueError, match="simmim.mask_ratio = 0.6 leaves no visible patch of 1"):
        _simmim().check_training_setup(4, 8)


@pytest.mark.slow
def test_simmim_keeps_the_method_contract():
    check_method(SimMIM, replicas=False)


@pytest.mark.parametrize("config", ["synthetic_shapes", "imagenet_vit_base"])
def test_gin_configs_build_the_method(config):
    method = build_configured_method(f"simmim/{config}.gin", ["vit.widening_factor = 1",
                                                              "vit.depth = 1"])
    assert method.mask_ratio == 0.6 and method.mask_patch_size == 2 * method.patch_size
    size = method.image_size
    assert method.reconstruct(tf.zeros([1, size, size, 3]))["mask"].shape == (1, size, size, 1)


@pytest.mark.slow
def test_the_export_reconstructs_and_the_binary_writes_image_masked_reconstruction_rows(
        data_dir, tmp_path):
    from keras_ssl_methods.reconstruct import reconstruction_grid
    from tests.helpers.classic_methods import train_tiny

    run = train_tiny(data_dir, str(tmp_path / "run"), "simmim", steps=1, steps_per_loop=1, **{
        "keras_ssl.build_method.backbone": "'vit'", "vit.widening_factor": 1, "vit.depth": 1,
        "vit.patch_size": PATCH, "vit.image_size": SIZE, "vit.mask_token": True,
        "simmim.mask_patch_size": 8})
    assert np.isfinite(run.losses).all() and "masked_l1" in run.outputs
    assert run.metadata["simmim"]["mask_patch_size"] == 8
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    tf.io.write_file(str(images_dir / "im.png"), tf.io.encode_png(
        (np.random.RandomState(0).rand(24, 20, 3) * 255).astype(np.uint8)))
    written = reconstruction_grid(run.export, str(images_dir), str(tmp_path / "out.png"))
    grid = tf.image.decode_png(tf.io.read_file(written)).numpy() / 255.0
    assert grid.shape == (SIZE, 3 * SIZE, 3)  # image | masked | reconstruction
    image, masked, reconstruction = (grid[:, i * SIZE:(i + 1) * SIZE] for i in range(3))
    visible = ~np.all(np.abs(masked - 0.5) < 1 / 255, axis=-1)
    assert visible.mean() == pytest.approx(0.25, abs=0.02)  # 1 of the 4 units visible
    assert np.abs(reconstruction[visible] - image[visible]).max() <= 1.5 / 255
