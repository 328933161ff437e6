"""The method contract: what every method must do, checked on tiny shapes.

Each check builds the method on the tiny backbone with its `tiny_settings()`
(updated by the settings passed in) and feeds it random 16-px images through
its own public API (`make_dataset`, `compute_pretext_loss`, `train_step`). A
failed check raises `AssertionError` naming the method and what went wrong.
`check_method` runs them all; the project's registry-wide tests run each one
over every installed method, and a plugin's tests call `check_method` once.
"""

from __future__ import annotations

import inspect
import json
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from keras_ssl.testing.tiny import (
    TINY_BATCH_SIZE, TINY_IMAGE_SIZE, TINY_NUM_EXAMPLES, build_tiny_method, method_class,
    tiny_backbone_for, tiny_examples,
)

__all__ = [
    "check_export", "check_gradients", "check_loss_falls", "check_method", "check_strict_settings",
    "check_training_step", "method_and_batches",
]

# Steps of the loss check, alternating between the two fixed batches.
LOSS_STEPS = 10
_LEARNING_RATE = 0.05
# Export and in-memory outputs agree to this (float32 graphs traced twice).
_EXPORT_TOLERANCE = 1e-4


def method_and_batches(method, *, family: str | None = None, **settings):
    """The tiny `method` (seeded) and its batches of `tiny_examples`, drawn once.

    Args:
      method: A registered method name or a `keras_ssl.Method` subclass.
      family: The backbone family, built by `tiny_backbone_for` (None: the
        method's `required_backbone`, else `resnet_v2`; `"vit"`: `TINY_VIT`).
      **settings: Constructor arguments over its tiny settings.

    Returns:
      `(method instance, [batch, batch])`.
    """
    keras.utils.set_random_seed(0)
    instance = build_tiny_method(method, backbone=tiny_backbone_for(method, family), **settings)
    examples = tiny_examples(method, TINY_NUM_EXAMPLES, **settings)
    instance.adapt(examples)
    batches = list(instance.make_dataset(examples, TINY_BATCH_SIZE))
    assert len(batches) == TINY_NUM_EXAMPLES // TINY_BATCH_SIZE
    return instance, batches


def _name(instance) -> str:
    return instance.registry_name


def _backbone_kernels(instance) -> list:
    kernels = [v for v in instance.backbone.trainable_variables if v.name.endswith("kernel")]
    assert kernels, f"{_name(instance)}'s backbone has no trainable kernels"
    return kernels


def _compiled_step(instance, traced: bool = True):
    """`train_step` with an SGD optimizer; traced as Orbit and `fit` run it, or eager."""
    instance.compile(optimizer=keras.optimizers.SGD(_LEARNING_RATE, momentum=0.9))
    return tf.function(instance.train_step) if traced else instance.train_step


def check_gradients(method, *, family: str | None = None, **settings) -> None:
    """The gradient of the pretext loss reaches every backbone kernel.

    A backbone end-point the loss never reads, or a `stop_gradient` in the
    wrong place, leaves kernels that training would never change.
    """
    instance, batches = method_and_batches(method, family=family, **settings)
    kernels = _backbone_kernels(instance)
    with tf.GradientTape() as tape:
        loss, _ = instance.compute_pretext_loss(batches[0], training=True)
    # The pretext loss alone: weight decay would give every kernel a gradient anyway.
    gradients = tape.gradient(loss, kernels)
    dead = [v.path for v, g in zip(kernels, gradients)
            if g is None or not np.any(tf.convert_to_tensor(g).numpy())]
    assert not dead, f"{_name(instance)}: no gradient reaches {dead}"


