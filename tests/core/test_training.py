"""The Orbit training loop and the keras-ssl-train binary."""

import json
import os
import subprocess

import pytest
import tensorflow as tf

from keras_ssl import config, run_dir, training
from tests.helpers import REPO
from tests.helpers.runs import checkpoint_steps, training_env, train_command
from tests.helpers.tiny_run import tiny_run_bindings, tiny_shapes_name


@pytest.mark.slow
def test_run_directory_layout(trained_run):
    model_dir = trained_run["model_dir"]
    run = json.load(open(os.path.join(model_dir, run_dir.RUN_FILE)))
    assert run["method"] == "rotation" and run["backbone"] == "resnet_v2"
    assert run["image_size"] == 16 and run["train_steps"] == 4
    assert "resnet_v2.depth = 10" in open(os.path.join(model_dir, run_dir.CONFIG_FILE)).read()
    operative = open(os.path.join(model_dir, run_dir.OPERATIVE_CONFIG_FILE)).read()
    assert "train.batch_size = 8" in operative and "resnet_v2.depth = 10" in operative
    assert checkpoint_steps(model_dir) == [2, 4]
    assert tf.io.gfile.exists(os.path.join(model_dir, run_dir.INIT_CHECKPOINT + ".index"))
    assert tf.io.gfile.glob(os.path.join(model_dir, "train", "events.out.tfevents.*"))
    outputs = trained_run["outputs"]
    assert {"loss", "rotation_accuracy", "images_per_second"} <= set(outputs)


@pytest.mark.slow
def test_nan_loss_stops_with_clear_message_and_keeps_last_checkpoint(data_dir, tmp_path):
    model_dir = str(tmp_path / "run")
    config.parse_gin(bindings=tiny_run_bindings(data_dir, tiny_shapes_name(), steps=2))
    training.train(model_dir, export=False)
    assert checkpoint_steps(model_dir) == [2]
    before = tf.train.load_checkpoint(os.path.join(model_dir, "ckpt-2"))
    config.parse_gin(bindings=tiny_run_bindings(
        data_dir, tiny_shapes_name(), steps=8,
        **{"keras_ssl.learning_rate_schedule.base_learning_rate": 1e30},
    ))
    with pytest.raises(training.NonFiniteLossError, match="last checkpoint in the model_dir is intact"):
        training.train(model_dir)
    assert checkpoint_steps(model_dir) == [2]
    after = tf.train.load_checkpoint(os.path.join(model_dir, "ckpt-2"))
    name = "global_step/.ATTRIBUTES/VARIABLE_VALUE"
    assert before.get_tensor(name) == after.get_tensor(name) == 2


def test_bad_gin_binding_names_the_problem():
    with pytest.raises(config.ConfigError, match="No configurable matching 'resnet_v9'") as info:
        config.parse_gin(bindings=["resnet_v9.depth = 10"])
    assert "resnet_v2" in str(info.value)
    with pytest.raises(config.ConfigError, match="does not exist"):
        config.parse_gin(["/nonexistent/file.gin"])


@pytest.mark.slow
def test_binary_reports_unknown_method_clearly(tmp_path, data_dir):
    bindings = tiny_run_bindings(data_dir, tiny_shapes_name(), steps=2)
    bindings[0] = "keras_ssl.build_method.method = 'rotaton'"
    result = subprocess.run(
        train_command(str(tmp_path / "run"), bindings), capture_output=True, text=True,
        env=training_env(), cwd=REPO, timeout=120,
    )
    assert result.returncode != 0
    assert "Unknown method 'rotaton'. Did you mean 'rotation'?" in result.stderr
    assert "Traceback" not in result.stderr


def test_loop_end_callbacks_get_each_loop_before_its_checkpoint(data_dir, tmp_path):
    model_dir = str(tmp_path / "run")
    config.parse_gin(bindings=tiny_run_bindings(data_dir, tiny_shapes_name(), steps=4))
    calls = []

    def record(step, outputs):
        calls.append((step, dict(outputs), sorted(run_dir.available_steps(model_dir))))
        outputs["loss"] = float("nan")  # A copy: the run's own figures stay as they were.

    final = training.train(model_dir, export=False, loop_end_callbacks=[
        lambda step, outputs: calls.append(("first", step)), record])
    assert [call[:2] if call[0] == "first" else call[0] for call in calls] == [
        ("first", 2), 2, ("first", 4), 4]
    (_, at_2, saved_at_2), (_, at_4, saved_at_4) = calls[1], calls[3]
    assert saved_at_2 == [0] and saved_at_4 == [0, 2]  # Each loop's checkpoint comes after.
    assert {"loss", "regularization_loss", "rotation_accuracy", "images_per_second"} <= set(at_2)
    assert at_4 == final and final["loss"] == final["loss"]  # Not the NaN written into the copy.
    with pytest.raises(config.ConfigError):  # Python only: gin cannot bind it.
        config.parse_gin(bindings=["keras_ssl.train.loop_end_callbacks = []"])


def test_checkpoints_fall_on_multiples_of_the_interval_and_at_the_end(data_dir, tmp_path):
    from keras_ssl import config, training
    from keras_ssl.run_dir import available_steps

    model_dir = str(tmp_path / "run")
    config.parse_gin(bindings=tiny_run_bindings(
        data_dir, tiny_shapes_name(), steps=6, **{"keras_ssl.train.checkpoint_interval": 4,
                                                  "keras_ssl.train.max_checkpoints": 5}))
    training.train(model_dir, export=False)
    assert sorted(available_steps(model_dir)) == [0, 4, 6]
