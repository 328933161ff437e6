"""The backbone contract: what every registered backbone family must do, on tiny shapes.

`check_backbone(family, **settings)` builds the family with `settings` (its
tiny arguments) and checks, raising `AssertionError` at the first failure:

- the end-points: what `endpoint_names` says, in that order, `pre_logits`
  `[batch, D]` with `output_dim` D, every other one a map or a vector
  (`keras_ssl.backbones.make_backbone` refuses the rest when it builds);
- the gradient of `pre_logits` reaches every trainable variable;
- a checkpoint restores every weight, batch-norm statistics included;
- a misspelled argument is refused, and so is its gin binding;
- with `slow`, the export, loaded with plain TensorFlow, computes every
  end-point as the in-memory model does.
"""

from __future__ import annotations

import inspect
import os
import tempfile

import numpy as np
import tensorflow as tf

__all__ = ["check_backbone"]

_EXPORT_TOLERANCE = 1e-4


def _build(family: str, settings: dict):
    from keras_ssl.backbones import build_backbone

    return build_backbone(family, **settings)


def _check_endpoints_and_gradients(family, net, image_size):
    from keras_ssl.backbones import PRE_LOGITS, output_dim

    images = tf.random.stateless_uniform((2, image_size, image_size, 3), seed=[1, 2])
    with tf.GradientTape() as tape:
        outputs = net(images, training=True)
        loss = tf.reduce_sum(outputs[PRE_LOGITS])
    assert tuple(outputs) == tuple(net.endpoint_names), (
        f"{family}: returns {tuple(outputs)}, endpoint_names says {net.endpoint_names}")
    shape = outputs[PRE_LOGITS].shape
    assert len(shape) == 2 and shape[-1] == output_dim(net), f"{family}: pre_logits {shape}"
    for name, value in outputs.items():
        assert len(value.shape) in (2, 4) and value.shape[0] == 2, f"{family}: {name} {value.shape}"
    gradients = tape.gradient(loss, net.trainable_variables)
    dead = [v.path for v, g in zip(net.trainable_variables, gradients) if g is None]
    assert net.trainable_variables and not dead, f"{family}: no gradient reaches {dead}"


def _check_checkpoint(family, settings, net, image_size):
    net(tf.random.stateless_uniform((2, image_size, image_size, 3), seed=[5, 6]), training=True)
    with tempfile.TemporaryDirectory() as scratch:
        path = tf.train.Checkpoint(backbone=net).write(os.path.join(scratch, "ckpt"))
        fresh = _build(family, settings)
        tf.train.Checkpoint(backbone=fresh).read(path).assert_consumed()
    assert len(fresh.weights) == len(net.weights), f"{family}: weights differ in number"
    for a, b in zip(net.weights, fresh.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=f"{family}: {a.path}")


def _check_strict_arguments(family, settings):
    from keras_ssl import config, registry

    builder = registry.BACKBONES.get(family)
    parameters = [p.name for p in inspect.signature(builder).parameters.values()
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    assert parameters, f"{family}: its builder takes no named arguments"
    misspelled = parameters[0] + "e"
    try:
        _build(family, {**settings, misspelled: 1})
    except (TypeError, ValueError) as refused:
        assert misspelled in str(refused), f"{family}: the refusal does not name it: {refused}"
    else:
        raise AssertionError(f"{family} accepted the misspelled argument {misspelled!r}")
    try:
        config.parse_gin(bindings=[f"keras_ssl.backbones.{family}.{misspelled} = 1"])
    except config.ConfigError as refused:
        assert "\n" not in str(refused) and misspelled in str(refused), str(refused)
    else:
        raise AssertionError(f"{family}: the gin binding of {misspelled!r} was accepted")
    finally:
        config.parse_gin()


def _check_export(family, net, image_size):
    from keras_ssl.backbones import PRE_LOGITS
    from keras_ssl.export import export_backbone

    images = tf.random.stateless_uniform((3, image_size, image_size, 3), seed=[3, 4])
    expected = net(images, training=False)
    with tempfile.TemporaryDirectory() as scratch:
        path = export_backbone(net, os.path.join(scratch, family), {"name": family},
                               image_size=image_size)
        loaded = tf.saved_model.load(path)
        got = loaded.signatures["representation"](images=images)
        assert set(got) == set(net.endpoint_names), f"{family}: exported {sorted(got)}"
        for key in net.endpoint_names:
            np.testing.assert_allclose(got[key], expected[key], rtol=_EXPORT_TOLERANCE,
                                       atol=_EXPORT_TOLERANCE, err_msg=f"{family}: {key}")
        np.testing.assert_allclose(loaded(images), expected[PRE_LOGITS], rtol=_EXPORT_TOLERANCE,
                                   atol=_EXPORT_TOLERANCE, err_msg=f"{family}: the call")


def check_backbone(family: str, *, image_size: int = 32, slow: bool = True, **settings) -> None:
    """Runs the backbone contract for registered `family` built with `settings`.

    Args:
      family: A name in the `keras_ssl.backbones` registry.
      image_size: Side of the random test images.
      slow: Also export and compare the SavedModel (seconds per family).
      **settings: The family's arguments (keep them tiny: widths of a few
        channels).

    Example (a plugin's own test):

    >>> from keras_ssl.testing import check_backbone          # doctest: +SKIP
    >>> check_backbone("my_net", widening_factor=1)
    """
    net = _build(family, settings)
    _check_endpoints_and_gradients(family, net, image_size)
    _check_checkpoint(family, settings, net, image_size)
    _check_strict_arguments(family, settings)
    if slow:
        _check_export(family, net, image_size)
