"""The backbone as a Keras model that loads without keras_ssl, for Keras users to fine-tune.

The contract SavedModel (docs/savedmodel_contract.md) serves TensorFlow
clients. A Keras 3 user can wrap it in `keras.layers.TFSMLayer`, but that
layer is inference-only: its variables do not train, and its batch norm
cannot switch to batch statistics. Loading the native backbone with
`keras.saving.load_model` needs keras_ssl installed for its own layers
(the ViT's token embedding and blocks, RevNet's reversible units, its batch
norm), and their code runs on loading (unsafe deserialisation).

`portable_backbone` rebuilds the backbone at a fixed image size from Keras'
built-in layers and `keras.ops` nodes only, with the native weights and the
native inference math (within float32 rounding); `save_portable` writes it
as a `.keras` file that `keras.saving.load_model(path, safe_mode=True)`
loads in any Python with Keras 3, where `model.fit` trains it like any
other Keras model. `load_portable_weights` takes the weights of such a
model back into a native backbone (continued pretraining from a `.keras`).

What changes on the way:
- keras_ssl's batch norm becomes Keras' (`synchronized=False`): identical at
  inference and, on one replica, in training.
- RevNet: each reversible unit becomes slices, batch norms, ReLUs,
  convolutions, an addition and a concatenation; the downsampling an average
  pooling (`padding="same"`, which excludes the padding from the average as
  `tf.nn.avg_pool2d` does) and a channel padding.
- ViT: the patch check is done once, at conversion; the class token, its
  position embedding, the registers and the patch positions become
  `Embedding` tables read with indices made in the graph (`Embedding`
  is the built-in layer that holds a free trainable matrix). The position
  grid is resized (bicubic, as the native model does) to the patch grid of
  `image_size` at conversion, so a portable model made at another size than
  the learned grid has a grid of its own (named `tokens_position_<h>x<w>`).
  The mask token is used only in masked pretraining, never at inference:
  it is left out. Each transformer block becomes LayerNormalization, Dense
  layers, `keras.ops.dot_product_attention` and additions; LayerScale is
  folded into the Dense layer before it (kernel and bias times the scale:
  the same function), and GELU is written with `keras.ops.erf` (exact GELU,
  not the `Erfc` that Keras lowers it to in TensorFlow, which tf2onnx cannot
  convert).
- Every layer computes in float32, whatever the backbone's dtype policy.
- Weight-decay regularizers are dropped: as in the SavedModel (whose
  `regularization_losses` is empty), weight decay is the fine-tuner's
  choice.
- A layer that is neither a Keras built-in nor keras_ssl's (a keras_hub
  backbone nested in the graph) is copied as it is, with its weights;
  loading the file then needs that layer's package (and, for a class that
  is not registered as safe, `safe_mode=False`).

Example:

>>> from keras_ssl.testing import tiny_backbone               # doctest: +SKIP
>>> net = tiny_backbone("vit")                                # doctest: +SKIP
>>> save_portable(net, "/tmp/vit.keras", image_size=32)      # doctest: +SKIP
'/tmp/vit.keras'

and then, in a Python where keras_ssl is not installed:

>>> import keras                                              # doctest: +SKIP
>>> backbone = keras.saving.load_model("/tmp/vit.keras", safe_mode=True)
>>> logits = keras.layers.Dense(10)(backbone.output["pre_logits"])
>>> classifier = keras.Model(backbone.input, logits)
>>> classifier.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
>>> classifier.fit(images, labels)                            # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Callable, NamedTuple

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_ssl.backbones.common import PadToAtLeast, SymmetricPad
from keras_ssl.backbones.revnet import PoolAndPadChannels, ReversibleUnit
from keras_ssl.backbones.vit import (
    CheckPatchDivisible, PatchTokenMap, Pooling, TokenEmbedding, TransformerBlock, bicubic_matrix,
)
from keras_ssl.normalization import BatchNormalization as SplitFreeBatchNormalization

IMAGES = "images"
SUFFIX = ".keras"
FLOAT32 = "float32"
_OWN_PACKAGES = ("keras_ssl", "keras_ssl_methods")
_HALF_PRECISION = ("mixed_bfloat16", "mixed_float16", "bfloat16", "float16")
_REGULARIZERS = ("kernel_regularizer", "bias_regularizer", "activity_regularizer",
                 "beta_regularizer", "gamma_regularizer", "embeddings_regularizer")


def portable_backbone(backbone: keras.Model, image_size) -> keras.Model:
    """The backbone rebuilt from Keras built-in layers, at a fixed image size, in float32.

    Args:
      backbone: A functional backbone (`keras_ssl.backbones.make_backbone`)
        returning a dict of end-points.
      image_size: The input side (int) or `(height, width)`.

    Returns:
      A functional `keras.Model` with input `images` `[None, h, w, 3]`
      float32 and the backbone's dict of end-points, equal to
      `backbone(images, training=False)` within float32 rounding. Its
      weights are copies: training it leaves `backbone` as it is.

    Raises:
      ValueError: A bad `image_size`, one the backbone cannot take (a ViT
        side its patch does not divide, a backbone built for another size),
        a backbone that is not a functional model of one image input, or a
        keras_ssl layer without a portable form.

    Example:

    >>> from keras_ssl.testing import tiny_backbone           # doctest: +SKIP
    >>> model = portable_backbone(tiny_backbone("resnet_v2"), 32)  # doctest: +SKIP
    >>> model.input.shape                                     # doctest: +SKIP
    (None, 32, 32, 3)
    """
    height, width = _image_size(image_size)
    _check_backbone(backbone, height, width)
    context = _Context()
    # Under a mixed-precision global policy, what Keras makes without an explicit dtype (the
    # input layer, a nested model being deserialised) would take that policy.
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(FLOAT32)
    try:
        images = keras.Input((height, width, 3), dtype=FLOAT32, name=IMAGES)
        model = keras.models.clone_model(
            backbone, input_tensors=images, clone_function=lambda operation: operation,
            call_function=lambda operation, *args, **kwargs: _convert(
                operation, context, *args, **kwargs))
    finally:
        keras.config.set_dtype_policy(policy)
    portable = _weight_map(model)
    for link in _links(backbone, context):
        values = link.forward(*[np.asarray(v.numpy(), np.float32) for v in link.native])
        for key, value in zip(link.portable, values):
            if key not in portable:
                raise RuntimeError(f"portable_backbone: the portable model has no weight {key!r} "
                                   f"for {', '.join(v.path for v in link.native)}.")
            variable = portable.pop(key)
            variable.assign(np.asarray(value, np.float32).reshape(variable.shape))
    if portable:  # A copied layer made weights the native one does not have.
        raise RuntimeError(f"portable_backbone: no native weights for {sorted(portable)}.")
    return model


def save_portable(backbone: keras.Model, path: str, image_size) -> str:
    """Writes `portable_backbone(backbone, image_size)` as a `.keras` file, atomically.

    The file is written beside `path` and renamed into place, so a crash
    leaves no half-written model at `path`; an older file there is replaced.

    Args:
      backbone: A functional backbone (see `portable_backbone`).
      path: Destination, ending in `.keras`; its folder is created.
      image_size: The input side (int) or `(height, width)`.

    Returns:
      `path`.

    Raises:
      ValueError: `path` does not end in `.keras`, or `portable_backbone`
        refuses the backbone or the size.

    Example:

    >>> from keras_ssl.testing import tiny_backbone           # doctest: +SKIP
    >>> save_portable(tiny_backbone("revnet"), "/tmp/revnet.keras", 32)  # doctest: +SKIP
    '/tmp/revnet.keras'
    """
    path = os.fspath(path)
    if not path.endswith(SUFFIX):
        raise ValueError(f"save_portable: the path must end in {SUFFIX!r} (Keras' file format); "
                         f"got {path!r}.")
    model = portable_backbone(backbone, image_size)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{os.path.basename(path)}-", suffix=SUFFIX,
                                       dir=folder)
    os.close(handle)
    try:
        model.save(staging)
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.remove(staging)
    return path


def load_portable_weights(backbone: keras.Model, source) -> None:
    """Assigns the weights of a portable model to the native `backbone`.

    Every native variable the portable model holds is assigned (the ViT's
    LayerScale vectors become 1 and the Dense layers keep the folded
    kernels: the same function); a ViT's mask token, which portable models
    leave out, keeps its value. Nothing is assigned unless everything
    corresponds.

    Args:
      backbone: The native backbone, built with the arguments the portable
        model was made from.
      source: A model from `portable_backbone`, or the path of a `.keras`
        file from `save_portable` (loaded with `safe_mode=True`).

    Raises:
      ValueError: `source` is neither; or its variables do not correspond
        to the backbone's: the message names every missing, unexpected and
        shape-mismatched variable (a ViT converted at another grid than the
        one it learned has `tokens_position_<h>x<w>` of another size).

    Example:

    >>> from keras_ssl.testing import tiny_backbone           # doctest: +SKIP
    >>> native = tiny_backbone("vit")                         # doctest: +SKIP
    >>> load_portable_weights(native, "/tmp/vit.keras")       # doctest: +SKIP
    """
    model = _load_source(source)
    _check_backbone(backbone, None, None)
    portable = _weight_map(model)
    links = _links(backbone, _Context())
    expected = {}
    for link in links:
        values = link.forward(*[np.asarray(v.numpy(), np.float32) for v in link.native])
        for key, value in zip(link.portable, values):
            expected[key] = (tuple(np.shape(value)), link.native)
    missing = [f"{key} (for {', '.join(v.path for v in native)})"
               for key, (_, native) in expected.items() if key not in portable]
    unexpected = [key for key in portable if key not in expected]
    mismatched = [f"{key} {tuple(portable[key].shape)} != {shape}"
                  for key, (shape, _) in expected.items()
                  if key in portable and tuple(portable[key].shape) != shape]
    if missing or unexpected or mismatched:
        problems = [f"{label}: {'; '.join(items)}" for label, items in
                    (("missing", missing), ("unexpected", unexpected),
                     ("shape (portable != native)", mismatched)) if items]
        raise ValueError(
            f"load_portable_weights: the portable model {model.name!r} does not match backbone "
            f"{backbone.name!r}; {' | '.join(problems)}. Build the backbone with the arguments "
            f"the portable model was made from (a ViT converted at its learned image size).")
    updates = []
    for link in links:
        values = link.backward(*[np.asarray(portable[key].numpy(), np.float32)
                                 for key in link.portable])
        updates.extend(zip(link.native, values))
    for variable, value in updates:
        variable.assign(np.asarray(value).reshape(variable.shape).astype(variable.dtype))


# --- conversion ---------------------------------------------------------------------------------


class _Link(NamedTuple):
    """Native variables <-> the portable weights (by key) that hold them.

    `forward(*native arrays) -> portable arrays` and
    `backward(*portable arrays) -> native arrays`, both in the listed orders.
    """

    native: tuple
    portable: tuple
    forward: Callable
    backward: Callable


def _same(variable, key) -> _Link:
    return _Link((variable,), (key,), lambda value: (value,), lambda value: (value,))


class _Context:
    """What one conversion has made: portable layers by name (a shared native layer stays shared)
    and the patch grid each ViT token embedding saw."""

    def __init__(self):
        self.layers = {}
        self.grids = {}

    def layer(self, name, make):
        if name not in self.layers:
            self.layers[name] = make()
        return self.layers[name]

    def copy(self, layer, name=None, cls=None):
        """A float32 copy of built-in `layer` (new name `name`), without regularizers."""
        name = name or layer.name

        def make():
            config = dict(layer.get_config(), name=name, dtype=FLOAT32)
            for key in _REGULARIZERS:
                if key in config:
                    config[key] = None
            if "synchronized" in config:
                config["synchronized"] = False
            return (cls or type(layer)).from_config(config)

        return self.layer(name, make)

    def new(self, cls, name, *args, **kwargs):
        return self.layer(name, lambda: cls(*args, name=name, dtype=FLOAT32, **kwargs))


def _image_size(image_size) -> tuple[int, int]:
    try:
        sides = (image_size, image_size) if np.ndim(image_size) == 0 else tuple(image_size)
        valid = len(sides) == 2 and all(
            not isinstance(s, (bool, str)) and int(s) == s and s >= 1 for s in sides)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(f"portable_backbone: image_size must be a positive int or (height, "
                         f"width); got {image_size!r}.")
    return int(sides[0]), int(sides[1])


def _check_backbone(backbone, height, width) -> None:
    inputs = getattr(backbone, "inputs", None)
    if not hasattr(backbone, "_nodes_by_depth") or not inputs or len(inputs) != 1 \
            or len(inputs[0].shape) != 4 or inputs[0].shape[-1] != 3:
        raise ValueError(f"portable: {getattr(backbone, 'name', backbone)!r} is not a functional "
                         f"backbone of one [batch, height, width, 3] input; build it with "
                         f"keras_ssl.backbones.build_backbone.")
    fixed = tuple(inputs[0].shape[1:3])
    if height is not None and any(f is not None and f != s for f, s in zip(fixed, (height, width))):
        raise ValueError(f"portable_backbone: backbone {backbone.name!r} takes {fixed[0]}x"
                         f"{fixed[1]} images, not {height}x{width}; pass image_size={fixed[0]} "
                         f"or build the backbone with image_size=None.")


def _is_foreign(layer) -> bool:
    """Copied as it is: a nested model, or a layer of a package other than Keras and keras_ssl."""
    return isinstance(layer, keras.Model) or _package(layer) not in ("keras", *_OWN_PACKAGES)


def _package(operation) -> str:
    return type(operation).__module__.split(".")[0]


def _convert(operation, context, *args, **kwargs):
    """The portable form of one call of a native layer (or `keras.ops` node) in the graph."""
    for cls, rule in _RULES:
        if isinstance(operation, cls):
            return rule(operation, context, *args, **kwargs)
    if _package(operation) in _OWN_PACKAGES:
        raise ValueError(
            f"portable_backbone: layer {operation.name!r} ({type(operation).__name__}) has no "
            f"portable form; keras_ssl.portable converts {', '.join(c.__name__ for c, _ in _RULES)} "
            f"and Keras' built-in layers.")
    if _is_foreign(operation):
        return _foreign(operation, context, *args, **kwargs)
    if not isinstance(operation, keras.layers.Layer):
        return operation(*args, **kwargs)  # A keras.ops node: stateless, serialisable as it is.
    return context.copy(operation)(*args, **kwargs)


def _foreign(layer, context, *args, **kwargs):
    """A layer from another package, copied with its config (in float32) to hold its own weights."""
    inner = [sub for sub in layer._flatten_layers(include_self=False)
             if _package(sub) in _OWN_PACKAGES]
    if inner:
        raise ValueError(f"portable_backbone: {layer.name!r} ({type(layer).__name__}) holds the "
                         f"keras_ssl layer {inner[0].name!r}, which a nested model cannot carry; "
                         f"build the backbone as one functional graph.")

    def make():
        return keras.saving.deserialize_keras_object(
            _float32_policies(keras.saving.serialize_keras_object(layer)))

    return context.layer(layer.name, make)(*args, **kwargs)


def _float32_policies(config):
    """`config` (a serialised layer) with every half-precision dtype policy in it made float32."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and \
                config.get("config", {}).get("name") in _HALF_PRECISION:
            return FLOAT32
        return {key: FLOAT32 if key == "dtype" and value in _HALF_PRECISION
                else _float32_policies(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_float32_policies(value) for value in config]
    return config


def _batch_norm(layer, context, x, **kwargs):
    return context.copy(layer, cls=keras.layers.BatchNormalization)(x, **kwargs)


def _pad_to_at_least(layer, context, x):
    pads = [max(layer.size - side, 0) for side in x.shape[1:3]]
    if not any(pads):
        return x
    padding = tuple((p // 2, p - p // 2) for p in pads)
    return context.new(keras.layers.ZeroPadding2D, layer.name, padding)(x)


def _symmetric_pad(layer, context, x):
    if layer.value == 0:
        return context.new(keras.layers.ZeroPadding2D, layer.name, layer.pad)(x)
    p = layer.pad
    return ops.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], constant_values=layer.value)


def _reversible_unit(layer, context, x, training=None):
    del training
    half = x.shape[-1] // 2
    x1, y = x[..., :half], x[..., half:]
    for norm, conv in zip(layer.norms, layer.convs):
        y = context.copy(norm, cls=keras.layers.BatchNormalization)(y)
        y = context.new(keras.layers.ReLU, f"{norm.name}_relu")(y)
        y = context.copy(conv)(y)
    y1 = context.new(keras.layers.Add, f"{layer.name}_add")([x1, y])
    return context.new(keras.layers.Concatenate, layer.name, axis=-1)([x[..., half:], y1])


def _pool_and_pad(layer, context, x):
    if layer.stride > 1:
        x = context.new(keras.layers.AveragePooling2D, f"{layer.name}_pool", layer.stride,
                        layer.stride, padding="same")(x)
    extra = layer.channels - x.shape[-1]
    return ops.pad(x, [[0, 0], [0, 0], [0, 0], [extra // 2, extra - extra // 2]]) if extra else x


def _check_patch(layer, context, images):
    del context
    for side in images.shape[1:3]:
        if side % layer.patch_size:
            raise ValueError(
                f"portable_backbone: the image side {side} is not a multiple of the ViT's patch "
                f"size {layer.patch_size}; pass an image_size that is, e.g. "
                f"{max(side // layer.patch_size, 1) * layer.patch_size}.")
    return images


def _index_range(column, length):
    """`[batch, length]` float indices 0 .. length-1, made from `column` `[batch, 1]`."""
    ones = ops.ones_like(ops.repeat(column, length, axis=1) if length > 1 else column)
    return ops.cumsum(ones, axis=1) - 1.0


def _token_embedding(layer, context, patch_map, keep=None, masked=None):
    if keep is not None or masked is not None:
        raise ValueError("portable_backbone: the ViT's token embedding is called with keep/masked "
                         "in the graph; a portable model encodes every patch, unmasked.")
    height, width, channels = patch_map.shape[1:]
    context.grids[layer.name] = (height, width)
    name = layer.name
    patches = context.new(keras.layers.Reshape, f"{name}_patches",
                          (height * width, channels))(patch_map)
    column = ops.zeros_like(patches[:, :1, 0])  # [batch, 1]
    positions = context.new(keras.layers.Embedding, _position_name(name, height, width),
                            height * width, channels)(_index_range(column, height * width))
    patches = context.new(keras.layers.Add, f"{name}_patches_positions")([patches, positions])
    class_token = context.new(keras.layers.Embedding, f"{name}_class_token", 1, channels)(column)
    class_position = context.new(keras.layers.Embedding, f"{name}_class_position", 1,
                                 channels)(column)
    prefix = [context.new(keras.layers.Add, f"{name}_class")([class_token, class_position])]
    if layer.num_registers:
        prefix.append(context.new(keras.layers.Embedding, f"{name}_registers",
                                  layer.num_registers, channels)(
            _index_range(column, layer.num_registers)))
    return context.new(keras.layers.Concatenate, name, axis=1)([*prefix, patches])


def _position_name(name, height, width):
    return f"{name}_position_{height}x{width}"


def _gelu(x):
    # Exact GELU through erf: tf2onnx converts Erf, not the Erfc TensorFlow's gelu uses.
    return 0.5 * x * (1.0 + ops.erf(x * (1.0 / math.sqrt(2.0))))


def _transformer_block(layer, context, x, attention_mask=None, training=None):
    del training
    if attention_mask is not None:
        raise ValueError("portable_backbone: a transformer block is called with an attention mask "
                         "in the graph; a portable model attends to every token.")
    name, tokens, width = layer.name, x.shape[1], x.shape[-1]
    heads = layer.num_heads
    h = context.copy(layer.norm1, f"{name}_norm1")(x)
    qkv = context.copy(layer.qkv, f"{name}_qkv")(h)
    qkv = context.new(keras.layers.Reshape, f"{name}_qkv_heads",
                      (tokens, 3, heads, width // heads))(qkv)
    attended = ops.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
    attended = context.new(keras.layers.Reshape, f"{name}_attention", (tokens, width))(attended)
    update = context.copy(layer.projection, f"{name}_projection")(attended)
    x = context.new(keras.layers.Add, f"{name}_residual1")([x, update])
    h = context.copy(layer.fc1, f"{name}_fc1")(context.copy(layer.norm2, f"{name}_norm2")(x))
    update = context.copy(layer.fc2, f"{name}_fc2")(_gelu(h))
    return context.new(keras.layers.Add, name)([x, update])


def _patch_token_map(layer, context, tokens, patch_map):
    height, width = patch_map.shape[1:3]
    return context.new(keras.layers.Reshape, layer.name, (height, width, tokens.shape[-1]))(
        tokens[:, layer.num_prefix_tokens:])


def _pooling(layer, context, tokens):
    if layer.pooling == "class_token":
        return context.new(keras.layers.Identity, layer.name)(tokens[:, 0])
    return context.new(keras.layers.GlobalAveragePooling1D, layer.name)(
        tokens[:, layer.num_prefix_tokens:])


# Order matters: keras_ssl's batch norm is a Keras BatchNormalization too.
_RULES = (
    (SplitFreeBatchNormalization, _batch_norm),
    (PadToAtLeast, _pad_to_at_least),
    (SymmetricPad, _symmetric_pad),
    (ReversibleUnit, _reversible_unit),
    (PoolAndPadChannels, _pool_and_pad),
    (CheckPatchDivisible, _check_patch),
    (TokenEmbedding, _token_embedding),
    (TransformerBlock, _transformer_block),
    (PatchTokenMap, _patch_token_map),
    (Pooling, _pooling),
)


# --- weights ------------------------------------------------------------------------------------


def _weight_keys(layer, name=None) -> list[str]:
    """The paths the portable copy of `layer` (renamed `name`) gives its weights.

    A built-in layer at the top of the portable graph names them
    `layer/weight`; a copied foreign layer keeps the paths its weights have,
    which are those of its sublayers (a nested model's own name is Keras'
    counter, not stable across processes).
    """
    if name is None and _is_foreign(layer):
        return [w.path for w in layer.weights]
    return [f"{name or layer.name}/{w.name}" for w in layer.weights]


def _weight_map(model) -> dict:
    """`{path: variable}` of a portable model (the keys `_links` uses)."""
    found = {}
    for variable in model.weights:
        if variable.path in found:
            raise ValueError(f"portable: two weights of {model.name!r} have the path "
                             f"{variable.path!r}; give the layers holding them distinct names.")
        found[variable.path] = variable
    return found


def _same_layer(layer, name=None) -> list[_Link]:
    return [_same(w, key) for w, key in zip(layer.weights, _weight_keys(layer, name))]


def _links(backbone, context) -> list[_Link]:
    """How each native variable maps onto the portable weights (see `_Link`)."""
    links = []
    for layer in backbone.layers:
        if isinstance(layer, ReversibleUnit):
            for norm, conv in zip(layer.norms, layer.convs):
                links += _same_layer(norm) + _same_layer(conv)
        elif isinstance(layer, TokenEmbedding):
            links += _token_links(layer, context.grids.get(layer.name, (layer.grid, layer.grid)))
        elif isinstance(layer, TransformerBlock):
            links += _block_links(layer)
        else:
            links += _same_layer(layer)
    return links


def _token_links(layer, grid) -> list[_Link]:
    name, width = layer.name, int(layer.class_token.shape[-1])
    vector = (lambda value: (value.reshape(1, width),), lambda value: (value.reshape(1, 1, width),))
    links = [_Link((layer.class_token,), (f"{name}_class_token/embeddings",), *vector),
             _Link((layer.class_position,), (f"{name}_class_position/embeddings",), *vector)]
    if layer.registers is not None:
        links.append(_Link((layer.registers,), (f"{name}_registers/embeddings",),
                           lambda value: (value.reshape(-1, width),),
                           lambda value: (value.reshape(1, -1, width),)))
    height, columns = grid
    learned = layer.grid

    def resized(value):
        if (height, columns) != (learned, learned):
            # As `TokenEmbedding.positions` resizes at every call of the native model.
            value = tf.einsum("hi,bijc,wj->bhwc", bicubic_matrix(height, learned), value,
                              bicubic_matrix(columns, learned)).numpy()
        return (value.reshape(height * columns, width),)

    links.append(_Link((layer.position,), (f"{_position_name(name, height, columns)}/embeddings",),
                       resized, lambda value: (value.reshape(1, learned, learned, width),)))
    return links


def _block_links(layer) -> list[_Link]:
    name = layer.name
    links = []
    for i, sub in enumerate((layer.norm1, layer.qkv, layer.projection, layer.norm2, layer.fc1,
                             layer.fc2)):
        key = f"{name}_{sub.name}"
        scale = None
        if layer.scales is not None and sub in (layer.projection, layer.fc2):
            scale = layer.scales[0 if sub is layer.projection else 1]
        if scale is None:
            links += _same_layer(sub, key)
        else:
            links.append(_Link(
                (sub.kernel, sub.bias, scale), (f"{key}/kernel", f"{key}/bias"),
                lambda kernel, bias, s: (kernel * s, bias * s),
                lambda kernel, bias: (kernel, bias, np.ones_like(bias))))
    return links


def _load_source(source) -> keras.Model:
    if isinstance(source, keras.Model):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not path.endswith(SUFFIX) or not os.path.isfile(path):
            raise ValueError(f"load_portable_weights: {path!r} is not a {SUFFIX} file; pass one "
                             f"written by keras_ssl.portable.save_portable (or its model).")
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    raise ValueError(f"load_portable_weights: source must be a keras.Model or a {SUFFIX} path; "
                     f"got {type(source).__name__}.")
