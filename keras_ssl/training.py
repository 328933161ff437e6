"""The training loop: a `Method` driven by Orbit under any tf.distribute strategy.

One run lives in `model_dir`:

    config.gin            the full gin config the run was started with
    run.json              dataset, image size, batch, steps (what export needs)
    operative_config.gin  the parameters the run actually used
    ckpt-N.*, checkpoint  checkpoints (model, optimizer, global step)
    init/ckpt-0.*         the random initialisation, kept for baselines
    train/                TensorBoard summaries
    export/step_N/        SavedModels (see keras_ssl.export)

A killed run restarts from its latest checkpoint without redoing steps. A
non-finite loss stops the run before anything is saved, so the last
checkpoint on disk is a good one.
"""

from __future__ import annotations

import json
import os
import re
import time

import gin
import keras
import numpy as np
import orbit
import tensorflow as tf

from keras_ssl import registry
from keras_ssl.backbones import build_backbone
from keras_ssl.datasets import load_dataset
from keras_ssl.distribute import get_strategy
from keras_ssl.optimizers import build_optimizer, learning_rate_schedule

RUN_FILE = "run.json"
CONFIG_FILE = "config.gin"
OPERATIVE_CONFIG_FILE = "operative_config.gin"
INIT_CHECKPOINT = os.path.join("init", "ckpt-0")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@gin.configurable(module="keras_ssl")
def build_method(method: str = gin.REQUIRED, backbone: str = "resnet_v2"):
    """Builds the registered method `method` on the registered `backbone`.

    Gin bindings of both apply (`rotation.num_rotations`, `resnet_v2.depth`).

    Args:
      method: A name from the `keras_ssl.methods` registry.
      backbone: A name from the `keras_ssl.backbones` registry.

    Returns:
      The `keras_ssl.Method`.
    """
    method_cls = registry.METHODS.get(method)
    net = build_backbone(backbone)
    instance = method_cls(net)
    instance.registry_name = method
    instance.backbone_name = backbone
    return instance


class MethodTrainer(orbit.StandardTrainer):
    """Runs `Method.train_step` through `strategy.run`; averages its metrics per loop."""

    def __init__(self, method, dataset, strategy, global_step, metric_names, global_batch_size, total_steps):
        self.method = method
        self.strategy = strategy
        self.global_step = global_step
        self._global_batch_size = global_batch_size
        self._total_steps = total_steps
        with strategy.scope():
            self._sums = {
                name: tf.Variable(0.0, trainable=False, name=f"sum_{name}") for name in metric_names
            }
            self._count = tf.Variable(0.0, trainable=False, name="count")
        super().__init__(strategy.experimental_distribute_dataset(dataset))

    def train_loop_begin(self):
        for variable in list(self._sums.values()) + [self._count]:
            variable.assign(0.0)
        self._loop_start = (time.perf_counter(), int(self.global_step.numpy()))

    def train_step(self, iterator):
        per_replica = self.strategy.run(self.method.train_step, args=(next(iterator),))
        for name, value in per_replica.items():
            mean = self.strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
            self._sums[name].assign_add(tf.cast(mean, tf.float32))
        self._count.assign_add(1.0)
        self.global_step.assign_add(1)

    def train_loop_end(self):
        count = max(float(self._count.numpy()), 1.0)
        outputs = {name: float(v.numpy()) / count for name, v in self._sums.items()}
        start_time, start_step = self._loop_start
        elapsed = max(time.perf_counter() - start_time, 1e-9)
        step = int(self.global_step.numpy())
        steps_per_second = (step - start_step) / elapsed
        if not np.isfinite(outputs["loss"]):
            raise NonFiniteLossError(
                f"The training loss became {outputs['loss']} between steps {start_step} "
                f"and {step}. The run stopped before saving, so the last checkpoint "
                f"in the model_dir is intact and a restart resumes from it. Lower "
                f"the learning rate (keras_ssl.learning_rate_schedule."
                f"base_learning_rate), add warm-up steps, or check the input data."
            )
        outputs["images_per_second"] = steps_per_second * self._global_batch_size
        metrics = " | ".join(f"{k} {v:.4f}" for k, v in outputs.items() if k != "images_per_second")
        print(
            f"step {step}/{self._total_steps} | {metrics} | {steps_per_second:.2f} steps/s"
            f" | {outputs['images_per_second']:.1f} images/s",
            flush=True,
        )
        return outputs


def _latest_step(model_dir: str) -> int:
    path = tf.train.latest_checkpoint(model_dir)
    match = re.search(r"ckpt-(\d+)$", path or "")
    return int(match.group(1)) if match else 0


def read_run_file(model_dir: str) -> dict:
    """Returns the run description written by `train` into `model_dir`."""
    path = os.path.join(model_dir, RUN_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{model_dir!r} is not a keras-ssl run directory: {RUN_FILE} is missing. "
            f"Pass the --model_dir a keras-ssl-train run wrote."
        )
    with open(path) as f:
        return json.load(f)


def make_checkpoint(method, optimizer=None, global_step=None) -> tf.train.Checkpoint:
    """The checkpoint layout shared by training and export."""
    items = {"method": method}
    if optimizer is not None:
        items["optimizer"] = optimizer
    if global_step is not None:
        items["global_step"] = global_step
    return tf.train.Checkpoint(**items)


