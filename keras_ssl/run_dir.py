"""The run directory: its layout, and the one place that writes to it.

    config.gin            the full gin config the run was started with
    run.json              dataset, image size, batch, steps (what export needs)
    operative_config.gin  the parameters the run actually used
    ckpt-N.*, checkpoint  checkpoints (model, optimizer, global step)
    init/ckpt-0.*         the random initialisation, kept for baselines
    train/                TensorBoard summaries
    export/step_N/        SavedModels (see keras_ssl.export)

In a multi-worker run every process shares `model_dir`, but only the chief
writes it. Saving a checkpoint is a collective (every worker takes part), so
the other workers save into a throw-away directory of their own and delete
it, the pattern of TensorFlow's multi-worker guides.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile

import tensorflow as tf

from keras_ssl.distribute import is_chief, task_of

RUN_FILE = "run.json"
CONFIG_FILE = "config.gin"
OPERATIVE_CONFIG_FILE = "operative_config.gin"
INIT_CHECKPOINT = os.path.join("init", "ckpt-0")
SUMMARY_DIR = "train"
EXPORT_DIR = "export"


def read_run_file(model_dir: str) -> dict:
    """Returns the run description written by `keras_ssl.training.train` into `model_dir`."""
    path = os.path.join(model_dir, RUN_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"{model_dir!r} is not a keras-ssl run directory: {RUN_FILE} is missing. "
            f"Pass the --model_dir a keras-ssl-train run wrote."
        )
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def read_config(model_dir: str) -> str:
    """The gin config the run in `model_dir` started with."""
    with tf.io.gfile.GFile(os.path.join(model_dir, CONFIG_FILE)) as f:
        return f.read()


def latest_step(model_dir: str) -> int:
    """Step of the latest checkpoint in `model_dir` (0 if none)."""
    path = tf.train.latest_checkpoint(model_dir)
    match = re.search(r"ckpt-(\d+)$", path or "")
    return int(match.group(1)) if match else 0


def available_steps(model_dir: str) -> dict[int, str]:
    """`{step: checkpoint path}` of the kept checkpoints, with step 0 = the initialisation."""
    steps = {}
    state = tf.train.get_checkpoint_state(model_dir)
    for path in state.all_model_checkpoint_paths if state else []:
        steps[int(path.rsplit("-", 1)[1])] = path
    init = os.path.join(model_dir, INIT_CHECKPOINT)
    if tf.io.gfile.exists(init + ".index"):
        steps.setdefault(0, init)
    return steps


def default_export_dir(model_dir: str, step: int) -> str:
    """Where the export of `step` goes: `model_dir/export/step_<step>`."""
    return os.path.join(model_dir, EXPORT_DIR, f"step_{step}")


class _ThrowawayCheckpointManager(tf.train.CheckpointManager):
    """Takes part in every save like the chief's manager, then deletes what it wrote."""

    def save(self, *args, **kwargs):
        path = super().save(*args, **kwargs)
        if path is not None:
            tf.io.gfile.rmtree(self.directory)
            tf.io.gfile.makedirs(self.directory)
        return path


class RunDirectory:
    """Writes a run directory from the chief only; other workers write throw-away copies.

    Args:
      path: The run directory (`--model_dir`), shared by all workers.
      strategy: The run's strategy; it tells who is chief.
    """

    def __init__(self, path: str, strategy: tf.distribute.Strategy | None = None):
        self.path = path
        self.is_chief = is_chief(strategy)
        self._scratch = None
        if not self.is_chief:
            task_type, task_id = task_of(strategy)
            self._scratch = tempfile.mkdtemp(prefix=f"keras-ssl-{task_type}{task_id}-")

    def _writable(self, *parts: str) -> str:
        """`path/parts` on the chief, the same place under this worker's scratch elsewhere."""
        return os.path.join(self.path if self.is_chief else self._scratch, *parts)

    def create(self) -> None:
        """Creates the directory (chief only)."""
        if self.is_chief:
            tf.io.gfile.makedirs(self.path)

    def write_text(self, name: str, text: str) -> None:
        """Writes `text` to the file `name` of the run (chief only)."""
        if self.is_chief:
            with tf.io.gfile.GFile(os.path.join(self.path, name), "w") as f:
                f.write(text)

    def write_run_files(self, settings: dict, gin_config: str) -> None:
        """Writes `run.json` and `config.gin` (chief only)."""
        self.write_text(RUN_FILE, json.dumps(settings, indent=2))
        self.write_text(CONFIG_FILE, gin_config)

    def latest_step(self) -> int:
        """Step of the latest checkpoint of the run (read by every worker)."""
        return latest_step(self.path)

    def checkpoint_manager(self, checkpoint, **kwargs) -> tf.train.CheckpointManager:
        """A manager writing `ckpt-N` on the chief and throw-away copies elsewhere."""
        if self.is_chief:
            return tf.train.CheckpointManager(checkpoint, self.path, **kwargs)
        return _ThrowawayCheckpointManager(checkpoint, self._writable("checkpoints"), **kwargs)

    def restore_latest(self, checkpoint: tf.train.Checkpoint) -> int:
        """Restores the run's latest checkpoint into `checkpoint` on every worker; its step."""
        path = tf.train.latest_checkpoint(self.path)
        if path is None:
            return 0
        checkpoint.restore(path).assert_existing_objects_matched()
        return latest_step(self.path)

    def write_init_checkpoint(self, checkpoint: tf.train.Checkpoint) -> None:
        """Writes the step-0 initialisation (every worker takes part; the chief's is kept)."""
        checkpoint.write(self._writable(INIT_CHECKPOINT))
        self._clear_scratch()

    @property
    def summary_dir(self) -> str | None:
        """TensorBoard directory on the chief; None (no summaries) elsewhere."""
        return os.path.join(self.path, SUMMARY_DIR) if self.is_chief else None

    def export_dir(self, step: int) -> str:
        """Where this process writes the export of `step` (scratch on non-chief workers)."""
        if self.is_chief:
            return default_export_dir(self.path, step)
        return self._writable(EXPORT_DIR, f"step_{step}")

    def finish(self) -> None:
        """Removes this worker's scratch directory."""
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    def _clear_scratch(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            os.makedirs(self._scratch, exist_ok=True)
