"""The Orbit training loop and the keras-ssl-train binary."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from conftest import REPO, tiny_run_bindings, tiny_shapes_name
from keras_ssl import config, training


def _train_command(model_dir, bindings):
    command = [sys.executable, "-m", "keras_ssl.train", f"--model_dir={model_dir}"]
    return command + [f"--gin_bindings={b}" for b in bindings]


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1", PYTHONUNBUFFERED="1")


def _checkpoint_steps(model_dir):
    state = tf.train.get_checkpoint_state(model_dir)
    return sorted(int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths)


@pytest.mark.slow
def test_run_directory_layout(trained_run):
    model_dir = trained_run["model_dir"]
    run = json.load(open(os.path.join(model_dir, training.RUN_FILE)))
    assert run["method"] == "rotation" and run["backbone"] == "resnet_v2"
    assert run["image_size"] == 16 and run["train_steps"] == 4
    assert "resnet_v2.depth = 10" in open(os.path.join(model_dir, training.CONFIG_FILE)).read()
    operative = open(os.path.join(model_dir, training.OPERATIVE_CONFIG_FILE)).read()
    assert "train.batch_size = 8" in operative and "resnet_v2.depth = 10" in operative
    assert _checkpoint_steps(model_dir) == [2, 4]
    assert tf.io.gfile.exists(os.path.join(model_dir, training.INIT_CHECKPOINT + ".index"))
    assert tf.io.gfile.glob(os.path.join(model_dir, "train", "events.out.tfevents.*"))
    outputs = trained_run["outputs"]
    assert {"loss", "rotation_accuracy", "images_per_second"} <= set(outputs)


@pytest.mark.slow
def test_resume_after_kill_does_not_redo_finished_steps(data_dir, tmp_path):
    """Kills the binary mid-run with SIGKILL, restarts it, and checks it resumes."""
    model_dir = str(tmp_path / "run")
    bindings = tiny_run_bindings(data_dir, tiny_shapes_name(), steps=400)
    first = subprocess.Popen(
        _train_command(model_dir, bindings), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=_env(), cwd=REPO, text=True,
    )
    deadline = time.time() + 240
    killed_after = None
    for line in first.stdout:
        if line.startswith("step 6/400"):
            first.send_signal(signal.SIGKILL)
            killed_after = 6
            break
        assert time.time() < deadline, "the first run made no progress"
    first.wait(timeout=60)
    assert killed_after is not None
    saved = max(_checkpoint_steps(model_dir))
    assert saved >= 4

    bindings[bindings.index("keras_ssl.train.train_steps = 400")] = "keras_ssl.train.train_steps = 12"
    second = subprocess.run(
        _train_command(model_dir, bindings), capture_output=True, text=True, env=_env(),
        cwd=REPO, timeout=300,
    )
    assert second.returncode == 0, second.stdout + second.stderr
    steps = [int(line.split()[1].split("/")[0]) for line in second.stdout.splitlines()
             if line.startswith("step ")]
    # The restarted run starts after the last checkpoint, not at step 0.
    assert steps[0] == saved + 2 and steps[-1] == 12
    assert max(_checkpoint_steps(model_dir)) == 12
    assert os.path.isdir(os.path.join(model_dir, "export", "step_12"))


@pytest.mark.slow
def test_nan_loss_stops_with_clear_message_and_keeps_last_checkpoint(data_dir, tmp_path):
    model_dir = str(tmp_path / "run")
    config.parse_gin(bindings=tiny_run_bindings(data_dir, tiny_shapes_name(), steps=2))
    training.train(model_dir, export=False)
    assert _checkpoint_steps(model_dir) == [2]
    before = tf.train.load_checkpoint(os.path.join(model_dir, "ckpt-2"))
    config.parse_gin(bindings=tiny_run_bindings(
        data_dir, tiny_shapes_name(), steps=8,
        **{"keras_ssl.learning_rate_schedule.base_learning_rate": 1e30},
    ))
    with pytest.raises(training.NonFiniteLossError, match="last checkpoint in the model_dir is intact"):
        training.train(model_dir)
    assert _checkpoint_steps(model_dir) == [2]
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
        _train_command(str(tmp_path / "run"), bindings), capture_output=True, text=True,
        env=_env(), cwd=REPO, timeout=120,
    )
    assert result.returncode != 0
    assert "Unknown method 'rotaton'. Did you mean 'rotation'?" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_mirrored_strategy_matches_one_device(tmp_path):
    """Two logical CPUs under MirroredStrategy update the weights like one device."""
    script = os.path.join(os.path.dirname(__file__), "helpers", "mirrored_step.py")
    result = subprocess.run(
        [sys.executable, script], capture_output=True, text=True, env=_env(), cwd=REPO, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    assert report["max_abs_weight_change"] > 1e-3  # the step really moved the weights
    assert report["max_abs_weight_difference"] < 1e-5
    assert report["loss_difference"] < 1e-5
