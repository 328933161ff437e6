"""`tf.distribute` strategies by name, for the `--strategy` flag.

The same `Method.train_step` runs under each of them through Orbit.
"""

from __future__ import annotations

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker_mirrored", "tpu")


def get_strategy(name: str = "default", tpu_address: str | None = None) -> tf.distribute.Strategy:
    """Returns the strategy called `name`.

    Args:
      name: `default` (one device), `mirrored` (all local GPUs, or CPU),
        `multi_worker_mirrored` (workers described by the `TF_CONFIG`
        environment variable) or `tpu`.
      tpu_address: TPU name or address for `tpu` (`""` for a local TPU VM).

    Returns:
      The strategy.

    Raises:
      ValueError: For an unknown name.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker_mirrored":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"Unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}.")
