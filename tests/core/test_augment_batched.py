"""Batched augmentation: the same views per seed as per image, the same parameter distributions,
and on-device augmentation under a 2-replica mirrored strategy."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from keras_ssl import random
from keras_ssl.augment import batched
from keras_ssl.registry import AUGMENTATIONS

BATCHED_STACKS = ["flip", "crop_flip", "simclr_imagenet", "simclr_cifar", "moco_v2"]
SIZE = 24


def _image(seed=0):
    rng = np.random.RandomState(seed)
    image = rng.uniform(0.1, 0.9, (SIZE, SIZE, 3)).astype(np.float32)
    image[SIZE // 4: SIZE // 2] = rng.uniform(0, 1, 3)
    return image


def _coordinates():
    """An image whose pixel (y, x) holds (y / (H-1), x / (W-1), 0.5): crops show their box."""
    ramp = np.linspace(0.0, 1.0, SIZE, dtype=np.float32)
    ys, xs = np.meshgrid(ramp, ramp, indexing="ij")
    return np.stack([ys, xs, np.full_like(ys, 0.5)], -1)


def _deferred_draws(stack_fn, image, seeds):
    """Per seed: the view tensor `run` returns under recording, its Stack and params."""
    draws = []
    for seed in seeds:
        with random.seeded(seed), batched.recording() as views:
            stack_fn(tf.constant(image))
        assert len(views) == 1
        draws.append(views[0])
    return draws


@pytest.mark.parametrize("name", BATCHED_STACKS)
def test_batched_apply_gives_the_per_image_views_of_the_same_seeds(name):
    fn = AUGMENTATIONS.get(name)
    images = np.stack([_image(i) for i in range(6)])
    seeds = [random.example_seed(3, i) for i in range(6)]
    per_image = []
    for image, seed in zip(images, seeds):
        with random.seeded(seed):
            per_image.append(fn(tf.constant(image)).numpy())
    draws = []
    for image, seed in zip(images, seeds):
        draws += _deferred_draws(fn, image, [seed])
    stack = draws[0][1]
    params = {k: tf.stack([d[2][k] for d in draws]) for k in draws[0][2]}
    together = stack.apply(tf.constant(images), params).numpy()
    np.testing.assert_allclose(together, np.stack(per_image), atol=1e-5)
    # Not a vacuous check: the six views differ from their sources and from each other.
    assert not np.allclose(together, images, atol=1e-3)
    assert len({v.round(4).tobytes() for v in together}) == 6


def _crop_statistics(boxes):
    area, aspect = batched.crop_area_and_aspect(tf.constant(boxes, tf.float32), (SIZE, SIZE, 3))
    return area.numpy(), aspect.numpy(), boxes[:, 1] > boxes[:, 3]


@pytest.mark.parametrize("name,area_low", [("simclr_imagenet", 0.08), ("moco_v2", 0.2)])
def test_deferred_draws_have_the_distribution_of_the_per_image_views(name, area_low):
    # The per-image path is observed from its output: on the coordinate image (no
    # jitter, grayscale or blur), view pixels (0, 0) and (H-1, W-1) hold the crop's
    # corners, mirrored when flipped. The deferred path's boxes come from other seeds.
    fn = AUGMENTATIONS.get(name)
    n = 1500
    coords = tf.constant(_coordinates())

    def plain_view(index):
        with random.seeded(random.example_seed(1, index)):
            return fn(coords, color_jitter_strength=0.0, grayscale_probability=0.0,
                      blur_probability=0.0)

    views = np.stack(list(tf.data.Dataset.range(n).map(plain_view).as_numpy_iterator()))
    observed = np.stack([views[:, 0, 0, 0], views[:, 0, 0, 1],
                         views[:, -1, -1, 0], views[:, -1, -1, 1]], 1)

    def deferred(index):
        with random.seeded(random.example_seed(2, index)), batched.recording() as recorded:
            fn(coords)
        return recorded[0][2]

    params = next(iter(tf.data.Dataset.range(n).map(deferred).batch(n)))
    drawn = params["box"].numpy()
    (area_a, aspect_a, flip_a), (area_b, aspect_b, flip_b) = (
        _crop_statistics(observed), _crop_statistics(drawn))
    assert stats.ks_2samp(area_a, area_b).pvalue > 1e-3
    assert stats.ks_2samp(np.log(aspect_a), np.log(aspect_b)).pvalue > 1e-3
    assert area_b.min() >= area_low - 0.02 and area_b.max() <= 1.0 + 1e-6
    assert abs(flip_a.mean() - 0.5) < 0.05 and abs(flip_b.mean() - 0.5) < 0.05
    # The other draws against their definition: jitter kept with p=0.8, factors uniform
    # in [0.2, 1.8] (s=1), hue in [-0.2, 0.2]; grayscale p=0.2; blur p=0.5, sigma in [0.1, 2].
    jitter = params["jitter"].numpy()
    kept = ~np.all(jitter == [1.0, 1.0, 1.0, 0.0], axis=1)
    assert abs(kept.mean() - 0.8) < 0.04
    for column, (low, high) in enumerate([(0.2, 1.8)] * 3 + [(-0.2, 0.2)]):
        values = jitter[kept, column]
        assert stats.kstest(values, "uniform", args=(low, high - low)).pvalue > 1e-3
    assert abs(params["grayscale"].numpy().mean() - 0.2) < 0.04
    sigma = params["blur_sigma"].numpy()
    assert abs((sigma > 0).mean() - 0.5) < 0.05
    assert stats.kstest(sigma[sigma > 0], "uniform", args=(0.1, 1.9)).pvalue > 1e-3


def test_color_jitter_matches_its_definition():
    image = 0.5 + 0.3 * (_image(5) - 0.5)  # low chroma: the hue turn below stays in gamut
    factors = tf.constant([[1.3, 0.7, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.5]])
    out = batched.color_jitter(tf.constant(np.stack([image] * 3)), factors).numpy()
    # brightness then contrast around the per-channel mean, clipped once
    bright = 1.3 * image
    expected = np.clip(0.7 * bright + 0.3 * bright.mean((0, 1)), 0, 1)
    np.testing.assert_allclose(out[0], expected, atol=1e-5)
    # saturation 0: the YIQ luma in every channel
    luma = image @ np.array([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(out[1], np.repeat(luma[..., None], 3, -1), atol=1e-5)
    # a half turn of hue keeps luma and negates chroma: x -> 2 luma - x
    np.testing.assert_allclose(out[2], 2 * luma[..., None] - image, atol=1e-4)
    identity = batched.color_jitter(tf.constant(image[None]), tf.constant([[1.0, 1.0, 1.0, 0.0]]))
    np.testing.assert_allclose(identity[0], image, atol=1e-5)


def test_blur_gives_each_image_its_own_sigma():
    images = np.stack([_image(6), _image(7)])
    out = batched.gaussian_blur(tf.constant(images), tf.constant([2.0, 0.0])).numpy()
    np.testing.assert_array_equal(out[1], images[1])  # sigma 0: untouched
    from keras_ssl import augment

    np.testing.assert_allclose(out[0], augment.gaussian_blur(tf.constant(images[0]), 2.0), atol=1e-5)


def test_make_dataset_defers_views_only_where_preprocess_returns_them():
    from tests.helpers.contrastive_training import random_examples, tiny_method

    method = tiny_method("simclr")
    plain = next(iter(method.make_dataset(random_examples(4, size=SIZE), 4)))
    assert not any(batched.PARAM_SEPARATOR in key for key in plain)
    method.augment_on_device = True
    deferred = next(iter(method.make_dataset(random_examples(4, size=SIZE), 4)))
    assert "view_1/augment/box" in deferred
    applied = method.augment_batch(deferred)
    assert set(applied) == set(plain)
    for key in ("view_1", "view_2"):
        np.testing.assert_allclose(applied[key], plain[key], atol=1e-5)

    rotation = tiny_method("rotation", augmentation="crop_flip")
    rotation.augment_on_device = True
    with pytest.raises(batched.AugmentOnDeviceError, match="rotation|transforms the augmented"):
        rotation.make_dataset(random_examples(4, size=SIZE), 4)


def test_tf_data_groups_hold_a_few_mib_of_views_within_the_batch():
    assert batched.tf_data_group_size((32, 32, 3), 256) == 256  # 3 MiB / 12 KiB
    assert batched.tf_data_group_size((32, 32, 3), 64) == 64
    assert batched.tf_data_group_size((64, 64, 3), 256) == 64
    assert batched.tf_data_group_size((96, 96, 3), 256) == 28
    assert batched.tf_data_group_size((224, 224, 3), 256) == batched.MIN_TF_DATA_GROUP


def test_views_applied_in_groups_equal_views_applied_to_the_whole_batch(monkeypatch):
    from tests.helpers.contrastive_training import random_examples, tiny_method

    method = tiny_method("simclr")
    whole = list(method.make_dataset(random_examples(12, size=SIZE), 6))
    # Groups of 4 images: batched, augmented, unbatched and batched again.
    monkeypatch.setattr(batched, "TF_DATA_GROUP_BYTES", 4 * 4 * SIZE * SIZE * 3)
    monkeypatch.setattr(batched, "MIN_TF_DATA_GROUP", 1)
    assert batched.tf_data_group_size((SIZE, SIZE, 3), 6) == 4
    grouped = list(method.make_dataset(random_examples(12, size=SIZE), 6))
    assert len(grouped) == len(whole) == 2
    for a, b in zip(whole, grouped):
        assert set(a) == set(b) and a["view_1"].shape == (6, SIZE, SIZE, 3)
        for key in a:
            np.testing.assert_allclose(a[key], b[key], atol=1e-6)
    assert not np.allclose(whole[0]["view_1"], whole[0]["view_2"], atol=1e-3)


@pytest.mark.slow
def test_on_device_augmentation_under_two_mirrored_replicas_trains_like_tf_data(data_dir, tmp_path):
    from tests.helpers.runs import checkpoint_difference, run_bindings, run_training

    # Two steps: on 8 images at lr 0.1 the runs' few-ulp differences grow ~10x
    # a step (1e-6 after two steps, 1e-4 after four, for two tf.data runs too).
    bindings = run_bindings(data_dir, 2, **{
        "keras_ssl.build_method.method": "'simclr'",
        "simclr.augmentation": "'simclr_cifar'",
        "simclr.hidden_dim": 16,
    })
    in_tf_data, on_device = str(tmp_path / "tf_data"), str(tmp_path / "device")
    run_training(in_tf_data, bindings + ["keras_ssl.train.export = False"])
    result = run_training(
        on_device, bindings + ["keras_ssl.train.export = False",
                               "keras_ssl.train.augment_on_device = True"],
        "--strategy=mirrored", "--cpu_replicas=2",
    )
    assert "MirroredStrategy: 2 replica(s) on CPU" in result.stdout
    difference = checkpoint_difference(tf.train.latest_checkpoint(in_tf_data),
                                       tf.train.latest_checkpoint(on_device))
    assert difference < 1e-5
