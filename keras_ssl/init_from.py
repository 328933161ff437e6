"""Starting a run from pretrained weights: `keras_ssl.build_method.init_from = PATH`.

Continued pre-training (someone's pretrained network, your data) starts from
the backbone weights in PATH, which is one of:

- a `.keras` file: the `backbone.keras` that every export writes (a
  `keras_ssl.portable` model), or, for the `keras_hub` family, a saved
  keras-hub backbone;
- a keras-hub preset directory (`config.json` + `model.weights.h5`), for the
  `keras_hub` family;
- a keras-ssl checkpoint: a run directory (its latest checkpoint) or a
  checkpoint prefix such as `runs/simclr/ckpt-500`; only the backbone is read.

The configured backbone is built first, then every one of its weights must
find a counterpart of the same shape in PATH; otherwise nothing is assigned
and the error names the variables that are missing, unexpected or of another
shape. `.keras` files load with Keras' safe mode; a file that needs
deserialised code loads only with `keras_ssl.build_method.unsafe_keras = True`.
Only the backbone is initialised: heads, predictors and the optimizer start
fresh, and momentum copies (BYOL, DINO teachers) start from the initialised
backbone.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import tensorflow as tf
from keras_ssl_eval.reading.keras_models import (
    is_keras_hub_preset, load_keras_file, load_keras_hub_preset,
)
from tensorflow.core.protobuf import trackable_object_graph_pb2

from keras_ssl.backbones import backbone_spec

UNSAFE_BINDING = "keras_ssl.build_method.unsafe_keras = True"
_BACKBONE_PATH = ("method", "backbone")
_OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"
_LISTED = 6


class InitFromError(ValueError):
    """PATH cannot initialise the configured backbone; the message says why and the fix."""


def initialize_backbone(backbone, path: str, *, unsafe_keras: bool = False) -> str:
    """Assigns the backbone weights found at `path` to `backbone`.

    Args:
      backbone: The freshly built backbone of the run.
      path: A `.keras` file, a keras-hub preset directory, a run directory or
        a checkpoint prefix (see the module docstring).
      unsafe_keras: Allow a `.keras` file that needs deserialised code.

    Returns:
      A one-line description of what was loaded, for the run's log.

    Raises:
      InitFromError: `path` is none of those, or its weights do not match
        the backbone (the message names the variables).

    Example:

    >>> from keras_ssl.testing import tiny_backbone                  # doctest: +SKIP
    >>> net = tiny_backbone("resnet_v2")
    >>> initialize_backbone(net, "runs/quickstart/export/step_300/backbone.keras")
    'initialised 48 backbone weights from ...'
    """
    path = os.fspath(path)
    if path.endswith(".keras"):
        return _from_keras_file(backbone, path, unsafe_keras)
    if is_keras_hub_preset(path):
        return _from_preset(backbone, path, unsafe_keras)
    prefix = _checkpoint_prefix(path)
    if prefix is not None:
        return _from_checkpoint(backbone, prefix)
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        beside = os.path.join(path, "backbone.keras")
        hint = (f" Use the .keras beside it: {beside}." if os.path.exists(beside) else
                " Re-export the run with keras-ssl-export --format=saved_model,keras and use "
                "its backbone.keras.")
        raise InitFromError(f"init_from: {path!r} is a SavedModel, whose weights keras-ssl does "
                            f"not map back onto a backbone.{hint}")
    raise InitFromError(
        f"init_from: {path!r} is not a .keras file, a keras-hub preset directory (config.json + "
        f"model.weights.h5), a keras-ssl run directory or a checkpoint prefix (runs/X/ckpt-N).")


def _checkpoint_prefix(path):
    if os.path.exists(path + ".index"):
        return path
    if os.path.isdir(path):
        return tf.train.latest_checkpoint(path)
    return None


def _hub_backbone(backbone, source):
    hub = getattr(backbone, "hub_backbone", None)
    if hub is None:
        family = backbone_spec(backbone).get("family")
        raise InitFromError(
            f"init_from: {source} holds a keras-hub backbone, which initialises only the "
            f"keras_hub family; the run's backbone is {family!r}. Bind "
            f"keras_ssl.build_method.backbone = 'keras_hub' with the same architecture "
            f"(keras_hub.preset = PATH builds it from the preset directly).")
    return hub


def _from_keras_file(backbone, path, unsafe_keras):
    if not os.path.exists(path):
        raise InitFromError(f"init_from: {path!r} does not exist.")
    try:
        source = load_keras_file(path, unsafe=unsafe_keras, flag=UNSAFE_BINDING)
    except ValueError as error:
        raise InitFromError(f"init_from: {error}") from error
    if _is_keras_hub_model(source):
        count = copy_weights(_hub_backbone(backbone, path).weights, source.weights, path)
        return f"initialised {count} backbone weights from {path}"
    from keras_ssl.portable import load_portable_weights

    try:
        load_portable_weights(backbone, source)
    except ValueError as error:
        raise InitFromError(f"init_from: {path!r} does not fit the configured backbone: "
                            f"{error}") from error
    return f"initialised {len(backbone.weights)} backbone weights from {path}"


def _is_keras_hub_model(model):
    return type(model).__module__.startswith("keras_hub.")


def _from_preset(backbone, path, unsafe_keras):
    hub = _hub_backbone(backbone, path)
    try:
        source = load_keras_hub_preset(path, unsafe=unsafe_keras, flag=UNSAFE_BINDING)
    except ValueError as error:
        raise InitFromError(f"init_from: {error}") from error
    count = copy_weights(hub.weights, source.weights, path)
    return f"initialised {count} backbone weights from the keras-hub preset {path}"


def copy_weights(targets, sources, source_name: str) -> int:
    """Assigns `sources` to `targets`, matched by variable path, or names every mismatch.

    Args:
      targets: The variables to assign.
      sources: Variables (or arrays with a `.path`) to read.
      source_name: What the sources are, for the message.

    Returns:
      The number of variables assigned.

    Raises:
      InitFromError: A target without a source, a source without a target,
        or a shape mismatch; nothing is assigned then.
    """
    by_path = {variable.path: variable for variable in sources}
    wanted = {variable.path: variable for variable in targets}
    _check_correspondence(
        {path: tuple(v.shape) for path, v in wanted.items()},
        {path: tuple(v.shape) for path, v in by_path.items()}, source_name)
    for path, variable in wanted.items():
        variable.assign(np.asarray(by_path[path]))
    return len(wanted)


def _check_correspondence(expected: dict, found: dict, source_name: str) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [f"{path} {list(found[path])} (backbone: {list(expected[path])})"
                  for path in sorted(set(expected) & set(found)) if expected[path] != found[path]]
    problems = []
    for label, items in (("of another shape", mismatched), ("missing", missing),
                         ("unexpected", unexpected)):
        if items:
            listed = ", ".join(items[:_LISTED]) + (f" and {len(items) - _LISTED} more"
                                                  if len(items) > _LISTED else "")
            problems.append(f"{len(items)} {label}: {listed}")
    if problems:
        raise InitFromError(
            f"init_from: the weights in {source_name} do not fit the configured backbone "
            f"({'; '.join(problems)}); bind the backbone's architecture to the one saved there.")


def _checkpoint_shapes(prefix):
    """`{path below method/backbone: shape}` of every variable the checkpoint holds there.

    Walks the checkpoint's object graph: a trainable variable is stored once,
    under the first path that reached it (often the optimizer's), and is a
    node of the backbone's subtree too.
    """
    reader = tf.train.load_checkpoint(prefix)
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor(_OBJECT_GRAPH))
    shapes = reader.get_variable_to_shape_map()
    node = 0
    for name in _BACKBONE_PATH:
        children = {child.local_name: child.node_id for child in graph.nodes[node].children}
        if name not in children:
            return {}
        node = children[name]
    found, stack, seen = {}, [(node, "")], {node}
    while stack:
        node, path = stack.pop()
        for attribute in graph.nodes[node].attributes:
            if attribute.name == "VARIABLE_VALUE":
                found[path] = tuple(shapes[attribute.checkpoint_key])
        for child in graph.nodes[node].children:
            if child.node_id not in seen:
                seen.add(child.node_id)
                stack.append((child.node_id, f"{path}/{child.local_name}".lstrip("/")))
    return found


def _readable(backbone, key):
    """`_operations/12/moving_mean` -> the variable's path (`block2_unit1_bn/moving_mean`)."""
    node = backbone
    try:
        for part in key.split("/"):
            node = node[int(part)] if part.isdigit() else getattr(node, part)
        return node.path
    except (AttributeError, IndexError, KeyError, TypeError):
        return key


def _from_checkpoint(backbone, prefix):
    # The backbone's own keys, from a checkpoint of it in the run's layout.
    with tempfile.TemporaryDirectory() as scratch:
        own = tf.train.Checkpoint(method=tf.train.Checkpoint(backbone=backbone))
        expected = _checkpoint_shapes(own.write(os.path.join(scratch, "own")))
    found = _checkpoint_shapes(prefix)
    readable_expected = {_readable(backbone, key): shape for key, shape in expected.items()}
    readable_found = {(_readable(backbone, key) if key in expected else key): shape
                      for key, shape in found.items()}
    _check_correspondence(readable_expected, readable_found, prefix)
    status = tf.train.Checkpoint(method=tf.train.Checkpoint(backbone=backbone)).restore(prefix)
    status.expect_partial()
    status.assert_existing_objects_matched()
    return f"initialised {len(expected)} backbone weights from the checkpoint {prefix}"
