"""Scale-out: every method on replicas and under XLA, multi-worker runs, preemption, mixed precision."""

import json
import os
import signal

import numpy as np
import pytest
import tensorflow as tf

from keras_ssl import config, cross_replica, distribute, training
from keras_ssl.registry import METHODS
from keras_ssl.testing.replicas import assert_replica_report, assert_xla_report, replica_reports
from tests.helpers import REPO
from tests.helpers.forkserver import run_binary
from tests.helpers.runs import (
    checkpoint_difference, checkpoint_steps, free_ports, kill, run_bindings, run_training,
    signal_at_step, start_training, training_env, train_command,
)

STEPS = 8  # the steps of conftest's `reference_run`
# The patch heads' dropout is on here (the tiny settings turn it off), to check
# its masks are drawn per global batch. Every method trains on its tiny
# settings' own views (colour jitter and grayscale included); the harness
# computes its ReLUs as GELU (keras_ssl.testing.replicas), and they agree to
# ~1e-6 after two steps. Before that, one ReLU whose input lay within the
# split's rounding of zero moved Jigsaw, Relative Patch Location, BYOL and PIRL
# by 1e-4 to 1e-3, and each needed other views or settings here. Except:
# - Barlow Twins, whose first step moves the backbone by ~4: a tenth of the
#   loss (at full loss, 4e-5 after two steps).
REPLICA_OVERRIDES = {
    "jigsaw": {"dropout": 0.5},
    "relative_patch_location": {"dropout": 0.5},
    "barlow_twins": {"loss_scale": 0.1},
}


@pytest.fixture(scope="module")
def registry_report(request):
    """`{method: {"replicas": report, "xla": report}}`: both checks in one start-up per process.

    Only the methods whose tests were selected (`-k nnclr` builds NNCLR alone).
    """
    selected = sorted({
        item.callspec.params["name"] for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec")
        and "registry_report" in item.fixturenames
    })
    return replica_reports(selected, "all", processes=min(2, len(selected)),
                           settings=REPLICA_OVERRIDES)


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS.names())
def test_two_replicas_train_every_method_like_one_device(registry_report, name):
    """Two Orbit steps on 2 mirrored CPUs: weights, queues, banks, EMA and metrics as on one device."""
    assert_replica_report(name, registry_report[name]["replicas"])


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_step_compiles_with_xla(registry_report, name):
    """TPU compatibility: the replica step lowers to XLA (static shapes, no host-side ops)."""
    assert_xla_report(name, registry_report[name]["xla"])


@pytest.mark.slow
def test_a_step_jit_compiled_end_to_end_trains():
    report = replica_reports(["rotation"], "jit", processes=1)["rotation"]["jit"]
    assert report == {"jit_loss_finite": True}, report


def _cluster_env(ports, index):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    return training_env(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))


@pytest.mark.slow
def test_two_worker_processes_train_like_one_device_and_resume_after_both_are_killed(
    reference_run, data_dir, tmp_path
):
    model_dir = str(tmp_path / "multi_worker")
    bindings = run_bindings(data_dir, STEPS)
    ports = free_ports(2)
    flag = "--strategy=multi_worker_mirrored"
    workers = [start_training(model_dir, bindings, flag, env=_cluster_env(ports, i)) for i in (0, 1)]
    try:
        signal_at_step(workers[0], 6, signal.SIGKILL)  # the chief; after the checkpoint of step 4
    finally:
        kill(*workers)
    assert max(checkpoint_steps(model_dir)) == 4

    ports = free_ports(2)
    workers = [start_training(model_dir, bindings, flag, env=_cluster_env(ports, i)) for i in (0, 1)]
    try:
        outputs = [w.communicate(timeout=300)[0] for w in workers]
    finally:
        kill(*workers)
    assert [w.returncode for w in workers] == [0, 0], outputs
    chief, other = outputs
    assert "2 replica(s) on CPU, 2 workers, this is worker 0" in chief
    assert "resuming from the checkpoint of step 4" in chief
    assert "step 8/8" in chief and "step 8/8" not in other  # only the chief prints progress
    assert checkpoint_difference(os.path.join(reference_run, "ckpt-8"),
                                 os.path.join(model_dir, "ckpt-8")) < 1e-5
    # The chief alone wrote the run directory; the others' scratch copies are gone.
    assert sorted(os.listdir(model_dir)) == sorted(os.listdir(reference_run))
    assert os.listdir(os.path.join(model_dir, "export")) == ["step_8"]


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_and_the_restart_loses_nothing(
    reference_run, data_dir, tmp_path
):
    model_dir = str(tmp_path / "preempted")
    bindings = run_bindings(data_dir, STEPS, **{"keras_ssl.train.checkpoint_interval": 4})
    first = start_training(model_dir, bindings)
    seen = signal_at_step(first, 2, signal.SIGTERM)
    output = "".join(seen) + first.communicate(timeout=120)[0]
    assert first.returncode == training.PREEMPTED_EXIT_CODE, output
    assert "preempted (SIGTERM): checkpoint written at step" in output
    stopped_at = max(checkpoint_steps(model_dir))
    assert stopped_at in (2, 4) and f"step {stopped_at}/" in output
    second = run_training(model_dir, bindings)
    assert f"resuming from the checkpoint of step {stopped_at}" in second.stdout
    assert checkpoint_difference(os.path.join(reference_run, "ckpt-8"),
                                 os.path.join(model_dir, "ckpt-8")) == 0.0


