"""Shared by the tests that drive keras-ssl-train as a process: commands, waiting, comparing."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

from tests.helpers import REPO

from tests.helpers.tiny_run import tiny_run_bindings, tiny_shapes_name


def train_command(model_dir, bindings, *flags):
    """`keras-ssl-train` (as `python -m keras_ssl.cli.train`) with gin `bindings` and extra `flags`."""
    command = [sys.executable, "-m", "keras_ssl.cli.train", f"--model_dir={model_dir}", *flags]
    return command + [f"--gin_bindings={b}" for b in bindings]


def training_env(**extra):
    """The environment of a training process: no GPU, quiet TensorFlow, unbuffered output."""
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1",
                PYTHONUNBUFFERED="1", **extra)


def run_bindings(data_dir, steps=8, **extra):
    """A tiny Rotation run with synchronized batch norm (so replica counts compare)."""
    return tiny_run_bindings(data_dir, tiny_shapes_name(), steps=steps, **{
        "resnet_v2.synchronized_bn": True, **extra,
    })


def run_training(model_dir, bindings, *flags, env=None, timeout=300):
    """Runs the binary to the end; returns the CompletedProcess (asserting success)."""
    result = subprocess.run(
        train_command(model_dir, bindings, *flags), capture_output=True, text=True,
        env=env or training_env(), cwd=REPO, timeout=timeout,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def start_training(model_dir, bindings, *flags, env=None):
    """Starts the binary; its stdout and stderr come merged through `.stdout`."""
    return subprocess.Popen(
        train_command(model_dir, bindings, *flags), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, env=env or training_env(), cwd=REPO, text=True,
    )


def signal_at_step(process, step, signum, timeout=240):
    """Sends `signum` once `process` prints the progress line of `step`; returns lines seen."""
    seen = []
    deadline = time.time() + timeout
    for line in process.stdout:
        seen.append(line)
        if line.startswith(f"step {step}/"):
            process.send_signal(signum)
            return seen
        if time.time() > deadline:
            break
    process.kill()
    raise AssertionError(f"no progress line for step {step}:\n{''.join(seen)}")


def progress_steps(output):
    """The steps of the progress lines in `output`."""
    return [int(line.split()[1].split("/")[0]) for line in output.splitlines()
            if line.startswith("step ")]


def checkpoint_steps(model_dir):
    """Steps of the checkpoints kept in `model_dir`."""
    state = tf.train.get_checkpoint_state(model_dir)
    return sorted(int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths)


def checkpoint_values(path):
    """`{name: value}` of every saved variable but the save counter."""
    reader = tf.train.load_checkpoint(path)
    return {name: np.asarray(reader.get_tensor(name))
            for name in reader.get_variable_to_shape_map() if "save_counter" not in name}


def checkpoint_difference(path_a, path_b):
    """Largest absolute difference between two checkpoints' numeric variables (same names)."""
    a, b = checkpoint_values(path_a), checkpoint_values(path_b)
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]), initial=0.0))
               for k in a if a[k].dtype.kind in "fiu")


def free_ports(count):
    """`count` TCP ports on 127.0.0.1 that were free a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def kill(*processes):
    """SIGKILLs whatever of `processes` still runs and reaps them."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
