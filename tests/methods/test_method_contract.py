"""The method contract: what every registered method must do, checked on tiny shapes.

Parametrised over `registry.METHODS.names()`, so every installed method is
checked, a third-party plugin as much as the first-party ones (see
docs/writing_a_method.md, "Checking a plugin against the contract"). Each
method is built on the tiny backbone with its settings from
`helpers.tiny.TINY_METHOD_SETTINGS` and fed 16 px random images through its
own public API (`make_dataset`, `compute_pretext_loss`, `train_step`):

- the gradient of the pretext loss reaches every backbone kernel, and one
  training step changes every one of them (a backbone left out of training,
  or restored after the step, fails here even when the heads learn);
- the loss falls over a few steps on two fixed batches (slow);
- the export, loaded with plain `tf.saved_model.load`, computes what the
  in-memory backbone computes behind the method's input transform, for every
  end-point and every extra signature (slow);
- a misspelled constructor argument is refused, and so is its gin binding,
  when the config is parsed.
"""

from __future__ import annotations

import inspect
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl import Method, config, export, registry, run_dir
from keras_ssl_eval import contract
from tests.helpers.tiny import (
    TINY_BATCH_SIZE, TINY_IMAGE_SIZE, TINY_NUM_EXAMPLES, build_tiny_method,
)

METHOD_NAMES = registry.METHODS.names()

# Steps of the loss test, alternating between the two fixed batches.
_LOSS_STEPS = 10
_LEARNING_RATE = 0.05


def _examples() -> tf.data.Dataset:
    """`TINY_NUM_EXAMPLES` decoded examples of random 16 px images, 3 classes."""
    images = np.random.RandomState(0).rand(
        TINY_NUM_EXAMPLES, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices({
        "image": images,
        "label": np.arange(TINY_NUM_EXAMPLES, dtype=np.int64) % 3,
        "index": np.arange(TINY_NUM_EXAMPLES, dtype=np.int64),
    })


def _method_and_batches(name: str):
    """The tiny method `name` and its batches of `_examples()`, drawn once."""
    keras.utils.set_random_seed(0)
    method = build_tiny_method(name)
    batches = list(method.make_dataset(_examples(), TINY_BATCH_SIZE))
    assert len(batches) == TINY_NUM_EXAMPLES // TINY_BATCH_SIZE
    return method, batches


def _backbone_kernels(method) -> list:
    kernels = [v for v in method.backbone.trainable_variables if v.name.endswith("kernel")]
    assert kernels, f"{type(method).__name__}'s backbone has no trainable kernels"
    return kernels


def _compiled_step(method, traced: bool = True):
    """`method.train_step` with an SGD optimizer; traced as Orbit and `fit` run it, or eager."""
    method.compile(optimizer=keras.optimizers.SGD(_LEARNING_RATE, momentum=0.9))
    return tf.function(method.train_step) if traced else method.train_step


def _misspelled_parameter(name: str) -> tuple[str, str]:
    """`(a parameter of the method's constructor, that name misspelled)`."""
    parameters = [
        p.name for p in inspect.signature(registry.METHODS.get(name).__init__).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ("self", "backbone")
    ]
    parameter = parameters[0] if parameters else "augmentation"
    return parameter, parameter + "e"


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_gradient_reaches_every_backbone_kernel(name):
    method, batches = _method_and_batches(name)
    kernels = _backbone_kernels(method)
    with tf.GradientTape() as tape:
        loss, _ = method.compute_pretext_loss(batches[0], training=True)
    # The pretext loss alone: weight decay would give every kernel a gradient anyway.
    gradients = tape.gradient(loss, kernels)
    dead = [v.path for v, g in zip(kernels, gradients)
            if g is None or not np.any(tf.convert_to_tensor(g).numpy())]
    assert not dead, f"{name}: no gradient reaches {dead}"


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_one_training_step_changes_every_backbone_kernel(name):
    method, batches = _method_and_batches(name)
    # Eager: one step does not repay tracing it (the slow loss test runs it traced).
    step = _compiled_step(method, traced=False)
    kernels = _backbone_kernels(method)
    before = [v.numpy() for v in kernels]
    outputs = step(batches[0])
    assert np.isfinite(float(outputs["loss"]))
    unchanged = [v.path for v, old in zip(kernels, before) if np.array_equal(v.numpy(), old)]
    assert not unchanged, f"{name}: one training step left {unchanged} unchanged"


@pytest.mark.slow
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_loss_falls_on_fixed_batches(name):
    method, batches = _method_and_batches(name)
    step = _compiled_step(method)
    losses = [float(step(batches[i % len(batches)])["loss"]) for i in range(_LOSS_STEPS)]
    assert np.isfinite(losses).all(), losses
    # One pass over the batches at the start and at the end: the same examples.
    first, last = np.mean(losses[:len(batches)]), np.mean(losses[-len(batches):])
    assert last < first, f"{name}: losses {np.round(losses, 3).tolist()}"


def _write_run_files(model_dir: str, name: str) -> None:
    """The run description `export.export_method` reads, as a tiny training run writes it."""
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, run_dir.RUN_FILE), "w") as f:
        json.dump({"method": name, "dataset": "random", "train_steps": 1,
                   "batch_size": TINY_BATCH_SIZE, "image_size": TINY_IMAGE_SIZE}, f)
    with open(os.path.join(model_dir, run_dir.CONFIG_FILE), "w") as f:
        f.write(f"keras_ssl.build_method.method = {name!r}\n")


