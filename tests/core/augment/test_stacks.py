"""Augmentation stacks (`keras_ssl.augment.stacks`): a batch given its images' draws makes the
per-image views of the same seeds, and the draws have the distribution of the per-image views."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from keras_ssl import random
from keras_ssl.augment import stacks
from keras_ssl.augment.deferred import recording
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
