"""The parity study's bookkeeping (benchmarks/fashion_mnist_parity/parity.py): a run's
recipe read from its config, rows per recipe, and keras-ssl tested against LightlySSL."""

import json

import numpy as np
import pytest

from benchmarks.fashion_mnist_parity import parity
from keras_ssl_eval.statistics import welch_difference


def _run(library, seed, knn, linear, steps=100, **recipe):
    scores = {p: {"accuracy": a, "ci95": [a - 0.9, a + 0.9], "test_count": 10000}
              for p, a in (("knn", knn), ("linear", linear))}
    return dict(library=library, steps=steps, seed=seed, file=f"{library}_{steps}_s{seed}.npz",
                step0=scores, trained=scores, **recipe)


def test_recipe_is_read_from_the_operative_config(tmp_path):
    config = tmp_path / "config.gin"
    config.write_text("# Parameters for simclr:\nsimclr.views_in_one_batch = False\n"
                      "simclr.temperature = 0.5\nsimclr_cifar.crop_sampler = 'torchvision'\n"
                      "learning_rate_schedule.base_learning_rate = 0.03\n")
    recipe = parity._recipe(str(config))
    assert recipe["views_in_one_batch"] is False and recipe["crop_sampler"] == "torchvision"
    assert recipe["learning_rate"] == 0.03
    # Settings the config leaves out take the defaults the run used.
    assert recipe["kernel_initializer"] == "he_normal"
    assert "temperature" not in recipe


def test_each_keras_ssl_recipe_is_tested_against_lightly_at_the_same_steps(tmp_path):
    matched = dict(crop_sampler="torchvision", kernel_initializer="pytorch")
    runs = [
        *(_run("keras-ssl", s, knn, 83.0 + s / 10, **matched)
          for s, knn in enumerate([74.0, 75.5, 73.1])),
        _run("keras-ssl", 0, 70.0, 80.0, crop_sampler="tensorflow"),  # one seed: no test
        *(_run("lightly", s, knn, 82.8 - s / 10) for s, knn in enumerate([75.9, 76.1, 75.2])),
        _run("keras-ssl", 0, 76.0, 82.0, steps=300, **matched),
        _run("lightly", 0, 76.5, 83.4, steps=300),
    ]
    comparisons = parity.compare(runs)
    assert len(comparisons) == 1
    (comparison,) = comparisons
    assert comparison["steps"] == 100 and comparison["seeds"] == [[0, 1, 2], [0, 1, 2]]
    assert "crop torchvision" in comparison["library"] and comparison["reference"] == "lightly"
    expected = welch_difference([74.0, 75.5, 73.1], [75.9, 76.1, 75.2])
    assert comparison["knn"] == expected
    assert comparison["linear"]["difference"] == pytest.approx(83.1 - 82.7)

    parity.write_report(runs, str(tmp_path / "report"), "parity evaluate ...")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["comparisons"] == json.loads(json.dumps(comparisons))
    assert len(report["summary"]) == 2 * 5  # 5 rows of runs, each at step 0 and trained
    markdown = (tmp_path / "report.md").read_text()
    low, high = expected["ci95"]
    assert f"{expected['difference']:+.1f} [{low:+.1f}, {high:+.1f}]" in markdown


def test_runs_that_predate_a_setting_join_the_rows_of_its_default():
    old, new = _run("lightly", 0, 75.0, 82.0), _run("lightly", 1, 76.0, 83.0, train_images="raw")
    resized = _run("lightly", 2, 74.0, 82.5, train_images="resized")
    labels = [parity._library(parity._with_recipe_defaults(r)) for r in (old, new, resized)]
    assert labels[0] == labels[1] == "lightly (views cut from raw)"
    assert labels[2] == "lightly (views cut from resized)"
    keras_run = parity._with_recipe_defaults(_run("keras-ssl", 0, 74.0, 83.0))
    assert keras_run["crop_sampler"] == "tensorflow" and "train_images" not in keras_run


def test_view_statistics_measure_fine_detail_and_clipping():
    checkerboard = (np.indices((8, 8)).sum(0) % 2).astype(np.float64)
    flat = np.full((8, 8), 0.5)
    views = np.stack([checkerboard, flat])[..., None].repeat(3, axis=-1)
    stats = parity.view_statistics(views)
    # Every neighbouring pair of the checkerboard differs by 1; the flat image by 0.
    assert stats["neighbour_msd"] == pytest.approx(0.5)
    low, high = stats["neighbour_msd_ci95"]
    assert low < 0.5 < high and stats["count"] == 2
    assert stats["black"] == pytest.approx(0.25) and stats["white"] == pytest.approx(0.25)
    assert stats["image_std"] == pytest.approx(0.25) and stats["mean"] == pytest.approx(0.5)


def test_keras_ssl_views_are_the_parity_stacks_and_seeded_per_image():
    images = np.random.default_rng(0).uniform(size=(3, 16, 16, 3)).astype(np.float32)
    views = parity.keras_ssl_views(images, "torchvision")
    assert views.shape == images.shape and 0 <= views.min() and views.max() <= 1
    np.testing.assert_array_equal(views, parity.keras_ssl_views(images, "torchvision"))
    assert not np.allclose(views, images)
