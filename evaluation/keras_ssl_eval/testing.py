"""Small artifacts for tests and examples: a contract SavedModel and image folders.

`save_toy_savedmodel` writes, with plain TensorFlow, a tiny random convolutional
net that follows the keras-ssl SavedModel contract (docs/savedmodel_contract.md),
so evaluation and client code can be tested without keras or keras_ssl.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import tensorflow as tf

from keras_ssl_eval.contract import (INPUT_NAME, METADATA_FILENAME, REPRESENTATION_SIGNATURE,
                                     SERVING_SIGNATURE)

__all__ = ["run_eval_main", "save_toy_savedmodel", "write_image_folder"]


def save_toy_savedmodel(path: str, *, input_size: int = 16, root_channels: int = 4,
                        block1_channels: int = 150, seed: int = 0,
                        name: str | None = "toy", with_metadata: bool = True,
                        with_representation: bool = True, patch_grid=None,
                        patch_size: int | None = None) -> str:
    """Writes a tiny contract-following SavedModel with plain TensorFlow.

    End-points for ``input_size`` S: ``after_root`` ``[B, S/2, S/2, root]``
    (3x3 stride-2 conv + ReLU), ``block1`` ``[B, S/2, S/2, block1_channels]``
    (3x3 conv + ReLU; 8x8x150 = 9600 values at S=16, so it gets pooled) and
    ``pre_logits`` ``[B, block1_channels]`` (global average of block1).

    Args:
        path: Output directory.
        input_size: Side of the square input recorded in the metadata.
        root_channels: Channels of ``after_root``.
        block1_channels: Channels of ``block1`` (and size of ``pre_logits``).
        seed: Seed of the random weights.
        name: ``name`` in the metadata (None leaves it out).
        with_metadata: Write ``assets/keras_ssl.json``.
        with_representation: Include the ``representation`` signature (False
            builds a model that breaks the contract, for error tests).
        patch_grid: ``(rows, cols)`` to record a patch-based model
            (``input_form: patches``); the net then sees patches of
            ``patch_size`` cut from images of ``input_size``.
        patch_size: Side of the patches (required with `patch_grid`).

    Returns:
        `path`.

    Example:
        >>> save_toy_savedmodel("/tmp/toy_model")
        '/tmp/toy_model'
    """
    rng = np.random.default_rng(seed)
    root = tf.train.Checkpoint()
    root.root_kernel = tf.Variable(
        rng.normal(0, 0.5, [3, 3, 3, root_channels]).astype(np.float32), name="root_kernel")
    root.block1_kernel = tf.Variable(
        rng.normal(0, 0.5, [3, 3, root_channels, block1_channels]).astype(np.float32),
        name="block1_kernel")

    def endpoints(images):
        after_root = tf.nn.relu(tf.nn.conv2d(images, root.root_kernel, 2, "SAME"))
        block1 = tf.nn.relu(tf.nn.conv2d(after_root, root.block1_kernel, 1, "SAME"))
        pre_logits = tf.reduce_mean(block1, axis=[1, 2])
        return {"after_root": after_root, "block1": block1, "pre_logits": pre_logits}

    image_spec = tf.TensorSpec([None, None, None, 3], tf.float32, name=INPUT_NAME)

    @tf.function
    def call(images, training=False):
        del training  # No batch norm or dropout in this toy net.
        return endpoints(images)["pre_logits"]

    root.__call__ = call
    call.get_concrete_function(image_spec, training=False)
    call.get_concrete_function(image_spec, training=True)
    root.variables = [root.root_kernel, root.block1_kernel]
    root.trainable_variables = list(root.variables)
    root.regularization_losses = []

    serving = tf.function(lambda images: {"pre_logits": endpoints(images)["pre_logits"]})
    signatures = {SERVING_SIGNATURE: serving.get_concrete_function(image_spec)}
    if with_representation:
        signatures[REPRESENTATION_SIGNATURE] = tf.function(endpoints).get_concrete_function(image_spec)

    with tempfile.TemporaryDirectory() as staging:
        if with_metadata:
            metadata = {"method": "toy", "backbone": "toy_convnet", "input_size": [input_size] * 2,
                        "value_range": [0.0, 1.0],
                        "endpoints": ["after_root", "block1", "pre_logits"]}
            if name is not None:
                metadata["name"] = name
            if patch_grid is not None:
                metadata.update(input_form="patches", patch_grid=list(patch_grid),
                                patch_size=[patch_size, patch_size])
            asset_file = os.path.join(staging, METADATA_FILENAME)
            with open(asset_file, "w") as f:
                json.dump(metadata, f)
            # An Asset is copied into <path>/assets/ under its base name.
            root.metadata = tf.saved_model.Asset(asset_file)
        tf.saved_model.save(root, path, signatures=signatures)
    return path


def write_image_folder(path: str, classes: dict[str, int] | int, *, size: int = 16,
                       seed: int = 0, extension: str = ".png") -> str:
    """Writes small random RGB images, one sub-folder per class.

    Each class gets its own mean colour, so the classes are easy to tell apart.

    Args:
        path: Directory to create or fill.
        classes: ``{class name: number of images}``, or an int for that many
            unlabelled images directly in `path`.
        size: Side of the square images.
        seed: Seed of the pixel noise.
        extension: File type, e.g. ``.png`` or ``.jpg``.

    Returns:
        `path`.

    Example:
        >>> write_image_folder("/tmp/pets/train", {"cat": 4, "dog": 4})
        '/tmp/pets/train'
    """
    from PIL import Image  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng(seed)
    groups = {"": classes} if isinstance(classes, int) else dict(classes)
    for k, (class_name, count) in enumerate(sorted(groups.items())):
        folder = os.path.join(path, class_name)
        os.makedirs(folder, exist_ok=True)
        colour = np.array([(50 + 70 * k) % 256, (200 - 60 * k) % 256, (30 * k) % 256])
        for i in range(count):
            pixels = np.clip(colour + rng.normal(0, 20, [size, size, 3]), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(os.path.join(folder, f"img_{i:03d}{extension}"))
    return path


def run_eval_main(argv: list[str]) -> None:
    """Runs `keras-ssl-eval ARGV`'s main in this process, as a test does.

    The binary's flags (`keras_ssl_eval.cli.eval`, defined when that module
    is first imported) are parsed from `argv` into absl's `FLAGS` and reset to
    their defaults afterwards, so the next call starts from the defaults. Unlike
    the binary, it leaves logging alone and user errors propagate as exceptions.

    Args:
        argv: The arguments after the program name, e.g.
            ``["--saved_model=/m", "--dataset=cifar10", "--output=/o"]``.
    """
    from absl import flags

    from keras_ssl_eval.cli import eval as eval_binary

    flags.FLAGS.unparse_flags()
    try:
        positional = flags.FLAGS(["keras-ssl-eval", *argv])
        eval_binary.main(positional)
    finally:
        flags.FLAGS.unparse_flags()
