"""A method's tiny keras-ssl-train run in process, and the checks every such run passes.

The per-family tests (tests/methods/, the patch exports in tests/core/) train
their method for a few steps on the tiny synthetic_shapes with
`tiny_train_run`; `check_method_run` holds what each of them asserts about
such a run: finite losses in every loop, the method's own metric, the export's
metadata and its forward pass.
"""

import collections
import os

from tests.helpers.tiny_run import tiny_run_bindings, tiny_shapes_name

TinyRun = collections.namedtuple("TinyRun", "losses outputs model_dir export metadata")
TinyRun.__doc__ = """A finished tiny run: `losses` (one per loop), `outputs` (the last loop's
metrics), `model_dir`, and `export` and `metadata` (None when it did not export)."""


def tiny_train_run(data_dir, model_dir, method, *, steps=4, export=True, **bindings):
    """Trains `method` with `keras_ssl.training.train` on the tiny synthetic_shapes.

    Args:
      data_dir: The `data_dir` fixture.
      model_dir: The run directory.
      method: The method's registry name.
      steps: Training steps (in loops of 2 unless `bindings` say otherwise).
      export: Export the last step.
      **bindings: gin bindings over `tiny_run_bindings`'s.

    Returns:
      A `TinyRun`; each loop's loss comes through `train`'s `loop_end_callbacks`.
    """
    import json

    from keras_ssl import config, training

    config.parse_gin(bindings=tiny_run_bindings(
        data_dir, tiny_shapes_name(), steps=steps,
        **{"keras_ssl.build_method.method": repr(method), **bindings}))
    losses = []
    outputs = training.train(model_dir, export=export, loop_end_callbacks=[
        lambda step, loop_outputs: losses.append(loop_outputs["loss"])])
    if not export:
        return TinyRun(losses, outputs, model_dir, None, None)
    path = os.path.join(model_dir, "export", f"step_{steps}")
    with open(os.path.join(path, "assets", "keras_ssl.json")) as f:
        metadata = json.load(f)
    return TinyRun(losses, outputs, model_dir, path, metadata)


def check_method_run(run, method, metric, *, batch=2, image_size=16, pre_logits=128):
    """Asserts what a tiny run of an image-input `method` gives.

    Args:
      run: The method's `TinyRun`, exported.
      method: The method's registry name, recorded in the export.
      metric: A metric of the method's own among the outputs.
      batch: Images of the forward pass through the export.
      image_size: Their side.
      pre_logits: The width of the backbone's `pre_logits`.
    """
    import numpy as np
    import tensorflow as tf

    assert np.isfinite(run.losses).all() and metric in run.outputs
    assert run.metadata["method"] == method and run.metadata["input_form"] == "image"
    images = tf.zeros([batch, image_size, image_size, 3])
    assert tf.saved_model.load(run.export)(images).shape == (batch, pre_logits)


def build_configured_method(config, bindings=()):
    """Builds the method of `gin_configs/<config>` and runs its setup check on the config's batch.

    Args:
      config: A method config under gin_configs/, e.g. `"pirl/synthetic_shapes.gin"`; its
        folder names the method.
      bindings: gin bindings over the file's (narrow widths, so it builds in a test).

    Returns:
      The method, as `keras_ssl.building.build_method` builds it.
    """
    import gin

    from keras_ssl import building, config as keras_ssl_config
    from keras_ssl import training  # noqa: F401  registers keras_ssl.train, which the configs bind
    from tests.helpers import REPO

    keras_ssl_config.parse_gin([os.path.join(REPO, "gin_configs", config)], list(bindings))
    method = building.build_method()
    assert method.registry_name == config.split("/")[0]
    method.check_training_setup(gin.query_parameter("keras_ssl.train.batch_size"),
                                gin.query_parameter("keras_ssl.train.image_size"))
    return method