@pytest.mark.slow
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_export_equals_the_in_memory_model(name, tmp_path):
    method, batches = _method_and_batches(name)
    # One step, so batch norm's moving statistics are no longer their initial values.
    _compiled_step(method, traced=False)(batches[0])
    model_dir = str(tmp_path / name)
    _write_run_files(model_dir, name)
    path = export.export_method(method, model_dir, step=1)

    loaded = tf.saved_model.load(path)
    with open(os.path.join(path, contract.METADATA_PATH)) as f:
        metadata = json.load(f)
    for key, value in method.export_metadata().items():
        assert json.loads(json.dumps(metadata[key])) == json.loads(json.dumps(value)), key
    # Clients feed what the backbone saw in training: patches for patch methods.
    size = metadata.get("patch_size") or [TINY_IMAGE_SIZE, TINY_IMAGE_SIZE]
    images = tf.random.stateless_uniform([3, *size, 3], seed=[1, 2])
    expected = method.backbone(method.export_input_transform(images), training=False)

    np.testing.assert_allclose(loaded(images), expected["pre_logits"], rtol=1e-4, atol=1e-4)
    served = loaded.signatures["serving_default"](images=images)
    np.testing.assert_allclose(served["pre_logits"], expected["pre_logits"], rtol=1e-4, atol=1e-4)
    representation = loaded.signatures[contract.REPRESENTATION_SIGNATURE](images=images)
    assert set(representation) == set(method.backbone.endpoint_names)
    for endpoint, value in representation.items():
        np.testing.assert_allclose(value, expected[endpoint], rtol=1e-4, atol=1e-4,
                                   err_msg=f"{name}: end-point {endpoint}")
    extra_signatures, _ = method.export_signatures()
    for signature, function in extra_signatures.items():
        in_memory = function(images)
        for key, value in loaded.signatures[signature](images=images).items():
            np.testing.assert_allclose(value, in_memory[key], rtol=1e-4, atol=1e-4,
                                       err_msg=f"{name}: signature {signature}, {key}")


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_misspelled_constructor_argument_is_refused(name):
    _, misspelled = _misspelled_parameter(name)
    with pytest.raises((TypeError, ValueError), match=misspelled):
        build_tiny_method(name, **{misspelled: 1})


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_misspelled_gin_binding_is_refused_when_parsed(name):
    parameter, misspelled = _misspelled_parameter(name)
    binding = f"keras_ssl.methods.{name}.{misspelled} = 1"
    with pytest.raises(config.ConfigError) as refused:
        config.parse_gin(bindings=[binding])
    message = str(refused.value)
    assert "\n" not in message
    assert f"{name}.{misspelled}" in message and repr(parameter) in message


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_arguments_forwarded_to_the_base_classes_are_bindable(name):
    # `augmentation` reaches `keras_ssl.Method` and `name` keras.Model through **kwargs.
    config.parse_gin(bindings=[f"keras_ssl.methods.{name}.augmentation = 'none'",
                               f"keras_ssl.methods.{name}.name = 'contract'"])
    assert issubclass(registry.METHODS.get(name), Method)