def check_training_step(method, *, family: str | None = None, **settings) -> None:
    """One `train_step` gives a finite loss and changes every backbone kernel.

    Catches a backbone left out of `trainable_variables` or restored after
    the step, even when the heads learn.
    """
    instance, batches = method_and_batches(method, family=family, **settings)
    # Eager: one step does not repay tracing it (`check_loss_falls` runs it traced).
    step = _compiled_step(instance, traced=False)
    kernels = _backbone_kernels(instance)
    before = [v.numpy() for v in kernels]
    outputs = step(batches[0])
    assert np.isfinite(float(outputs["loss"])), f"{_name(instance)}: loss {outputs['loss']}"
    unchanged = [v.path for v, old in zip(kernels, before) if np.array_equal(v.numpy(), old)]
    assert not unchanged, f"{_name(instance)}: one training step left {unchanged} unchanged"


def check_loss_falls(method, steps: int = LOSS_STEPS, *, family: str | None = None,
                     **settings) -> None:
    """The loss falls over `steps` traced SGD steps on two fixed batches.

    The mean over the first pass is compared with the mean over the last
    (the same examples), so the loss of one lucky batch does not decide it.
    """
    instance, batches = method_and_batches(method, family=family, **settings)
    step = _compiled_step(instance)
    losses = [float(step(batches[i % len(batches)])["loss"]) for i in range(steps)]
    assert np.isfinite(losses).all(), f"{_name(instance)}: losses {losses}"
    first, last = np.mean(losses[:len(batches)]), np.mean(losses[-len(batches):])
    assert last < first, f"{_name(instance)}: losses {np.round(losses, 3).tolist()}"


def _write_run_files(model_dir: str, name: str) -> None:
    """The run description `export.export_method` reads, as a tiny training run writes it."""
    from keras_ssl import run_dir

    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, run_dir.RUN_FILE), "w") as f:
        json.dump({"method": name, "dataset": "random", "train_steps": 1,
                   "batch_size": TINY_BATCH_SIZE, "image_size": TINY_IMAGE_SIZE}, f)
    with open(os.path.join(model_dir, run_dir.CONFIG_FILE), "w") as f:
        f.write(f"keras_ssl.build_method.method = {name!r}\n")


def _assert_close(actual, expected, what: str) -> None:
    np.testing.assert_allclose(actual, expected, rtol=_EXPORT_TOLERANCE, atol=_EXPORT_TOLERANCE,
                               err_msg=what)


def check_export(method, export_dir: str | None = None, *, family: str | None = None,
                 **settings) -> None:
    """The export, loaded with plain `tf.saved_model.load`, computes what the method computes.

    After one training step (so batch norm's moving statistics are no longer
    their initial values), for the call, `serving_default`, every end-point
    of `representation` and every extra signature of `export_signatures`,
    behind the method's `export_input_transform`; and the metadata holds
    `export_metadata()`.

    Args:
      method, family, settings: As for `check_method`.
      export_dir: Where to write the run folder (default: a temporary one,
        removed afterwards).
    """
    from keras_ssl import export
    from keras_ssl_eval import contract

    instance, batches = method_and_batches(method, family=family, **settings)
    _compiled_step(instance, traced=False)(batches[0])
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = os.path.join(export_dir or scratch, _name(instance))
        _write_run_files(model_dir, _name(instance))
        path = export.export_method(instance, model_dir, step=1)
        loaded = tf.saved_model.load(path)
        with open(os.path.join(path, contract.METADATA_PATH)) as f:
            metadata = json.load(f)
        for key, value in instance.export_metadata().items():
            assert json.loads(json.dumps(metadata[key])) == json.loads(json.dumps(value)), key
        # Clients feed what the backbone saw in training: patches for patch methods.
        size = metadata.get("patch_size") or [TINY_IMAGE_SIZE, TINY_IMAGE_SIZE]
        images = tf.random.stateless_uniform([3, *size, 3], seed=[1, 2])
        expected = instance.backbone(instance.export_input_transform(images), training=False)
        name = _name(instance)
        _assert_close(loaded(images), expected["pre_logits"], f"{name}: the call")
        served = loaded.signatures[contract.SERVING_SIGNATURE](images=images)
        _assert_close(served["pre_logits"], expected["pre_logits"], f"{name}: serving_default")
        representation = loaded.signatures[contract.REPRESENTATION_SIGNATURE](images=images)
        assert set(representation) == set(instance.backbone.endpoint_names), (
            f"{name}: representation has {sorted(representation)}")
        for endpoint, value in representation.items():
            _assert_close(value, expected[endpoint], f"{name}: end-point {endpoint}")
        extra_signatures, _ = instance.export_signatures()
        for signature, function in extra_signatures.items():
            in_memory = function(images)
            for key, value in loaded.signatures[signature](images=images).items():
                _assert_close(value, in_memory[key], f"{name}: signature {signature}, {key}")