def example_batch(method, images: tf.data.Dataset, size: int = 2) -> dict:
    """A small batch of the method's inputs, to create its variables."""
    return next(iter(method.make_dataset(images.take(size), size)))


@gin.configurable(module="keras_ssl", denylist=["model_dir", "strategy"])
def train(
    model_dir: str,
    *,
    strategy="default",
    dataset: str = "synthetic_shapes",
    split: str = "train",
    data_dir: str | None = None,
    image_size: int | None = 32,
    batch_size: int = 64,
    train_steps: int = 1000,
    steps_per_loop: int = 50,
    checkpoint_interval: int | None = None,
    max_checkpoints: int = 3,
    shuffle_buffer: int = 4096,
    seed: int = 0,
    export: bool = True,
) -> dict:
    """Trains the gin-configured method (see `build_method`) in `model_dir`.

    Args:
      model_dir: Directory of the run (checkpoints, summaries, exports).
        Resumes from its latest checkpoint if there is one.
      strategy: A `tf.distribute.Strategy` or a name for
        `keras_ssl.distribute.get_strategy`.
      dataset: Dataset name (see `keras_ssl.datasets`).
      split: Split to train on.
      data_dir: TFDS data directory.
      image_size: Square size images are resized to (None keeps them).
      batch_size: Global batch size (images before the method's views).
      train_steps: Total number of steps of the run.
      steps_per_loop: Steps per Orbit loop (one progress line, one summary).
      checkpoint_interval: Steps between checkpoints (default
        `steps_per_loop`; must be a multiple of it).
      max_checkpoints: Checkpoints kept (plus the initial one).
      shuffle_buffer: Examples in the shuffle buffer.
      seed: Seed of the initialisation and the data order.
      export: Export a SavedModel of the final step.

    Returns:
      The metrics of the last loop (empty if the run was already complete).

    Example:

    >>> from keras_ssl.config import parse_gin        # doctest: +SKIP
    >>> parse_gin(["gin_configs/quickstart.gin"])     # doctest: +SKIP
    >>> train("/tmp/rotation_run")                    # doctest: +SKIP
    """
    if isinstance(strategy, str):
        strategy = get_strategy(strategy)
    tf.io.gfile.makedirs(model_dir)
    start_step = _latest_step(model_dir)
    keras.utils.set_random_seed(seed)

    images, info = load_dataset(dataset, split, data_dir=data_dir, image_size=image_size, seed=seed)

    with strategy.scope():
        method = build_method()
        _, metrics = method.compute_pretext_loss(example_batch(method, images), training=False)
        metric_names = ["loss", "regularization_loss", *metrics]
        optimizer = build_optimizer(
            learning_rate_schedule(global_batch_size=batch_size, total_steps=train_steps)
        )
        method.compile(optimizer=optimizer)
        optimizer.build(method.trainable_variables)
        global_step = orbit.utils.create_global_step()
    checkpoint = make_checkpoint(method, optimizer, global_step)
    manager = tf.train.CheckpointManager(
        checkpoint,
        model_dir,
        max_to_keep=max_checkpoints,
        step_counter=global_step,
        checkpoint_interval=checkpoint_interval or steps_per_loop,
    )
    if start_step == 0 and manager.latest_checkpoint is None:
        checkpoint.write(os.path.join(model_dir, INIT_CHECKPOINT))

    _write_run_files(model_dir, method, info, dict(
        dataset=dataset, split=split, data_dir=data_dir, image_size=image_size,
        batch_size=batch_size, train_steps=train_steps, seed=seed,
    ))

    # A resumed run reshuffles with another seed rather than replaying the
    # examples it already saw at the start.
    shuffled = images.shuffle(shuffle_buffer, seed=seed + start_step).repeat()
    trainer = MethodTrainer(
        method, method.make_dataset(shuffled, batch_size), strategy, global_step,
        metric_names, batch_size, train_steps,
    )
    controller = orbit.Controller(
        strategy=strategy,
        trainer=trainer,
        global_step=global_step,
        steps_per_loop=steps_per_loop,
        checkpoint_manager=manager,
        summary_dir=os.path.join(model_dir, "train"),
    )
    outputs = {}

    def _keep(output):
        outputs.update(output)

    controller.train_actions = (_keep,)
    controller.train(steps=train_steps)
    with tf.io.gfile.GFile(os.path.join(model_dir, OPERATIVE_CONFIG_FILE), "w") as f:
        f.write(gin.operative_config_str())
    if export:
        from keras_ssl.export import export_method

        export_method(method, model_dir, int(global_step.numpy()))
    return outputs


def _write_run_files(model_dir, method, info, settings) -> None:
    if info.image_size is not None and settings["image_size"] is None:
        settings["image_size"] = int(info.image_size[0])
    settings.update(
        method=method.registry_name,
        backbone=method.backbone_name,
        num_classes=info.num_classes,
    )
    with tf.io.gfile.GFile(os.path.join(model_dir, RUN_FILE), "w") as f:
        json.dump(settings, f, indent=2)
    with tf.io.gfile.GFile(os.path.join(model_dir, CONFIG_FILE), "w") as f:
        f.write(gin.config_str())
