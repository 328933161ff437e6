"""The dense utility task: segmentation fine-tuning on synthetic_shapes (keras_ssl_eval)."""

import logging

import numpy as np
import pytest

from keras_ssl_eval.probes import finetune
from keras_ssl_eval.protocols.evaluate import evaluate
from keras_ssl_eval.reading import data
from keras_ssl_eval.settings import DataSettings, UtilitySettings
from tests.helpers.tiny_run import tiny_shapes_name
from keras_ssl_eval.testing import save_toy_savedmodel


def test_mean_iou_counts_pixels_over_the_whole_set():
    targets = np.array([[[0, 0], [1, 1]], [[0, 2], [2, 2]]])
    predictions = np.array([[[0, 1], [1, 1]], [[0, 0], [2, 2]]])
    # class 0: TP 2, FP 1, FN 1 -> 2/4; class 1: TP 2, FP 1 -> 2/3; class 2: TP 2, FN 1 -> 2/3.
    expected = np.mean([2 / 4, 2 / 3, 2 / 3])
    assert finetune.mean_iou(predictions, targets, 4) == pytest.approx(expected)
    assert finetune.mean_iou(targets, targets, 4) == 1.0  # Class 3 is absent: not averaged.


def test_default_dense_layer_is_the_deepest_at_a_quarter_of_the_input():
    shapes = {"after_root": [32, 32, 16], "block1": [32, 32, 16], "block2": [16, 16, 32],
              "block3": [8, 8, 64], "block4": [4, 4, 128], "pre_logits": [128]}
    assert finetune.default_dense_layer(shapes, 32) == "block3"
    assert finetune.default_dense_layer({"a": [2, 2, 4], "b": [1, 1, 8], "p": [8]}, 64) == "a"
    with pytest.raises(ValueError, match="no spatial end-point"):
        finetune.default_dense_layer({"pre_logits": [8]}, 32)


def test_foreground_maps_follow_the_masks(data_dir):
    ds, _ = data.load_images(tiny_shapes_name(), "train", data_dir=data_dir, image_size=16,
                             segmentation=True)
    for example in ds.take(6).as_numpy_iterator():
        assert example["segmentation"].shape == (16, 16)
        assert set(np.unique(example["segmentation"])) == {0, 1}
    # The dataset's own mask, read straight from TFDS in the same order.
    import tensorflow_datasets as tfds

    raw = next(iter(tfds.load(tiny_shapes_name(), split="train", data_dir=data_dir)))
    example = next(ds.as_numpy_iterator())
    np.testing.assert_array_equal(example["segmentation"],
                                  (raw["segmentation_mask"].numpy()[..., 0] > 0).astype(np.int64))
    # Eagerly and inside tf.data alike.
    eager = next(iter(ds))["segmentation"].numpy()
    graph = next(iter(ds.map(lambda e: e).batch(1)))["segmentation"].numpy()[0]
    np.testing.assert_array_equal(eager, graph)
    with pytest.raises(ValueError, match="no segmentation masks"):
        data.load_images("folder:/nowhere", "train", segmentation=True)


def test_segmentation_finetuning_through_representation_warns_and_learns(tmp_path, caplog):
    path = save_toy_savedmodel(str(tmp_path / "toy"), block1_channels=8)
    rng = np.random.default_rng(0)
    images = rng.uniform(size=[16, 16, 16, 3]).astype(np.float32)
    masks = (images[..., 0] > 0.5).astype(np.int64)  # Learnable from the pixels.
    with caplog.at_level(logging.WARNING):
        tuner = finetune.SegmentationFineTuner(path, 2, "block1", steps=60, batch_size=8,
                                               learning_rate=0.5)
    assert "frozen" in caplog.text
    trained = tuner.score(images, masks, images, masks)
    untrained = finetune.SegmentationFineTuner(path, 2, "block1", steps=0).score(
        images, masks, images, masks)
    assert untrained == pytest.approx(np.mean(masks == 0) / 2)  # All background.
    assert trained > untrained + 0.2
    with pytest.raises(ValueError, match="feature map"):
        finetune.SegmentationFineTuner(path, 2, "pre_logits", steps=1).score(
            images, masks, images, masks)


@pytest.mark.slow
def test_segmentation_utility_of_scratch_is_zero_and_finetuning_learns(trained_run, data_dir):
    scratch = trained_run["initial_export"]
    result = evaluate([scratch], tiny_shapes_name(), protocols="utility",
                      data=DataSettings(data_dir=data_dir, cache_dir=""),
                      utility=UtilitySettings(scratch_model=scratch, task="segmentation",
                                              budgets=(8, 24), finetune_steps=6,
                                              finetune_batch_size=8))
    entry = result["models"][0]["utility"]
    assert entry["task"] == "segmentation" and entry["metric"] == "mean_iou"
    assert entry["layer"] == "block3" and entry["num_classes"] == 2
    assert [row["utility"] for row in entry["curve"]] == [0.0, 0.0]
    assert result["settings"]["utility"]["task"] == "segmentation"

    images, labels, maps = finetune.load_arrays(tiny_shapes_name(), "train", (16, 16),
                                                data_dir=data_dir, segmentation=True)
    tuner = finetune.SegmentationFineTuner(trained_run["final_export"], 2, "block2",
                                           steps=40, batch_size=16, learning_rate=0.05)
    assert tuner._end_points is not None  # pylint: disable=protected-access
    before = [v.numpy().copy() for v in tuner.backbone_vars]
    trained = tuner.score(images, maps, images, maps)
    background_only = np.mean(maps == 0) / 2
    assert trained > background_only + 0.05
    assert any(not np.allclose(b, v.numpy()) for b, v in zip(before, tuner.backbone_vars))
    with pytest.raises(ValueError, match="utility task"):
        evaluate([scratch], tiny_shapes_name(), protocols="utility",
                 data=DataSettings(data_dir=data_dir),
                 utility=UtilitySettings(scratch_model=scratch, task="depth"))
