"""`keras-ssl-train`: trains a method configured by gin files and bindings.

Example:

    keras-ssl-train --gin_file=gin_configs/quickstart.gin \\
        --gin_bindings="keras_ssl.train.train_steps = 200" \\
        --model_dir=/tmp/rotation --strategy=default
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from keras_ssl.distribute import STRATEGIES, get_strategy

_GIN_FILE = flags.DEFINE_multi_string("gin_file", [], "gin config file (repeatable).")
_GIN_BINDINGS = flags.DEFINE_multi_string(
    "gin_bindings", [], "gin binding such as 'resnet_v2.depth = 18' (repeatable)."
)
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Run directory.", required=True)
_STRATEGY = flags.DEFINE_enum("strategy", "default", STRATEGIES, "tf.distribute strategy.")
_TPU = flags.DEFINE_string("tpu", None, "TPU name or address for --strategy=tpu.")


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        # TensorFlow's INFO logs drown the progress lines; --verbosity=0 restores them.
        logging.set_verbosity(logging.WARNING)
    from keras_ssl import config, training

    from keras_ssl.registry import PluginError

    try:
        config.parse_gin(_GIN_FILE.value, _GIN_BINDINGS.value)
        strategy = get_strategy(_STRATEGY.value, _TPU.value)
        training.train(_MODEL_DIR.value, strategy=strategy)
    except (config.ConfigError, PluginError, FileNotFoundError, training.NonFiniteLossError) as e:
        sys.exit(f"keras-ssl-train: {e}")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
