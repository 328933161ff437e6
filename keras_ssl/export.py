"""Export of a backbone to the keras-ssl SavedModel contract.

The SavedModel (see docs/savedmodel_contract.md) loads with plain
`tf.saved_model.load`, without keras or keras_ssl:

- `model(images, training=False)` -> pre-logits `[batch, D]`; also traced
  for `training=True` (batch norm in training mode) for fine-tuning;
  `model.variables`, `model.trainable_variables`,
  `model.regularization_losses`;
- signature `serving_default`: `images` -> `{"pre_logits"}`;
- signature `representation`: `images` -> every end-point in one pass;
- `assets/keras_ssl.json`: what the model is and how it was trained.

A method shapes its export through three hooks of `keras_ssl.Method`
(defaults: nothing extra): `export_metadata()` (patch-based methods record
`input_form: "patches"`, `patch_grid`, `patch_size`; end-point shapes are then
recorded at `patch_size`, the size the backbone sees),
`export_input_transform(images)` (per-patch standardisation, RGB -> L, built
into every exported function so clients feed plain [0, 1] RGB) and
`export_signatures()` (extra signatures such as Colorization's `colorize`,
and the objects holding their variables).

Beside the SavedModel, `formats` adds the backbone as a `.keras` file, ONNX
and LiteRT (`keras_ssl.export_formats`); each is checked against the
SavedModel's function and listed in the metadata's `artifacts`.

Exports are written to a temporary directory and renamed into place, so a
crash (or a converter's failure) never leaves a half-written model at the
destination.

Binary: `keras-ssl-export --model_dir=RUN [--step=N] [--export_dir=DIR]
[--format=saved_model,keras,onnx,litert]` (`keras_ssl.cli.export`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import tensorflow as tf
from keras_ssl_eval.contract import (
    FORMAT, INPUT_NAME, METADATA_FILENAME, REPRESENTATION_SIGNATURE, SERVING_SIGNATURE,
)

import keras_ssl
from keras_ssl.backbones import PRE_LOGITS, backbone_spec
from keras_ssl.building import restore_method
from keras_ssl.export_formats import resolve_formats, write_artifacts
from keras_ssl.method import Method
from keras_ssl.run_dir import (
    default_export_dir, read_config, read_run_file,
)


def export_backbone(
    backbone,
    export_dir: str,
    metadata: dict,
    image_size: int | None,
    *,
    input_transform=None,
    extra_signatures: dict | None = None,
    extra_objects: dict | None = None,
    formats=None,
) -> str:
    """Writes `backbone` as a contract SavedModel (and other formats) to `export_dir`, atomically.

    Args:
      backbone: A backbone model returning a dict of end-points.
      export_dir: Destination; replaced if it exists.
      metadata: Extra fields for `assets/keras_ssl.json` (method, dataset,
        steps, gin config...).
      image_size: The square input size the model was trained at.
      input_transform: Optional `images -> images` applied before the
        backbone in every exported function.
      extra_signatures: Optional `{name: fn(images) -> dict of tensors}`,
        saved as signatures taking `images` like `representation`.
      extra_objects: Optional `{attribute: trackable}` set on the root so the
        variables the extra signatures use are saved.
      formats: Formats to write (`keras_ssl.export_formats.FORMATS`; a list
        or a comma-separated string); None for the default `saved_model,keras`.
        With an `input_transform`, keras is skipped by default (a printed
        line says why) and refused when asked for. The `.keras`, ONNX and
        LiteRT files take the size the backbone sees: `image_size` (a
        patch-based method's `patch_size`; 32 when both are None).

    Returns:
      `export_dir`.

    Raises:
      keras_ssl.export_formats.ExportFormatError: A format that cannot be
        written (unknown, `saved_model` left out, a missing optional
        package, keras with an input transform, a converter's failure or an
        artifact that differs from the SavedModel); nothing is written.

    Example:

    >>> from keras_ssl.backbones import build_backbone         # doctest: +SKIP
    >>> net = build_backbone("resnet_v2", depth=10, widening_factor=1)
    >>> export_backbone(net, "/tmp/net", {}, image_size=32,    # doctest: +SKIP
    ...                 formats=["saved_model", "keras", "onnx", "litert"])
    """
    explicit = formats is not None
    formats, note = resolve_formats(
        formats, input_transform=_transform_name(input_transform) if input_transform else None)
    if note:
        print(f"keras-ssl export: {note}", flush=True)
    images_spec = tf.TensorSpec([None, None, None, 3], tf.float32, name=INPUT_NAME)
    endpoint_names = list(backbone.endpoint_names)
    transform = input_transform or (lambda images: images)

    def net(images, training):
        # Float32 out even from a mixed-precision backbone: the contract's dtype.
        outputs = backbone(transform(images), training=training)
        return {name: tf.cast(value, tf.float32) for name, value in outputs.items()}

    @tf.function
    def call(images, training=False):
        return net(images, training)[PRE_LOGITS]

    @tf.function
    def end_points(images, training=False):
        outputs = net(images, training)
        return {name: outputs[name] for name in endpoint_names}

    @tf.function(input_signature=[images_spec])
    def serving(images):
        return {PRE_LOGITS: net(images, False)[PRE_LOGITS]}

    @tf.function(input_signature=[images_spec])
    def representation(images):
        outputs = net(images, False)
        return {name: outputs[name] for name in endpoint_names}

    signatures = {SERVING_SIGNATURE: serving, REPRESENTATION_SIGNATURE: representation}
    for name, fn in (extra_signatures or {}).items():
        signatures[name] = tf.function(fn, input_signature=[images_spec])

    # Concrete functions for both modes, so the loaded object can be called
    # with training=True (fine-tuning) as well as for inference.
    # `end_points` is the same for every end-point (dense fine-tuning).
    for function in (call, end_points):
        function.get_concrete_function(images_spec, training=False)
        function.get_concrete_function(images_spec, training=True)

    size = [int(image_size), int(image_size)] if image_size else None
    # Patch-based models see patches: record the end-points at that size.
    probe_size = list(metadata.get("patch_size") or size or [32, 32])
    probe = tf.random.uniform([1] + probe_size + [3])
    shapes = {
        name: [None] + list(value.shape[1:])
        for name, value in net(probe, False).items()
    }
    trainable = list(backbone.trainable_variables)
    full_metadata = {
        "format": FORMAT,
        "library_version": keras_ssl.__version__,
        "backbone": backbone_spec(backbone) | {"name": backbone.name},
        "input_size": size,
        "input_value_range": [0.0, 1.0],
        "input_form": "image",
        "endpoints": endpoint_names,
        "endpoint_shapes_at_input_size": shapes,
        "trainable_variable_paths": [variable.path for variable in trainable],
        "trainable_variable_endpoints": first_endpoints(
            lambda images: net(images, False), probe, trainable, endpoint_names),
        **metadata,
    }

    def representation_fn(images):
        outputs = net(images, False)
        return {name: outputs[name] for name in endpoint_names}

    parent = os.path.dirname(os.path.abspath(export_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        model_path = os.path.join(staging, "model")
        # The other formats first: their check results go into the metadata,
        # which the SavedModel copies in as an asset.
        os.makedirs(model_path)
        artifacts, differences, notes = write_artifacts(
            model_path, formats, backbone=backbone, representation=representation_fn,
            input_size=probe_size, endpoint_names=endpoint_names, explicit=explicit)
        for line in notes:
            print(f"keras-ssl export: {line}", flush=True)
        full_metadata["artifacts"] = artifacts
        if differences:
            full_metadata["artifact_max_abs_difference"] = differences
        metadata_path = os.path.join(staging, "metadata", METADATA_FILENAME)
        os.makedirs(os.path.dirname(metadata_path))
        with open(metadata_path, "w") as f:
            json.dump(full_metadata, f, indent=2, default=str)

        root = tf.train.Checkpoint()
        root.backbone = backbone
        root.__call__ = call
        root.end_points = end_points
        root.variables = list(backbone.variables)
        root.trainable_variables = trainable
        root.regularization_losses = []
        root.metadata_file = tf.saved_model.Asset(metadata_path)
        for attribute, trackable in (extra_objects or {}).items():
            setattr(root, attribute, trackable)
        tf.saved_model.save(root, model_path, signatures=signatures)
        _replace_dir(model_path, export_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return export_dir


def _transform_name(transform) -> str:
    """How a printed line names an input transform (`Colorization.export_input_transform`)."""
    owner = getattr(transform, "__self__", None)
    if owner is not None:
        return f"{type(owner).__name__}.{getattr(transform, '__name__', 'input transform')}"
    return getattr(transform, "__qualname__", None) or "the input transform"


def has_input_transform(method) -> bool:
    """Whether `method` overrides `Method.export_input_transform` (patches, Lab, lightness).

    Such a method's export has no `.keras` file: the transform has no
    built-in Keras form (`keras_ssl.export_formats.resolve_formats`).

    Example:

    >>> has_input_transform(build_tiny_method("colorization"))  # doctest: +SKIP
    True
    """
    return type(method).export_input_transform is not Method.export_input_transform


def first_endpoints(net, images, variables, endpoint_names) -> list:
    """For each variable, the first end-point (in network order) whose value depends on it.

    Layer-wise learning-rate decay (BEiT; the utility protocol's
    `finetune_layer_decay`) scales a variable's rate by how far below the
    head it sits; this is that position, for any family, found by which
    end-points have a gradient with respect to it.

    Args:
      net: `images -> {end-point: tensor}`.
      images: A probe batch.
      variables: The variables to place.
      endpoint_names: End-point names in network order.

    Returns:
      One end-point name per variable, or None for a variable no end-point
      reads (a ViT's mask token outside masked training).
    """
    with tf.GradientTape(persistent=True) as tape:
        outputs = net(images)
        sums = {name: tf.reduce_sum(outputs[name]) for name in endpoint_names}
    first = [None] * len(variables)
    for name in endpoint_names:
        gradients = tape.gradient(sums[name], variables)
        for i, gradient in enumerate(gradients):
            if first[i] is None and gradient is not None:
                first[i] = name
    del tape
    return first


def _replace_dir(source: str, destination: str) -> None:
    """Moves `source` to `destination`; an old `destination` is removed only after."""
    if os.path.exists(destination):
        old = f"{destination}.old-{os.getpid()}"
        os.rename(destination, old)
        os.rename(source, destination)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(source, destination)


def export_method(method, model_dir: str, step: int, export_dir: str | None = None,
                  formats=None) -> str:
    """Exports the backbone of an in-memory method of the run in `model_dir`.

    Args:
      method: The trained `keras_ssl.Method`.
      model_dir: The run directory (its run.json and config.gin go into the
        metadata).
      step: The training step the weights are from.
      export_dir: Destination (default `model_dir/export/step_<step>`).
      formats: Formats to write (see `export_backbone`; None: the default).

    Returns:
      The export directory.

    Example:

    >>> export_method(method, "runs/quickstart", 300,         # doctest: +SKIP
    ...               formats=["saved_model", "onnx"])
    'runs/quickstart/export/step_300'
    """
    run = read_run_file(model_dir)
    gin_config = read_config(model_dir)
    export_dir = export_dir or default_export_dir(model_dir, step)
    metadata = {
        "name": f"{run['method']}@{step}",
        "method": run["method"],
        "augmentation": method.augmentation_name,
        "dataset": run["dataset"],
        "steps": step,
        "train_steps": run["train_steps"],
        "batch_size": run["batch_size"],
        "gin_config": gin_config,
    }
    metadata.update(method.export_metadata())
    extra_signatures, extra_objects = method.export_signatures()
    path = export_backbone(
        method.backbone, export_dir, metadata, run["image_size"],
        input_transform=method.export_input_transform if has_input_transform(method) else None,
        extra_signatures=extra_signatures, extra_objects=extra_objects, formats=formats,
    )
    print(f"exported step {step} to {path}", flush=True)
    return path


def export_checkpoint(model_dir: str, step: int | None = None, export_dir: str | None = None,
                      formats=None) -> str:
    """Rebuilds the run's method from its config and exports a checkpoint.

    Args:
      model_dir: The run directory written by `keras_ssl.training.train`.
      step: Step of the checkpoint (default: the latest). Step 0 is the
        random initialisation kept by every run.
      export_dir: Destination (default `model_dir/export/step_<step>`).
      formats: Formats to write (see `export_backbone`; None: the default).

    Returns:
      The export directory.

    Raises:
      FileNotFoundError: No checkpoint for that step; the message lists the
        steps available (`keras_ssl.building.restore_method`).
      keras_ssl.export_formats.ExportFormatError: A format that cannot be
        written (see `export_backbone`).

    Example:

    >>> export_checkpoint("runs/quickstart", 0,               # doctest: +SKIP
    ...                   formats="saved_model,keras,onnx,litert")
    'runs/quickstart/export/step_0'
    """
    if formats is not None:
        resolve_formats(formats)  # an unknown format fails before the model is rebuilt
    method, step = restore_method(model_dir, step)
    return export_method(method, model_dir, step, export_dir, formats)
