"""`tf.distribute` strategies by name, workers and batches split over replicas.

The same `Method.train_step` runs under each strategy through Orbit
(`keras_ssl.training`). What a method needs to know about replicas (which
one a step runs on, its rows of the global batch) is in
`keras_ssl.cross_replica`.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker_mirrored", "tpu")


class StrategyError(ValueError):
    """A strategy cannot be built as asked (bad TF_CONFIG, CPU replicas beside GPUs, ...)."""


def configure_cpu_replicas(count: int) -> None:
    """Splits the CPU into `count` logical devices, so `mirrored` runs `count` replicas.

    Must run before TensorFlow initialises its devices (before any op runs),
    which the binaries guarantee by calling it first.

    Args:
      count: Number of logical CPU devices (>= 1).

    Raises:
      StrategyError: `count` < 1, GPUs are present (their replicas are the
        GPUs), or TensorFlow has already initialised its devices.
    """
    if count < 1:
        raise StrategyError(f"--cpu_replicas must be >= 1, got {count}.")
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        raise StrategyError(
            f"--cpu_replicas={count} splits the CPU into replicas, but {len(gpus)} GPU(s) are "
            f"present and `mirrored` already runs one replica per GPU. Drop --cpu_replicas, "
            f"or hide the GPUs with CUDA_VISIBLE_DEVICES=-1 to train on CPU replicas."
        )
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * count
        )
    except RuntimeError as e:
        raise StrategyError(
            "--cpu_replicas must be set before TensorFlow runs any op; call "
            "keras_ssl.distribute.configure_cpu_replicas first thing in the process."
        ) from e


def parse_tf_config(environ=None) -> dict:
    """Reads and checks the `TF_CONFIG` that `multi_worker_mirrored` needs.

    Args:
      environ: The environment (default `os.environ`).

    Returns:
      The parsed `{"cluster": {...}, "task": {"type", "index"}}`.

    Raises:
      StrategyError: Missing, not JSON, or inconsistent, with the fix.
    """
    environ = os.environ if environ is None else environ
    example = (
        '\'{"cluster": {"worker": ["host0:port", "host1:port"]}, '
        '"task": {"type": "worker", "index": 0}}\''
    )
    raw = environ.get("TF_CONFIG")
    if not raw:
        raise StrategyError(
            "--strategy=multi_worker_mirrored needs the TF_CONFIG environment variable on every "
            f"worker, e.g. TF_CONFIG={example} (index 1 on the second worker)."
        )
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise StrategyError(f"TF_CONFIG is not valid JSON ({e}); expected e.g. {example}.") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster:
        raise StrategyError(f"TF_CONFIG has no 'cluster' of addresses; expected e.g. {example}.")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise StrategyError(
            f"TF_CONFIG has no 'task' with 'type' and 'index' (this worker's place in the "
            f"cluster); expected e.g. {example}."
        )
    addresses = cluster.get(task["type"])
    if not isinstance(addresses, list):
        raise StrategyError(
            f"TF_CONFIG's task type {task['type']!r} is not in its cluster "
            f"({', '.join(cluster)}); set task.type to one of those."
        )
    index = task["index"]
    if not isinstance(index, int) or not 0 <= index < len(addresses):
        raise StrategyError(
            f"TF_CONFIG's task index {index!r} is out of range: the cluster has "
            f"{len(addresses)} {task['type']} address(es), so the index must be 0.."
            f"{len(addresses) - 1}."
        )
    return config


def get_strategy(
    name: str = "default", tpu_address: str | None = None, cpu_replicas: int | None = None
) -> tf.distribute.Strategy:
    """Returns the strategy called `name`.

    Args:
      name: `default` (one device), `mirrored` (all local GPUs, or the CPU
        split by `configure_cpu_replicas`), `multi_worker_mirrored` (workers
        described by `TF_CONFIG`) or `tpu`.
      tpu_address: TPU name or address for `tpu` (`""` for a local TPU VM).
      cpu_replicas: With `mirrored`: the number of logical CPU devices to
        mirror over (they must have been configured by `configure_cpu_replicas`).

    Returns:
      The strategy.

    Raises:
      StrategyError: For an unknown name, `cpu_replicas` with another
        strategy, or a bad `TF_CONFIG`.
    """
    if name not in STRATEGIES:
        raise StrategyError(f"Unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}.")
    if cpu_replicas and name != "mirrored":
        raise StrategyError(
            f"--cpu_replicas works with --strategy=mirrored only (got --strategy={name})."
        )
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if cpu_replicas:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
            if len(devices) < cpu_replicas:
                raise StrategyError(
                    f"{cpu_replicas} CPU replicas asked for but {len(devices)} logical CPU "
                    f"device(s) exist; call configure_cpu_replicas({cpu_replicas}) before any "
                    f"TensorFlow op runs."
                )
            return tf.distribute.MirroredStrategy(devices[:cpu_replicas])
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker_mirrored":
        parse_tf_config()
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING
        )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address or "")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def task_of(strategy: tf.distribute.Strategy | None) -> tuple[str | None, int]:
    """`(task type, task index)` of this process; `(None, 0)` for a single process."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return None, 0
    return resolver.task_type, int(resolver.task_id or 0)


def is_chief(strategy: tf.distribute.Strategy | None) -> bool:
    """Whether this process writes the run directory: the chief, or worker 0 without one."""
    task_type, task_id = task_of(strategy)
    if task_type is None or task_type == "chief":
        return True
    if task_type != "worker" or task_id != 0:
        return False
    return "chief" not in strategy.cluster_resolver.cluster_spec().as_dict()


def num_workers(strategy: tf.distribute.Strategy | None) -> int:
    """Number of processes taking part in each step (1 without a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or isinstance(strategy, tf.distribute.TPUStrategy):
        return 1
    spec = resolver.cluster_spec().as_dict()
    return max(1, sum(len(spec.get(kind, [])) for kind in ("chief", "worker")))


def describe(strategy: tf.distribute.Strategy, global_batch_size: int) -> str:
    """One line: the strategy, its replicas and workers, and the per-replica batch."""
    replicas = strategy.num_replicas_in_sync
    try:
        devices = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy: TensorFlow's own device placement
        devices = ["/gpu:0"] if tf.config.list_logical_devices("GPU") else ["/cpu:0"]
    kinds = sorted({tf.DeviceSpec.from_string(d).device_type or "CPU" for d in devices}) or ["CPU"]
    task_type, task_id = task_of(strategy)
    where = f", {num_workers(strategy)} workers, this is {task_type} {task_id}" if task_type else ""
    return (
        f"strategy {type(strategy).__name__}: {replicas} replica(s) on "
        f"{'/'.join(kinds)}{where}; global batch {global_batch_size}, "
        f"{global_batch_size // max(replicas, 1)} per replica"
    )


def check_global_batch(strategy: tf.distribute.Strategy, global_batch_size: int) -> None:
    """Raises `StrategyError` unless the global batch splits evenly over the replicas."""
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        lower = global_batch_size - global_batch_size % replicas
        raise StrategyError(
            f"The global batch of {global_batch_size} does not divide over {replicas} replicas; "
            f"set keras_ssl.train.batch_size to a multiple of {replicas} (e.g. {lower or replicas} "
            f"or {lower + replicas})."
        )


def sum_over_workers(strategy):
    """`value -> sum of value over all workers`, a collective that is also a barrier."""
    if num_workers(strategy) == 1:
        return lambda value: value

    @tf.function
    def total(value):
        per_replica = strategy.run(tf.identity, args=(value,))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return lambda value: float(total(tf.constant(value, tf.float32)))