VIT_BINDINGS = {"keras_ssl.build_method.backbone": "'vit'", "vit.widening_factor": 1,
                "vit.depth": 2, "vit.patch_size": 4, "vit.image_size": 16}


@pytest.mark.slow
@pytest.mark.parametrize("family", ["resnet_v2", "vit"])
def test_mixed_bfloat16_trains_and_exports_float32(data_dir, tmp_path, family):
    from tests.helpers.tiny_run import tiny_run_bindings, tiny_shapes_name
    from keras_ssl.export import export_checkpoint

    model_dir = str(tmp_path / "bf16")
    precision = {"keras_ssl.train.mixed_precision": "'mixed_bfloat16'"}
    config.parse_gin(bindings=run_bindings(data_dir, 2, **precision) if family == "resnet_v2"
                     else tiny_run_bindings(data_dir, tiny_shapes_name(), steps=2,
                                            **precision, **VIT_BINDINGS))
    outputs = training.train(model_dir)
    assert np.isfinite(outputs["loss"])
    float32 = export_checkpoint(model_dir, 2, str(tmp_path / "float32_rebuild"))
    exported = tf.saved_model.load(os.path.join(model_dir, "export", "step_2"))
    rebuilt = tf.saved_model.load(float32)
    images = tf.random.stateless_uniform([4, 16, 16, 3], [1, 2])
    ends, ends_float32 = exported.signatures["representation"](images), rebuilt.signatures[
        "representation"](images)
    for name, value in ends.items():
        assert value.dtype == tf.float32
        np.testing.assert_allclose(value.numpy(), ends_float32[name].numpy(), atol=1e-5)
    assert all(v.dtype == tf.float32 for v in exported.variables)


def test_mixed_precision_refused_for_a_method_that_cannot_run_under_it(
    monkeypatch, data_dir, tmp_path
):
    monkeypatch.setattr(METHODS.get("rotation"), "supports_mixed_precision", False)
    config.parse_gin(bindings=run_bindings(
        data_dir, 2, **{"keras_ssl.train.mixed_precision": "'mixed_float16'"}))
    with pytest.raises(training.TrainingConfigError, match="cannot train under mixed_float16"):
        training.train(str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")


def _binary_error(tmp_path, data_dir, *flags, env=None):
    model_dir = tmp_path / "run"
    # The command of `train_command`, forked from a process that imported TensorFlow already.
    command = train_command(str(model_dir), run_bindings(data_dir, 2), *flags)
    result = run_binary("keras-ssl-train", *command[3:], env=env or training_env(), cwd=REPO,
                        timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert not model_dir.exists()
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.parametrize("tf_config, message", [
    (None, "needs the TF_CONFIG environment variable"),
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}',
     "task index 3 is out of range"),
])
def test_bad_tf_config_is_one_clear_line(tmp_path, data_dir, tf_config, message):
    env = training_env()
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = tf_config
    line = _binary_error(tmp_path, data_dir, "--strategy=multi_worker_mirrored", env=env)
    assert line.startswith("keras-ssl-train: ") and message in line


@pytest.mark.slow
@pytest.mark.parametrize("flags, message", [
    (("--strategy=mirrored", "--cpu_replicas=3"), "does not divide over 3 replicas"),
    (("--cpu_replicas=2",), "works with --strategy=mirrored only"),
])
def test_bad_replica_setup_is_one_clear_line(tmp_path, data_dir, flags, message):
    line = _binary_error(tmp_path, data_dir, *flags)
    assert message in line


def test_parse_tf_config_names_what_is_wrong():
    good = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
    assert distribute.parse_tf_config({"TF_CONFIG": json.dumps(good)}) == good
    with pytest.raises(distribute.StrategyError, match="no 'cluster'"):
        distribute.parse_tf_config({"TF_CONFIG": '{"task": {"type": "worker", "index": 0}}'})
    with pytest.raises(distribute.StrategyError, match="task type 'chief' is not in its cluster"):
        distribute.parse_tf_config({"TF_CONFIG": json.dumps(
            dict(good, task={"type": "chief", "index": 0}))})


def test_replica_rows_outside_a_strategy_is_everything():
    values = tf.range(6)
    np.testing.assert_array_equal(cross_replica.replica_rows(values), values)
    assert distribute.is_chief(tf.distribute.get_strategy())