def _misspelled_parameter(cls) -> tuple[str, str]:
    """`(a parameter of the method's constructor, that name misspelled)`."""
    parameters = [
        p.name for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ("self", "backbone")
    ]
    parameter = parameters[0] if parameters else "augmentation"
    return parameter, parameter + "e"


def check_strict_settings(method, **settings) -> None:
    """A misspelled constructor argument is refused; so is its gin binding, when parsed.

    Also: `augmentation` and `name`, which reach `keras_ssl.Method` and
    `keras.Model` through `**kwargs`, can be bound. The gin checks need a
    registered method (an unregistered class has no gin name).
    """
    from keras_ssl import Method, config

    cls, registered = method_class(method)
    parameter, misspelled = _misspelled_parameter(cls)
    try:
        build_tiny_method(method, **{**settings, misspelled: 1})
    except (TypeError, ValueError) as refused:
        assert misspelled in str(refused), (
            f"{cls.__name__}: refusing {misspelled!r}, the message does not name it: {refused}")
    else:
        raise AssertionError(f"{cls.__name__} accepted the misspelled argument {misspelled!r}")
    if registered is None:
        return
    binding = f"keras_ssl.methods.{registered}.{misspelled} = 1"
    try:
        config.parse_gin(bindings=[binding])
    except config.ConfigError as refused:
        message = str(refused)
        assert "\n" not in message, f"{registered}: not one line: {message}"
        assert f"{registered}.{misspelled}" in message and repr(parameter) in message, message
    else:
        raise AssertionError(f"{registered}: the binding {binding!r} was accepted")
    config.parse_gin(bindings=[f"keras_ssl.methods.{registered}.augmentation = 'none'",
                               f"keras_ssl.methods.{registered}.name = 'contract'"])
    assert issubclass(cls, Method)
    config.parse_gin()  # leaves no bindings behind


def check_method(method, *, slow: bool = True, replicas: bool = True, family: str | None = None,
                 **settings) -> None:
    """Runs the method contract on tiny shapes; raises `AssertionError` at the first failure.

    The checks, in order: strict settings (`check_strict_settings`), the
    gradient reaches every backbone kernel (`check_gradients`), one step
    changes each of them (`check_training_step`); with `slow`, the loss falls
    (`check_loss_falls`) and the export equals the model (`check_export`);
    with `replicas`, 2 mirrored CPU replicas train like one device and the
    step lowers to XLA (`keras_ssl.testing.replicas.check_replicas`, in a
    process of its own: about a minute).

    Args:
      method: A registered method name or a `keras_ssl.Method` subclass (a
        plugin's class may be checked before it is registered).
      slow: Run the loss and export checks (tens of seconds).
      replicas: Run the replica and XLA checks.
      family: The tiny backbone's family (None: the method's
        `required_backbone`, else `resnet_v2`; `"vit"` builds `TINY_VIT`).
      **settings: Constructor arguments over the method's `tiny_settings()`.

    Example (a plugin's own test):

    >>> from keras_ssl.testing import check_method           # doctest: +SKIP
    >>> def test_my_method_keeps_the_contract():
    ...     check_method("my_method")
    """
    check_strict_settings(method, **settings)
    check_gradients(method, family=family, **settings)
    check_training_step(method, family=family, **settings)
    if slow:
        check_loss_falls(method, family=family, **settings)
        check_export(method, family=family, **settings)
    if replicas:
        from keras_ssl.testing.replicas import check_replicas

        check_replicas(method, family=family, **settings)
