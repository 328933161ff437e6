"""Deferred views (`keras_ssl.augment.deferred`): drawn in tf.data, applied per group of images
or on the device under a 2-replica mirrored strategy, the views of the per-image path."""

import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.augment import deferred

SIZE = 24


def test_make_dataset_defers_views_only_where_preprocess_returns_them():
    from tests.helpers.contrastive_training import random_examples, tiny_method

    method = tiny_method("simclr")
    plain = next(iter(method.make_dataset(random_examples(4, size=SIZE), 4)))
    assert not any(deferred.PARAM_SEPARATOR in key for key in plain)
    method.augment_on_device = True
    carried = next(iter(method.make_dataset(random_examples(4, size=SIZE), 4)))
    assert "view_1/augment/box" in carried
    applied = method.augment_batch(carried)
    assert set(applied) == set(plain)
    for key in ("view_1", "view_2"):
        np.testing.assert_allclose(applied[key], plain[key], atol=1e-5)

    rotation = tiny_method("rotation", augmentation="crop_flip")
    rotation.augment_on_device = True
    with pytest.raises(deferred.AugmentOnDeviceError, match="rotation|transforms the augmented"):
        rotation.make_dataset(random_examples(4, size=SIZE), 4)


def test_tf_data_groups_hold_a_few_mib_of_views_within_the_batch():
    assert deferred.tf_data_group_size((32, 32, 3), 256) == 256  # 3 MiB / 12 KiB
    assert deferred.tf_data_group_size((32, 32, 3), 64) == 64
    assert deferred.tf_data_group_size((64, 64, 3), 256) == 64
    assert deferred.tf_data_group_size((96, 96, 3), 256) == 28
    assert deferred.tf_data_group_size((224, 224, 3), 256) == deferred.MIN_TF_DATA_GROUP


def test_views_applied_in_groups_equal_views_applied_to_the_whole_batch(monkeypatch):
    from tests.helpers.contrastive_training import random_examples, tiny_method

    method = tiny_method("simclr")
    whole = list(method.make_dataset(random_examples(12, size=SIZE), 6))
    # Groups of 4 images: batched, augmented, unbatched and batched again.
    monkeypatch.setattr(deferred, "TF_DATA_GROUP_BYTES", 4 * 4 * SIZE * SIZE * 3)
    monkeypatch.setattr(deferred, "MIN_TF_DATA_GROUP", 1)
    assert deferred.tf_data_group_size((SIZE, SIZE, 3), 6) == 4
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
