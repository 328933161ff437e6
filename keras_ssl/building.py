"""Building a method: from gin for a run, and again from a finished run's files.

Training (`keras_ssl.training`) builds the gin-configured method with
`build_method` and saves it under the `make_checkpoint` layout; the export
(`keras_ssl.export`) rebuilds it from the run's config.gin and restores a
checkpoint of that layout with `restore_method`. Both sit here so neither of
those modules imports the other to rebuild a method.

`restore_method` parses the run's config without importing the training loop:
bindings of the configurables only training reads (`TRAINING_CONFIGURABLES`)
are skipped when the process has not imported their modules, and every other
binding is checked as `keras_ssl.config.parse_gin` checks it.
"""

from __future__ import annotations

import contextlib
import contextvars
import os

import gin
import tensorflow as tf

from keras_ssl import config, registry
from keras_ssl.backbones import build_backbone
from keras_ssl.run_dir import CONFIG_FILE, available_steps

__all__ = ["TRAINING_CONFIGURABLES", "build_method", "make_checkpoint", "restore_method",
           "weights_restored_after"]

# The configurables of a run's config that building its method never reads.
TRAINING_CONFIGURABLES = tuple(name for name, module in config.FRAMEWORK_CONFIGURABLES.items()
                               if module != __name__)


# True while the method being built gets every weight from a checkpoint next.
_RESTORING = contextvars.ContextVar("keras_ssl_restoring", default=False)


@contextlib.contextmanager
def weights_restored_after():
    """Within it, `build_method` skips `init_from`: the caller restores every weight next.

    A resumed run, a run's export and a float32 twin of a mixed-precision
    method read their weights from a checkpoint or the method, so `init_from`'s
    file is not read again (and need not exist any more).
    """
    token = _RESTORING.set(True)
    try:
        yield
    finally:
        _RESTORING.reset(token)


@gin.configurable(module="keras_ssl")
def build_method(method: str = gin.REQUIRED, backbone: str = "resnet_v2",
                 init_from: str | None = None, unsafe_keras: bool = False):
    """Builds the registered method `method` on the registered `backbone`.

    Gin bindings of both apply (`rotation.num_rotations`, `resnet_v2.depth`).

    Args:
      method: A name from the `keras_ssl.methods` registry.
      backbone: A name from the `keras_ssl.backbones` registry.
      init_from: Start the backbone from the weights at this path (a
        `.keras` file, a keras-hub preset directory, a run directory or a
        checkpoint prefix; `keras_ssl.init_from`), before the method copies
        it into momentum encoders. None: random initialisation.
      unsafe_keras: Let `init_from` load a `.keras` file that needs
        deserialised code (Keras' safe mode off); only for files you trust.

    Returns:
      The `keras_ssl.Method`, with `registry_name` and `backbone_name` set.

    Example:

    >>> method = build_method(method="rotation")  # doctest: +SKIP
    """
    method_cls = registry.METHODS.get(method)
    if unsafe_keras and not init_from:
        raise ValueError("keras_ssl.build_method.unsafe_keras = True does nothing without "
                         "keras_ssl.build_method.init_from; remove it.")
    network = build_backbone(backbone)
    if init_from and not _RESTORING.get():
        from keras_ssl.init_from import initialize_backbone

        print(initialize_backbone(network, init_from, unsafe_keras=unsafe_keras), flush=True)
    instance = method_cls(network)
    instance.registry_name = method
    instance.backbone_name = backbone
    return instance


def make_checkpoint(method, optimizer=None, global_step=None) -> tf.train.Checkpoint:
    """The checkpoint layout of every run: what training saves and `restore_method` reads.

    Args:
      method: The `keras_ssl.Method`.
      optimizer, global_step: Saved too during training; left out when only
        the weights are restored.

    Returns:
      The `tf.train.Checkpoint`.
    """
    items = {"method": method}
    if optimizer is not None:
        items["optimizer"] = optimizer
    if global_step is not None:
        items["global_step"] = global_step
    return tf.train.Checkpoint(**items)


def _skippable_selectors() -> list[str]:
    """`TRAINING_CONFIGURABLES` under both names gin may write: full and short."""
    return [name for full in TRAINING_CONFIGURABLES for name in (full, full.rsplit(".", 1)[-1])]


def restore_method(model_dir: str, step: int | None = None) -> tuple[object, int]:
    """Rebuilds the method of the run in `model_dir` and restores one of its checkpoints.

    Args:
      model_dir: A run directory written by `keras_ssl.training.train`.
      step: Step of the checkpoint (default: the latest). Step 0 is the
        random initialisation every run keeps.

    Returns:
      `(method, step)`: the method with the checkpoint's weights, and the
      step restored.

    Raises:
      FileNotFoundError: No checkpoint for that step; the message lists the
        steps available.
      keras_ssl.config.ConfigError: The run's config no longer parses (a
        plugin it names is not installed).

    Example:

    >>> method, step = restore_method("runs/quickstart")  # doctest: +SKIP
    """
    available = available_steps(model_dir)
    if step is None:
        if not available:
            raise FileNotFoundError(f"No checkpoint in {model_dir!r}.")
        step = max(available)
    if step not in available:
        raise FileNotFoundError(
            f"No checkpoint for step {step} in {model_dir!r}; available steps: "
            f"{sorted(available) or 'none'}."
        )
    config.parse_gin([os.path.join(model_dir, CONFIG_FILE)],
                     skip_unknown=_skippable_selectors())
    with weights_restored_after():
        method = build_method()
    make_checkpoint(method).restore(available[step]).expect_partial()
    return method, step
