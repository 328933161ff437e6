"""`keras-ssl-train`: trains a method configured by gin files and bindings.

Example:

    keras-ssl-train --gin_file=gin_configs/quickstart.gin \\
        --gin_bindings="keras_ssl.train.train_steps = 200" \\
        --model_dir=/tmp/rotation --strategy=mirrored --cpu_replicas=2

It prints the strategy, its replica count and the per-replica batch, then a
progress line per loop (on the chief only in a multi-worker run). SIGTERM
makes it write a checkpoint after the current loop and exit with status 143;
the same command resumes the run.
"""

from __future__ import annotations

import sys

from absl import flags

from keras_ssl.cli_errors import run_binary
from keras_ssl.distribute import STRATEGIES

_GIN_FILE = flags.DEFINE_multi_string("gin_file", [], "gin config file (repeatable).")
_GIN_BINDINGS = flags.DEFINE_multi_string(
    "gin_bindings", [], "gin binding such as 'resnet_v2.depth = 18' (repeatable)."
)
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Run directory.", required=True)
_STRATEGY = flags.DEFINE_enum("strategy", "default", STRATEGIES, "tf.distribute strategy.")
_TPU = flags.DEFINE_string("tpu", None, "TPU name or address for --strategy=tpu.")
_CPU_REPLICAS = flags.DEFINE_integer(
    "cpu_replicas", None,
    "With --strategy=mirrored on a machine without GPUs: split the CPU into this many replicas.",
)
_MIXED_PRECISION = flags.DEFINE_enum(
    "mixed_precision", None, ["mixed_float16", "mixed_bfloat16"],
    "Keras dtype policy (shorthand for the binding keras_ssl.train.mixed_precision).",
)


def main(argv):
    """Trains the configured run in `--model_dir` (absl main).

    Args:
      argv: Positional arguments left by absl (none are used).
    """
    del argv
    import tensorflow as tf

    from keras_ssl import config, distribute, training

    bindings = list(_GIN_BINDINGS.value)
    if _MIXED_PRECISION.value:
        bindings.append(f"keras_ssl.train.mixed_precision = '{_MIXED_PRECISION.value}'")
    if _CPU_REPLICAS.value:
        # Before anything else touches TensorFlow's devices.
        distribute.configure_cpu_replicas(_CPU_REPLICAS.value)
    config.parse_gin(_GIN_FILE.value, bindings)
    strategy = distribute.get_strategy(_STRATEGY.value, _TPU.value, _CPU_REPLICAS.value)
    try:
        training.train(_MODEL_DIR.value, strategy=strategy)
    except training.Preempted as e:
        print(f"keras-ssl-train: {e}", file=sys.stderr, flush=True)
        sys.exit(training.PREEMPTED_EXIT_CODE)
    except tf.errors.UnimplementedError as e:
        if "determinis" not in e.message.lower():
            raise
        sys.exit(
            f"keras-ssl-train: {e.message.strip()} -- this op has no deterministic kernel on "
            f"this device; set keras_ssl.train.deterministic = False to train without "
            f"bitwise reproducibility."
        )


def run():
    """Console-script entry point of `keras-ssl-train`."""
    from keras_ssl import distribute, training

    run_binary("keras-ssl-train", main, extra_errors=(
        training.NonFiniteLossError, training.TrainingConfigError, distribute.StrategyError,
    ))


if __name__ == "__main__":
    run()
