"""The training loop: a `Method` driven by an Orbit trainer under any tf.distribute strategy.

The run directory and who writes it: `keras_ssl.run_dir`. The input order and
per-example seeds: `keras_ssl.input_pipeline`. The loop itself is flat:

    restore the latest checkpoint (or write the step-0 initialisation)
    while step < train_steps:
        run one loop of `steps_per_loop` steps      (MethodTrainer, one tf.function;
                                                     Method.before_epoch at each epoch's start)
        print the progress line, write summaries    (chief only)
        checkpoint every `checkpoint_interval`, and at once on SIGTERM
    export

A run is a function of its config and seed: the same command gives the same
weights bit for bit on one machine, and a run killed at any point and
restarted ends where an uninterrupted one does (docs/training.md). A
non-finite loss stops the run before anything is saved, so the last
checkpoint on disk is a good one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence

import gin
import keras
import numpy as np
import orbit
import tensorflow as tf

from keras_ssl import config, registry
from keras_ssl.backbones import BackboneInputError
from keras_ssl.building import build_method, make_checkpoint, weights_restored_after
from keras_ssl.datasets import load_training_split
from keras_ssl.export import export_method
from keras_ssl.distribute import check_global_batch, describe, get_strategy, sum_over_workers
from keras_ssl.input_pipeline import distributed_batches, shuffle_order
from keras_ssl.monitor import KnnMonitor, MonitorConfigError, knn_monitor
from keras_ssl.optimizers import build_optimizer, learning_rate_schedule
from keras_ssl.preemption import PREEMPTED_EXIT_CODE, Preempted, PreemptionWatch  # noqa: F401
from keras_ssl.random import find_stateful_random_ops
from keras_ssl.run_dir import OPERATIVE_CONFIG_FILE, RunDirectory

MIXED_PRECISION_POLICIES = ("mixed_float16", "mixed_bfloat16")

# `callback(step, outputs)` at the end of each loop: see `train`'s `loop_end_callbacks`.
LoopEndCallback = Callable[[int, Mapping[str, float]], None]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class TrainingConfigError(ValueError):
    """A training setting that cannot work (a policy, determinism, the loop sizes)."""


class MethodTrainer(orbit.StandardTrainer):
    """Runs `Method.train_step` through `strategy.run`; averages its metrics per loop.

    Args:
      method: The compiled `keras_ssl.Method`.
      dataset: A `tf.data.Dataset` of global batches (split over replicas in
        order) or a distributed dataset (`keras_ssl.input_pipeline`).
      strategy: The strategy the method was built under.
      global_step: The run's step variable.
      metric_names: Names of the metrics `train_step` returns.
      global_batch_size: Images per step over all replicas.
      total_steps: The run's length (for the progress line).
      jit_compile: Compile each replica's step with XLA.
      verbose: Print the progress line at the end of each loop.
      loop_metrics: Optional `step -> dict` of extra figures for the loop's
        outputs and progress line (the kNN monitor), called after the loop.
      loop_end_callbacks: Callables `callback(step, outputs)` called in order at
        the end of each loop (see `train`).
      examples: The training split's decoded examples in stored order, for a
        method with a `before_epoch` hook (with `num_examples`; without them
        the hook is not called).
      num_examples: The split's size N: the batch of step s starts in epoch
        `s * global_batch_size // N`.

    With a method that overrides `Method.before_epoch` (and `examples`), a loop
    is cut at each epoch's first step and the hook runs there (`epoch_starts`).
    """

    def __init__(
        self, method, dataset, strategy, global_step, metric_names, global_batch_size,
        total_steps, *, jit_compile: bool = False, verbose: bool = True, loop_metrics=None,
        loop_end_callbacks: Sequence[LoopEndCallback] = (),
        examples: tf.data.Dataset | None = None, num_examples: int | None = None,
    ):
        self.method = method
        self._epoch_examples = (
            (examples, int(num_examples))
            if examples is not None and num_examples and method.has_epoch_hook else None
        )
        self.strategy = strategy
        self.global_step = global_step
        self._global_batch_size = global_batch_size
        self._total_steps = total_steps
        self._verbose = verbose
        self._loop_metrics = loop_metrics
        self._loop_end_callbacks = tuple(loop_end_callbacks)
        self._replica_step = (
            tf.function(method.train_step, jit_compile=True) if jit_compile else method.train_step
        )
        with strategy.scope():
            self._sums = {
                name: tf.Variable(0.0, trainable=False, name=f"sum_{name}") for name in metric_names
            }
            self._count = tf.Variable(0.0, trainable=False, name="count")
        if isinstance(dataset, tf.data.Dataset):
            dataset = strategy.experimental_distribute_dataset(dataset)
        super().__init__(dataset)

    def train(self, num_steps):
        """Runs `num_steps` steps as one loop; with an epoch hook, calls it at each epoch's start."""
        if self._epoch_examples is None:
            return super().train(num_steps)
        examples, num_examples = self._epoch_examples
        self.train_loop_begin()
        if self._train_loop_fn is None:
            self._train_loop_fn = self.create_train_loop_fn()
        if self._train_iter is None:
            self._train_iter = tf.nest.map_structure(iter, self.train_dataset)
        step = int(self.global_step.numpy())
        end = step + int(num_steps)
        while step < end:
            if epoch_starts(step, self._global_batch_size, num_examples):
                with self.strategy.scope():
                    self.method.before_epoch(
                        step * self._global_batch_size // num_examples, examples)
            segment = end - step
            for later in range(step + 1, end):  # the loop stops before the next epoch's start
                if epoch_starts(later, self._global_batch_size, num_examples):
                    segment = later - step
                    break
            self._train_loop_fn(self._train_iter, tf.constant(segment, tf.int32))
            step += segment
        return self.train_loop_end()

    def train_loop_begin(self):
        for variable in list(self._sums.values()) + [self._count]:
            variable.assign(0.0)
        self._loop_start = (time.perf_counter(), int(self.global_step.numpy()))

    def train_step(self, iterator):
        per_replica = self.strategy.run(self._replica_step, args=(next(iterator),))
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
        if self._loop_metrics is not None:
            outputs.update(self._loop_metrics(step))
        if self._verbose:
            metrics = " | ".join(
                f"{k} {v:.4f}" for k, v in outputs.items()
                if k not in ("images_per_second", "knn_seconds")
            )
            print(
                f"step {step}/{self._total_steps} | {metrics} | {steps_per_second:.2f} steps/s"
                f" | {outputs['images_per_second']:.1f} images/s",
                flush=True,
            )
        for callback in self._loop_end_callbacks:
            callback(step, dict(outputs))
        return outputs


def epoch_starts(step: int, global_batch_size: int, num_examples: int) -> bool:
    """Whether the batch of `step` is the first to start in its epoch (`Method.before_epoch`).

    Step s reads positions `[s * B, (s + 1) * B)` of the example stream
    (`keras_ssl.input_pipeline`), whose epoch e covers `[e * N, (e + 1) * N)`;
    its batch starts in epoch `s * B // N`.

    Example:

    >>> [s for s in range(8) if epoch_starts(s, 4, 10)]
    [0, 3, 5]
    """
    if step == 0:
        return True
    return step * global_batch_size // num_examples > (step - 1) * global_batch_size // num_examples


def example_batch(method, images: tf.data.Dataset, size: int = 2) -> dict:
    """A small batch of the method's inputs (augmented), to create its variables."""
    return method.augment_batch(next(iter(method.make_dataset(images.take(size), size))))


@contextlib.contextmanager
def _dtype_policy(name: str | None):
    """Sets Keras' global dtype policy inside the block (nothing for None)."""
    previous = keras.config.dtype_policy()
    if name:
        keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _check_settings(method_name, mixed_precision, train_steps, steps_per_loop, checkpoint_interval):
    if mixed_precision is not None and mixed_precision not in MIXED_PRECISION_POLICIES:
        raise TrainingConfigError(
            f"Unknown mixed precision policy {mixed_precision!r}; choose one of "
            f"{', '.join(MIXED_PRECISION_POLICIES)} (or none for float32)."
        )
    if mixed_precision and method_name:
        method_cls = registry.METHODS.get(method_name)
        if not getattr(method_cls, "supports_mixed_precision", True):
            raise TrainingConfigError(
                f"Method {method_name!r} cannot train under {mixed_precision}; train it in "
                f"float32 (drop --mixed_precision)."
            )
    for name, value in (("train_steps", train_steps), ("steps_per_loop", steps_per_loop)):
        if value < 1:
            raise TrainingConfigError(f"keras_ssl.train.{name} must be >= 1, got {value}.")
    if checkpoint_interval is not None and checkpoint_interval % steps_per_loop:
        raise TrainingConfigError(
            f"keras_ssl.train.checkpoint_interval ({checkpoint_interval}) must be a multiple "
            f"of steps_per_loop ({steps_per_loop}): checkpoints are written between loops."
        )


def _check_method_setup(method, batch_size: int, image_size: int | None) -> None:
    try:
        method.check_training_setup(batch_size, image_size)
    except ValueError as error:
        raise TrainingConfigError(str(error)) from None


def _check_stateless(method, images: tf.data.Dataset) -> None:
    found = find_stateful_random_ops(method.seeded_preprocess, images.element_spec)
    if found:
        raise TrainingConfigError(
            f"keras_ssl.train.deterministic = True, but the inputs of method "
            f"{method.registry_name!r} (augmentation {method.augmentation_name!r}) are drawn "
            f"with stateful random ops, whose draws depend on thread timing: "
            f"{', '.join(found)}. Draw with keras_ssl.random (uniform, normal, permutation, or "
            f"next_seed() for tf.random.stateless_* / tf.image.stateless_* ops), or set "
            f"keras_ssl.train.deterministic = False to train without bitwise reproducibility."
        )


def _float32_twin(method, batch):
    """A float32 copy of a mixed-precision method, with its weights (for the export)."""
    with _dtype_policy("float32"), weights_restored_after():
        twin = build_method()
    twin.seed = method.seed
    twin.build_from_batch(batch)
    twin.set_weights(method.get_weights())
    return twin


@gin.configurable(module="keras_ssl", denylist=["model_dir", "strategy", "loop_end_callbacks"])
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
    shuffle_buffer: int | None = None,
    shuffle_memory_mb: int = 1024,
    seed: int = 0,
    export: bool = True,
    deterministic: bool = True,
    jit_compile: bool = False,
    mixed_precision: str | None = None,
    augment_on_device: bool = False,
    loop_end_callbacks: Sequence[LoopEndCallback] = (),
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
      batch_size: Global batch size (images before the method's views); a
        multiple of the number of replicas.
      train_steps: Total number of steps of the run.
      steps_per_loop: Steps per loop (one progress line, one summary).
      checkpoint_interval: Steps between checkpoints (default
        `steps_per_loop`; must be a multiple of it).
      max_checkpoints: Checkpoints kept (plus the initial one).
      shuffle_buffer: None (default): each epoch visits the split in a full
        permutation drawn from (seed, epoch); a split that can only be read in
        order (a TFDS split larger than `shuffle_memory_mb`) is permuted in
        windows of 4096 consecutive examples instead, with a warning. An int:
        permute windows of that many consecutive examples (at least the
        split's size: a full permutation; 1 keeps the stored order).
        `keras_ssl.input_pipeline` describes the order.
      shuffle_memory_mb: The most MiB a TFDS split's encoded images may take
        in memory, where they are held so that each epoch can be read in a
        full permutation (Fashion-MNIST's 60,000 training images take 29 MiB,
        CIFAR-10's about 110). Folders need no memory for it: their files are
        read by index.
      seed: Seed of the initialisation, the data order and every draw.
      export: Export a SavedModel of the final step.
      deterministic: Enable TensorFlow's op determinism and refuse inputs
        drawn with stateful random ops, so the same command gives the same
        weights bit for bit (docs/training.md says what it costs).
      jit_compile: Compile each replica's step with XLA.
      mixed_precision: None (float32), `mixed_float16` (with loss scaling)
        or `mixed_bfloat16`. Exports stay float32.
      augment_on_device: Draw each view's augmentation parameters in tf.data
        and apply them to the whole batch in the training step, on the
        accelerator (methods whose inputs are the views: SimCLR, MoCo, NPID).
      loop_end_callbacks: Callables `callback(step, outputs)`, called in order
        at the end of every loop of `steps_per_loop` steps, on every worker:
        `step` is the global step the loop ended at and `outputs` a fresh copy
        of the loop's metrics (`loss`, `regularization_loss`, the method's
        own, `images_per_second`, and the kNN monitor's figures when it ran),
        the figures of the progress line and the summaries. They run before
        that loop's checkpoint; a loop whose loss is not finite stops the run
        before them. For custom logging or tests, e.g. recording each loop's
        loss: `train(model_dir, loop_end_callbacks=[lambda step, outputs:
        losses.append(outputs["loss"])])`. Python only (not a gin binding).

    Returns:
      The metrics of the last loop (empty if the run was already complete).

    Raises:
      Preempted: SIGTERM arrived; a checkpoint of the last finished step was
        written first.

    Example:

    >>> from keras_ssl.config import parse_gin        # doctest: +SKIP
    >>> parse_gin(["gin_configs/quickstart.gin"])     # doctest: +SKIP
    >>> train("/tmp/rotation_run")                    # doctest: +SKIP
    """
    if isinstance(strategy, str):
        strategy = get_strategy(strategy)
    # Everything that can be refused is refused before the run directory exists.
    check_global_batch(strategy, batch_size)
    _check_settings(
        _bound_method_name(), mixed_precision, train_steps, steps_per_loop, checkpoint_interval
    )
    monitor_settings = knn_monitor()
    if monitor_settings and monitor_settings["every_steps"] < 1:
        raise TrainingConfigError(
            f"keras_ssl.knn_monitor.every_steps = {monitor_settings['every_steps']} is not a step "
            f"count; give a positive multiple of keras_ssl.train.steps_per_loop ({steps_per_loop}), "
            f"or None to turn the monitor off."
        )
    if monitor_settings and monitor_settings["every_steps"] % steps_per_loop:
        raise TrainingConfigError(
            f"keras_ssl.knn_monitor.every_steps ({monitor_settings['every_steps']}) must be a "
            f"multiple of keras_ssl.train.steps_per_loop ({steps_per_loop}): the monitor runs "
            f"between loops."
        )
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    run = RunDirectory(model_dir, strategy)
    images, info, access = load_training_split(
        dataset, split, data_dir=data_dir, image_size=image_size,
        memory_bytes=int(shuffle_memory_mb) * 2**20,
    )
    try:
        order = shuffle_order(info.num_examples, shuffle_buffer, access)
    except ValueError as error:
        raise TrainingConfigError(str(error)) from None
    monitor = None
    if monitor_settings:
        try:
            monitor = KnnMonitor(monitor_settings, dataset, data_dir, image_size, seed)
        except MonitorConfigError as error:
            raise TrainingConfigError(str(error)) from None

    # Seeded after the data: preparing a dataset on first use draws from the global
    # generators, and the same command must build the same weights either way.
    keras.utils.set_random_seed(seed)
    resuming = tf.train.latest_checkpoint(model_dir) is not None
    with _dtype_policy(mixed_precision), strategy.scope():
        try:
            with weights_restored_after() if resuming else contextlib.nullcontext():
                method = build_method()
        except ValueError as error:  # a constructor's refusal of a setting or a backbone
            raise TrainingConfigError(str(error)) from None
        method.seed = seed
        method.train_steps = train_steps
        method.augment_on_device = augment_on_device
        _check_method_setup(method, batch_size, image_size)
        if deterministic:
            _check_stateless(method, images)
        try:
            method.adapt(images)
        except ValueError as error:
            raise TrainingConfigError(str(error)) from None
        batch = example_batch(method, images)
        try:
            _, metrics = method.build_from_batch(batch)
        except BackboneInputError as error:
            raise TrainingConfigError(error.message()) from None
        metric_names = ["loss", "regularization_loss", *metrics]
        optimizer = build_optimizer(
            learning_rate_schedule(global_batch_size=batch_size, total_steps=train_steps),
            total_steps=train_steps,
        )
        if mixed_precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        method.compile(optimizer=optimizer)
        optimizer.build(method.trainable_variables)
        global_step = orbit.utils.create_global_step()
    checkpoint = make_checkpoint(method, optimizer, global_step)

    config.refuse_unused_bindings(method)  # every binding took effect (keras_ssl.config)
    run.create()
    start_step = run.restore_latest(checkpoint)
    if start_step == 0:
        run.write_init_checkpoint(checkpoint)
    run.write_run_files(_run_settings(method, info, dict(
        dataset=dataset, split=split, data_dir=data_dir, image_size=image_size,
        batch_size=batch_size, train_steps=train_steps, seed=seed,
        mixed_precision=mixed_precision,
    )), gin.config_str())
    writer = (
        tf.summary.create_file_writer(run.summary_dir) if run.summary_dir
        else tf.summary.create_noop_writer()
    )
    if run.is_chief:
        print(describe(strategy, batch_size), flush=True)
        print(f"data order: {order.description}", flush=True)
        if order.warning:
            print(f"warning: {order.warning}", flush=True)
        if start_step:
            print(f"resuming from the checkpoint of step {start_step}", flush=True)
        if monitor is not None:
            print(f"kNN monitor: every {monitor_settings['every_steps']} steps on "
                  f"{monitor.description} (k={monitor_settings['k']}, "
                  f"tau={monitor_settings['temperature']})", flush=True)
    if monitor is not None and start_step == 0:
        # The random initialisation's figure: the baseline the run has to beat.
        initial = monitor(method.backbone)
        with writer.as_default(step=0):
            tf.summary.scalar("knn_accuracy", initial["knn_accuracy"])
        if run.is_chief:
            print(f"step 0/{train_steps} | knn_accuracy {initial['knn_accuracy']:.4f} "
                  f"(random initialisation)", flush=True)

    manager = run.checkpoint_manager(checkpoint, max_to_keep=max_checkpoints)
    batches = distributed_batches(
        strategy, method, images, info.num_examples, global_batch_size=batch_size, seed=seed,
        shuffle_buffer=shuffle_buffer, start_step=start_step, access=access,
    )

    def monitor_metrics(step):
        if monitor is None or not (monitor.due(step) or step >= train_steps):
            return {}
        return monitor(method.backbone)

    trainer = MethodTrainer(
        method, batches, strategy, global_step, metric_names, batch_size, train_steps,
        jit_compile=jit_compile, verbose=run.is_chief, loop_metrics=monitor_metrics,
        loop_end_callbacks=loop_end_callbacks, examples=images, num_examples=info.num_examples,
    )
    interval = checkpoint_interval or steps_per_loop
    outputs = {}
    step = start_step
    with PreemptionWatch(strategy) as preemption:
        while step < train_steps:
            outputs = trainer.train(tf.constant(min(steps_per_loop, train_steps - step), tf.int32))
            step = int(global_step.numpy())
            with writer.as_default(step=step):
                for name, value in outputs.items():
                    tf.summary.scalar(name, value)
            preempted = preemption.requested()
            if step % interval == 0 or step >= train_steps or preempted:
                manager.save(checkpoint_number=step)
            if preempted:
                writer.flush()
                run.finish()
                raise Preempted(step)
    writer.flush()
    run.write_text(OPERATIVE_CONFIG_FILE, gin.operative_config_str())
    if export and run.is_chief:
        exported = _float32_twin(method, batch) if mixed_precision else method
        export_method(exported, model_dir, step, run.export_dir(step))
    # Workers wait for the chief's export: one leaving early looks like a
    # crashed task to the others' coordination service.
    sum_over_workers(strategy)(0.0)
    run.finish()
    return outputs


def _bound_method_name() -> str | None:
    """The method name bound in gin, or None (checked again when the method is built)."""
    try:
        name = gin.query_parameter("keras_ssl.build_method.method")
    except ValueError:
        return None
    return name if isinstance(name, str) else None


def _run_settings(method, info, settings) -> dict:
    if info.image_size is not None and settings["image_size"] is None:
        settings["image_size"] = int(info.image_size[0])
    settings.update(
        method=method.registry_name,
        backbone=method.backbone_name,
        num_classes=info.num_classes,
    )
    return settings
