"""Augmentation stacks and ops: eagerly and inside tf.data, per-image randomness."""

import numpy as np
import pytest
import tensorflow as tf

from keras_ssl import augment
from keras_ssl.registry import AUGMENTATIONS

STACKS = ["none", "flip", "crop_flip", "simclr_imagenet", "simclr_cifar", "moco_v2", "randaugment"]
OPS = {
    "inception_crop": augment.inception_crop,
    "color_jitter": augment.color_jitter,
    "to_grayscale": augment.to_grayscale,
    "gaussian_blur": lambda x: augment.gaussian_blur(x, 1.0),
    "simclr_imagenet": augment.simclr_augment,
    "simclr_cifar": augment.simclr_cifar_augment,
    "moco_v2": augment.moco_v2_augment,
}  # randaugment: through the registry below (it is slow to trace)


def _image(seed=0, size=32):
    rng = np.random.RandomState(seed)
    image = np.zeros((size, size, 3), np.float32)
    image[:] = rng.uniform(0, 1, 3)
    image[size // 4: size // 2, size // 8: size - 4] = rng.uniform(0, 1, 3)
    image += rng.uniform(-0.1, 0.1, image.shape)
    return np.clip(image, 0, 1).astype(np.float32)


def _check(out, shape=(32, 32, 3)):
    out = np.asarray(out)
    assert out.shape == shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.all(np.isfinite(out))


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_eager_and_in_tf_data(name):
    op = OPS[name]
    _check(op(tf.constant(_image())))
    dataset = tf.data.Dataset.from_tensors(_image()).repeat(2).map(op).batch(2)
    _check(next(iter(dataset))[0])


@pytest.mark.parametrize("name", STACKS)
def test_registered_stack_keeps_shape_and_range(name):
    stack = AUGMENTATIONS.get(name)
    _check(stack(tf.constant(_image())))
    _check(next(iter(tf.data.Dataset.from_tensors(_image()).map(stack))))


@pytest.mark.parametrize("name", ["simclr_imagenet", "simclr_cifar", "moco_v2", "randaugment"])
def test_two_images_in_one_batch_get_different_views(name):
    stack = AUGMENTATIONS.get(name)
    tf.random.set_seed(0)  # training sets a global seed too
    batch = next(iter(tf.data.Dataset.from_tensors(_image()).repeat(2).map(stack).batch(2)))
    assert not np.allclose(batch[0], batch[1])


def test_inception_crop_differs_per_image_and_respects_area():
    image = np.arange(32 * 32, dtype=np.float32).reshape(32, 32, 1) / 1024.0
    image = np.repeat(image, 3, axis=2)
    dataset = tf.data.Dataset.from_tensors(image).repeat(8).map(
        lambda x: augment.inception_crop(x, area_range=(0.08, 0.3))
    ).batch(8)
    crops = next(iter(dataset)).numpy()
    assert len({crops[i].tobytes() for i in range(8)}) == 8
    # A crop of at most 30% of the area, magnified, spans a smaller value range.
    assert all(np.ptp(c) < 0.8 for c in crops)
    whole = augment.inception_crop(tf.constant(image), area_range=(1.0, 1.0), aspect_ratio_range=(1.0, 1.0))
    np.testing.assert_allclose(whole, image, atol=1e-4)


def test_color_jitter_factors_are_independent_under_a_global_seed():
    # Regression: random ops inside switch_case branches drew one shared stream once a
    # global seed was set, and views came out nearly black and grey.
    image = _image(3)
    tf.random.set_seed(0)
    views = np.stack(list(
        tf.data.Dataset.from_tensors(image).repeat(200).map(augment.color_jitter).as_numpy_iterator()
    ))
    assert abs(views.mean() - image.mean()) < 0.08
    assert views.std(-1).mean() > 0.6 * image.std(-1).mean()


def test_grayscale_and_blur():
    image = _image(4)
    gray = augment.to_grayscale(tf.constant(image)).numpy()
    assert np.allclose(gray[..., 0], gray[..., 1]) and np.allclose(gray[..., 1], gray[..., 2])
    np.testing.assert_allclose(gray[..., 0], image @ [0.2989, 0.587, 0.114], atol=2e-3)
    blurred = augment.gaussian_blur(tf.constant(image), 2.0).numpy()  # 32 px: kernel 3
    assert blurred.std() < image.std()
    # numpy reference: reflect-padded separable 3-tap Gaussian
    k = np.exp(-np.arange(-1, 2) ** 2 / 8.0)
    k /= k.sum()
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="reflect")
    rows = sum(k[i] * padded[:, i:i + 32] for i in range(3))
    expected = sum(k[i] * rows[i:i + 32] for i in range(3))
    np.testing.assert_allclose(blurred, expected, atol=1e-5)
    np.testing.assert_array_equal(augment.gaussian_blur(tf.constant(image[:16, :16]), 2.0), image[:16, :16])


def test_stack_parameters_are_gin_bindable():
    from keras_ssl import config

    config.parse_gin(bindings=[
        "simclr_imagenet.crop = False", "simclr_imagenet.flip = False",
        "simclr_imagenet.color_jitter_strength = 0.0",
        "simclr_imagenet.grayscale_probability = 1.0",
        "simclr_imagenet.blur_probability = 0.0",
    ])
    try:
        out = AUGMENTATIONS.get("simclr_imagenet")(tf.constant(_image(5))).numpy()
        np.testing.assert_allclose(out, augment.to_grayscale(tf.constant(_image(5))), atol=1e-6)
    finally:
        import gin

        gin.clear_config()


def test_the_former_name_of_the_imagenet_stack_names_the_present_one():
    from keras_ssl import config
    from keras_ssl.registry import UnknownPluginError

    with pytest.raises(UnknownPluginError, match="'simclr' is now called 'simclr_imagenet'"):
        AUGMENTATIONS.get("simclr")
    with pytest.raises(config.ConfigError, match="'simclr' is now called 'simclr_imagenet'"):
        config.parse_gin(bindings=["augmentations.simclr.blur_probability = 0.0"])
    # Plain `simclr.` binds the method, which has no such parameter.
    with pytest.raises(config.ConfigError, match="'blur_probability'.*'simclr' is now called 'simclr_imagenet'"):
        config.parse_gin(bindings=["simclr.blur_probability = 0.0"])


def test_simclr_binds_the_method_and_the_stacks_have_their_own_names():
    import gin

    from keras_ssl import config

    config.parse_gin(bindings=["simclr.temperature = 0.5", "simclr_imagenet.blur_probability = 0.0",
                               "simclr_cifar.color_jitter_strength = 0.4"])
    try:
        assert gin.query_parameter("keras_ssl.methods.simclr.temperature") == 0.5
        assert gin.query_parameter("keras_ssl.augmentations.simclr_imagenet.blur_probability") == 0.0
    finally:
        gin.clear_config()
