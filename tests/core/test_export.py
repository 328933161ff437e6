"""The SavedModel contract of exports, checked from a process without keras."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_ssl import export
from keras_ssl_eval import contract
from tests.helpers import REPO
from tests.helpers.forkserver import run_binary
from keras_ssl.testing import tiny_backbone

ENDPOINTS = ["after_root", "block1", "block2", "block3", "block4", "pre_logits"]


def _restored_backbone(model_dir, step):
    from keras_ssl.building import restore_method

    method, _ = restore_method(model_dir, step)
    return method.backbone


@pytest.mark.slow
def test_a_run_is_restored_without_importing_the_training_loop(trained_run, tmp_path):
    # What keras-ssl-export does in its own process: the run's config binds
    # keras_ssl.train and the optimizer, which this process never registers.
    code = ("import sys\nfrom keras_ssl import building\n"
            f"method, step = building.restore_method({trained_run['model_dir']!r})\n"
            "print(step, type(method).__name__, 'keras_ssl.training' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-3:] == ["4", "Rotation", "False"], done.stdout


@pytest.mark.slow
def test_export_loads_without_keras_and_matches_in_memory_backbone(trained_run, tmp_path):
    images = np.random.RandomState(0).rand(3, 16, 16, 3).astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tests", "helpers", "load_without_keras.py"),
         trained_run["final_export"], str(tmp_path / "images.npy"), str(tmp_path / "out.npz")],
        capture_output=True, text=True, timeout=180,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1"),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["loaded_blocked_modules"] == []
    loaded = dict(np.load(tmp_path / "out.npz"))

    backbone = _restored_backbone(trained_run["model_dir"], 4)
    expected = {k: v.numpy() for k, v in backbone(images, training=False).items()}
    assert sorted(k.split("/")[1] for k in loaded if k.startswith("representation/")) == sorted(ENDPOINTS)
    for name in ENDPOINTS:
        np.testing.assert_allclose(loaded[f"representation/{name}"], expected[name], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(loaded["serving_default/pre_logits"], expected["pre_logits"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(loaded["call"], expected["pre_logits"], rtol=1e-4, atol=1e-5)
    # Batch norm in training mode uses batch statistics: a different output.
    assert not np.allclose(loaded["call_training"], loaded["call"])
    # end_points: every end-point in either mode (dense fine-tuning needs training=True).
    training = {k: v.numpy() for k, v in backbone(images, training=True).items()}
    for name in ENDPOINTS:
        np.testing.assert_allclose(loaded[f"end_points_False/{name}"], expected[name], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(loaded[f"end_points_True/{name}"], training[name], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(loaded["end_points_True/pre_logits"], loaded["call_training"], rtol=1e-5, atol=1e-6)
    assert report["variables"] == len(backbone.variables)
    assert report["trainable_variables"] == len(backbone.trainable_variables)
    assert report["regularization_losses"] == 0


@pytest.mark.slow
def test_export_metadata(trained_run):
    with open(os.path.join(trained_run["final_export"], contract.METADATA_PATH)) as f:
        metadata = json.load(f)
    assert metadata["method"] == "rotation" and metadata["steps"] == 4
    assert metadata["input_size"] == [16, 16] and metadata["input_value_range"] == [0.0, 1.0]
    assert metadata["backbone"]["family"] == "resnet_v2"
    assert metadata["backbone"]["widening_factor"] == 1
    assert metadata["endpoints"] == ENDPOINTS
    assert metadata["endpoint_shapes_at_input_size"]["block2"] == [None, 8, 8, 32]
    assert "resnet_v2.depth = 10" in metadata["gin_config"]
    assert metadata["library_version"] and metadata["dataset"].startswith("synthetic_shapes/")


@pytest.mark.slow
def test_step_zero_export_is_the_random_initialisation(trained_run):
    images = tf.random.uniform((2, 16, 16, 3), seed=1)
    initial = tf.saved_model.load(trained_run["initial_export"])
    final = tf.saved_model.load(trained_run["final_export"])
    expected = _restored_backbone(trained_run["model_dir"], 0)(images)["pre_logits"]
    np.testing.assert_allclose(initial(images), expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(initial(images), final(images), atol=1e-4)
    with open(os.path.join(trained_run["initial_export"], contract.METADATA_PATH)) as f:
        assert json.load(f)["steps"] == 0


@pytest.mark.slow
def test_export_binary_and_missing_step(trained_run, tmp_path):
    out = tmp_path / "exported"
    result = run_binary(
        "keras-ssl-export", f"--model_dir={trained_run['model_dir']}", "--step=2",
        f"--export_dir={out}", timeout=180, cwd=REPO,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1"),
    )
    assert result.returncode == 0, result.stderr
    assert "serving_default" in tf.saved_model.load(str(out)).signatures
    with pytest.raises(FileNotFoundError, match=r"available steps: \[0, 2, 4\]"):
        export.export_checkpoint(trained_run["model_dir"], step=3)


@pytest.mark.slow
def test_export_is_atomic(tmp_path, monkeypatch):
    backbone = tiny_backbone()
    destination = tmp_path / "model"
    export.export_backbone(backbone, str(destination), {"name": "first"}, image_size=16)
    before = sorted(os.listdir(destination))

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        export.export_backbone(backbone, str(destination), {"name": "second"}, image_size=16)
    # The earlier export is untouched and no staging directory is left behind.
    assert sorted(os.listdir(destination)) == before
    assert sorted(os.listdir(tmp_path)) == ["model"]
    with open(destination / contract.METADATA_PATH) as f:
        assert json.load(f)["name"] == "first"


@pytest.mark.parametrize("family, first_endpoint", [
    ("vit", {"patch_embedding": "block1", "tokens": "block1", "block1_transformer": "block1",
             "block2_transformer": "block2", "encoder_norm": "pre_logits"}),
    ("resnet_v2", {"root_conv": "after_root", "block1_unit1_conv1": "block1",
                   "block4_unit1_conv2": "block4", "final_bn": "block4"}),
])
def test_export_places_every_trainable_variable_at_the_first_end_point_it_feeds(
        family, first_endpoint, tmp_path):
    backbone = tiny_backbone(family)
    path = export.export_backbone(backbone, str(tmp_path / "model"), {}, image_size=16)
    with open(os.path.join(path, contract.METADATA_PATH)) as f:
        metadata = json.load(f)
    paths = metadata["trainable_variable_paths"]
    assert paths == [v.path for v in backbone.trainable_variables]
    placed = dict(zip(paths, metadata["trainable_variable_endpoints"]))
    for layer, endpoint in first_endpoint.items():
        found = {placed[p] for p in paths if p.split("/")[0] == layer}
        assert found == {endpoint}, (layer, found)


def test_layer_decay_scales_each_blocks_update_by_its_depth_below_the_head(tmp_path):
    """Two SGD steps from the export, decay 0.5 against none: the head is zero at the
    first step, so the backbone moves once, by rate x the same gradient."""
    from keras_ssl_eval.probes.finetune import FineTuner

    path = export.export_backbone(tiny_backbone("vit"), str(tmp_path / "vit"), {}, image_size=16)
    rng = np.random.default_rng(0)
    images = rng.uniform(size=[8, 16, 16, 3]).astype(np.float32)
    labels = np.array([0, 1] * 4)
    moved = {}
    for decay in (1.0, 0.5):
        tuner = FineTuner(path, 2, steps=2, batch_size=8, learning_rate=0.1, layer_decay=decay)
        start = [v.numpy() for v in tuner.backbone_vars]
        tuner._fit(images, labels)
        moved[decay] = [v.numpy() - s for v, s in zip(tuner.backbone_vars, start)]
    # pre_logits is end-point 3 of (block1, block2, pre_logits): block1's variables
    # learn at 0.5 ** 2, block2's at 0.5, the final norm's at 1.
    expected = {"block1": 0.25, "block2": 0.5, "pre_logits": 1.0}
    with open(os.path.join(path, contract.METADATA_PATH)) as f:
        metadata = json.load(f)
    names, placed = metadata["trainable_variable_paths"], metadata["trainable_variable_endpoints"]
    assert tuner.rate_scales() == [expected[p] for p in placed]
    checked = 0
    for name, endpoint, full, decayed in zip(names, placed, moved[1.0], moved[0.5]):
        if np.abs(full).max() > 1e-6:
            np.testing.assert_allclose(decayed, expected[endpoint] * full, rtol=1e-3,
                                       atol=1e-7, err_msg=name)
            checked += 1
    assert checked >= len(names) // 2


def test_layer_decay_is_refused_for_a_model_that_does_not_place_its_variables(tmp_path):
    from keras_ssl_eval.probes.finetune import FineTuner
    from keras_ssl_eval.testing import save_toy_savedmodel

    path = save_toy_savedmodel(str(tmp_path / "toy"))
    tuner = FineTuner(path, 2, layer_decay=0.65)
    with pytest.raises(ValueError, match="trainable_variable_endpoints.*finetune_layer_decay = 1"):
        tuner.rate_scales()
    with pytest.raises(ValueError, match="outside \\(0, 1\\]"):
        FineTuner(path, 2, layer_decay=0.0)
