"""`keras_ssl.build_method.init_from`: continued pre-training from a checkpoint, a .keras or a preset."""

import os

import gin
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl import config, training
from keras_ssl.building import build_method, restore_method, weights_restored_after
from keras_ssl.init_from import InitFromError, initialize_backbone
from keras_ssl.testing import TINY_BACKBONE, TINY_KERAS_HUB, tiny_backbone
from tests.helpers.tiny_run import tiny_run_bindings, tiny_shapes_name

IMAGES = np.random.default_rng(0).uniform(size=(2, 16, 16, 3)).astype("float32")


def _outputs(backbone):
    return {k: v.numpy() for k, v in backbone(IMAGES, training=False).items()}


def _assert_same_outputs(a, b):
    for name, value in _outputs(a).items():
        np.testing.assert_allclose(_outputs(b)[name], value, atol=1e-6, err_msg=name)


def test_a_run_directory_initialises_the_backbone_and_momentum_copies(trained_run):
    trained, _ = restore_method(trained_run["model_dir"])
    bindings = [f"resnet_v2.{k} = {v!r}" for k, v in TINY_BACKBONE.items()] + [
        "keras_ssl.build_method.method = 'byol'",
        f"keras_ssl.build_method.init_from = {trained_run['model_dir']!r}"]
    config.parse_gin(bindings=bindings)
    try:
        method = build_method()
        with weights_restored_after():
            fresh = build_method()
    finally:
        gin.clear_config()
    _assert_same_outputs(trained.backbone, method.backbone)
    # BYOL's target network is copied from the backbone after init_from.
    _assert_same_outputs(trained.backbone, method.target_backbone)
    # Resuming and exporting restore every weight: init_from is not read again.
    assert not np.allclose(_outputs(fresh.backbone)["pre_logits"],
                           _outputs(trained.backbone)["pre_logits"])


def test_a_checkpoint_of_another_architecture_is_refused_naming_the_variables(trained_run):
    wider = tiny_backbone("resnet_v2", widening_factor=2)
    before = [w.numpy().copy() for w in wider.weights]
    with pytest.raises(InitFromError) as error:
        initialize_backbone(wider, os.path.join(trained_run["model_dir"], "ckpt-4"))
    message = str(error.value)
    assert "\n" not in message
    assert "of another shape: block1_unit1_conv1/kernel [3, 3, 16, 16] (backbone: [3, 3, 32, 32])" \
        in message
    # Nothing was assigned.
    assert all(np.array_equal(b, w.numpy()) for b, w in zip(before, wider.weights))


def test_unknown_paths_and_savedmodels_are_refused_in_one_line(trained_run, tmp_path):
    net = tiny_backbone("resnet_v2")
    with pytest.raises(InitFromError, match="is not a .keras file, a keras-hub preset"):
        initialize_backbone(net, str(tmp_path / "nothing"))
    with pytest.raises(InitFromError, match="is a SavedModel"):
        initialize_backbone(net, trained_run["final_export"])


def test_unsafe_keras_without_init_from_is_refused():
    config.parse_gin(bindings=["keras_ssl.build_method.method = 'rotation'",
                               "keras_ssl.build_method.unsafe_keras = True"])
    try:
        with pytest.raises(ValueError, match="does nothing without keras_ssl.build_method.init_from"):
            build_method()
    finally:
        gin.clear_config()


def test_a_keras_hub_preset_initialises_the_keras_hub_family(tmp_path):
    source = tiny_backbone("keras_hub", image_size=16)
    preset = str(tmp_path / "preset")
    source.hub_backbone.save_to_preset(preset)
    target = tiny_backbone("keras_hub", image_size=16)
    assert "initialised 30 backbone weights" in initialize_backbone(target, preset)
    _assert_same_outputs(source, target)
    # The keras_hub family builds straight from a preset, too.
    _assert_same_outputs(source, tiny_backbone("keras_hub", preset=preset, class_name=None,
                                                config=None))
    with pytest.raises(InitFromError, match="initialises only the keras_hub family; the run's "
                                            "backbone is 'resnet_v2'"):
        initialize_backbone(tiny_backbone("resnet_v2"), preset)
    other = dict(TINY_KERAS_HUB["config"], stackwise_num_filters=[64, 32])
    with pytest.raises(InitFromError, match=r"15 of another shape: .*stack1_block0_0_conv/kernel "
                                            r"\[1, 1, 64, 16\] \(backbone: \[1, 1, 64, 32\]\)"):
        initialize_backbone(tiny_backbone("keras_hub", config=other, image_size=16), preset)


@pytest.mark.slow
def test_training_continues_from_a_run_and_resumes_without_the_source(
        data_dir, trained_run, tmp_path):
    source = os.path.join(str(tmp_path), "source_copy")
    tf.io.gfile.makedirs(source)
    prefix = os.path.join(trained_run["model_dir"], "ckpt-4")
    for suffix in (".index", ".data-00000-of-00001"):
        tf.io.gfile.copy(prefix + suffix, os.path.join(source, "ckpt-4" + suffix))
    model_dir = str(tmp_path / "continued")
    bindings = tiny_run_bindings(data_dir, tiny_shapes_name(), steps=2) + [
        f"keras_ssl.build_method.init_from = {os.path.join(source, 'ckpt-4')!r}"]
    config.parse_gin(bindings=bindings)
    try:
        training.train(model_dir)
    finally:
        gin.clear_config()
    trained, _ = restore_method(trained_run["model_dir"], 4)
    initial, _ = restore_method(model_dir, 0)
    _assert_same_outputs(trained.backbone, initial.backbone)
    # Resuming (more steps) needs the checkpoint, not the init_from source.
    tf.io.gfile.rmtree(source)
    config.parse_gin(bindings=[b.replace("train_steps = 2", "train_steps = 4") for b in bindings])
    try:
        training.train(model_dir)
    finally:
        gin.clear_config()
    assert restore_method(model_dir)[1] == 4


def test_a_keras_file_initialises_the_backbone_and_a_mismatch_names_the_variables(tmp_path):
    from keras_ssl.portable import save_portable

    source = tiny_backbone("resnet_v2")
    path = save_portable(source, str(tmp_path / "backbone.keras"), 16)
    target = tiny_backbone("resnet_v2")
    assert not np.allclose(_outputs(target)["pre_logits"], _outputs(source)["pre_logits"])
    assert initialize_backbone(target, path).startswith("initialised")
    _assert_same_outputs(source, target)
    wider = tiny_backbone("resnet_v2", widening_factor=2)
    before = [w.numpy().copy() for w in wider.weights]
    with pytest.raises(InitFromError, match=r"does not fit the configured backbone: .*"
                                            r"block1_unit1_conv1"):
        initialize_backbone(wider, path)
    assert all(np.array_equal(b, w.numpy()) for b, w in zip(before, wider.weights))
    with pytest.raises(InitFromError, match="does not exist"):
        initialize_backbone(target, str(tmp_path / "absent.keras"))
