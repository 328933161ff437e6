"""Augmentation stacks (`keras_ssl.augment.stacks`): a batch given its images' draws makes the
per-image views of the same seeds, and the draws have the distribution of the per-image views."""

import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from keras_ssl import random
from keras_ssl.augment import stacks
from keras_ssl.augment.deferred import recording
from keras_ssl.config import ConfigError
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
        with random.seeded(seed), recording() as views:
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
    area, aspect = stacks.crop_area_and_aspect(tf.constant(boxes, tf.float32), (SIZE, SIZE, 3))
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
        with random.seeded(random.example_seed(2, index)), recording() as recorded:
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


def _torchvision_corners(u, height, width, area_range=(0.08, 1.0), ratio_range=(3 / 4, 4 / 3)):
    """torchvision's `RandomResizedCrop.get_params`, written out, on given uniform draws
    `u[4, attempts]` (area, log ratio, top, left): `(top, left, bottom, right)` pixel corners."""
    for attempt in range(u.shape[1]):
        area = height * width * (area_range[0] + (area_range[1] - area_range[0]) * u[0, attempt])
        ratio = math.exp(math.log(ratio_range[0])
                         + (math.log(ratio_range[1]) - math.log(ratio_range[0])) * u[1, attempt])
        w = int(round(math.sqrt(area * ratio)))
        h = int(round(math.sqrt(area / ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(u[2, attempt] * (height - h + 1))
            left = int(u[3, attempt] * (width - w + 1))
            return top, left, top + h - 1, left + w - 1
    in_ratio = width / height
    if in_ratio < min(ratio_range):
        w, h = width, int(round(width / min(ratio_range)))
    elif in_ratio > max(ratio_range):
        h, w = height, int(round(height * max(ratio_range)))
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return top, left, top + h - 1, left + w - 1


@pytest.mark.parametrize("shape,area_range,ratio_range", [
    ((28, 28, 3), (0.08, 1.0), (3 / 4, 4 / 3)),
    ((16, 24, 3), (0.2, 1.0), (3 / 4, 4 / 3)),
    # No draw fits: every box is the fallback, the central crop with the ratio clamped.
    ((20, 20, 3), (0.9, 1.0), (2.0, 3.0)),
    ((20, 12, 3), (0.9, 1.0), (2.0, 3.0)),
])
def test_torchvision_crop_sampler_is_torchvisions_draw(shape, area_range, ratio_range):
    height, width = shape[:2]
    scale = np.array([height - 1, width - 1, height - 1, width - 1], np.float64)
    for i in range(200):
        seed = tf.constant([i, 11])
        box = stacks.draw_crop_box(shape, area_range, ratio_range, seed=seed,
                                   sampler="torchvision").numpy()
        u = tf.random.stateless_uniform([4, 10], seed, dtype=tf.float64).numpy()
        expected = _torchvision_corners(u, height, width, area_range, ratio_range)
        np.testing.assert_allclose(box * scale, expected, atol=1e-3, err_msg=f"seed {i}")


def test_the_two_crop_samplers_have_their_libraries_area_distributions():
    # torchvision's area is uniform over the range (mean about 0.49 after the
    # rejections at 28 px), TensorFlow's crop height is: its crops are smaller.
    shape = (28, 28, 3)
    rng = np.random.RandomState(0)
    reference = np.array([_torchvision_corners(rng.uniform(size=(4, 10)), 28, 28)
                          for _ in range(4000)], np.float64)
    reference_area = ((reference[:, 2] - reference[:, 0] + 1)
                      * (reference[:, 3] - reference[:, 1] + 1) / 784.0)

    def areas(sampler):
        boxes = tf.stack([stacks.draw_crop_box(shape, seed=tf.constant([i, 3]), sampler=sampler)
                          for i in range(1500)])
        return stacks.crop_area_and_aspect(boxes, shape)[0].numpy()

    torchvision, tensorflow = areas("torchvision"), areas("tensorflow")
    assert stats.ks_2samp(torchvision, reference_area).pvalue > 1e-3
    assert tensorflow.mean() < torchvision.mean() - 0.05
    assert stats.ks_2samp(tensorflow, reference_area).pvalue < 1e-6


@pytest.mark.parametrize("name", ["simclr_imagenet", "simclr_cifar", "moco_v2"])
def test_crop_sampler_reaches_the_stacks_views(name):
    fn = AUGMENTATIONS.get(name)
    image = tf.constant(_coordinates())

    def view(sampler, index):
        with random.seeded(random.example_seed(4, index)):
            return fn(image, color_jitter_strength=0.0, grayscale_probability=0.0,
                      crop_sampler=sampler).numpy()

    # The same seeds: the crop box is the only draw that differs.
    differ = [not np.allclose(view("tensorflow", i), view("torchvision", i)) for i in range(4)]
    assert any(differ)
    np.testing.assert_array_equal(view("torchvision", 0), view("torchvision", 0))


def test_an_unknown_crop_sampler_is_refused_with_the_choices():
    # A ConfigError: the binaries print it as one line (keras_ssl.cli_errors.USER_ERRORS).
    with pytest.raises(ConfigError, match="crop_sampler='pytorch'.*tensorflow, torchvision"):
        stacks.SimCLRStack(crop_sampler="pytorch")
