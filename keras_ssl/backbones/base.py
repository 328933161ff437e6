"""What every backbone is: a functional Keras model returning named end-points.

A backbone maps float32 images `[batch, height, width, 3]` in [0, 1] to a
dict of tensors, one per end-point, and always includes `pre_logits`
(`[batch, D]`). The export writes every end-point into the SavedModel's
`representation` signature, so evaluation can probe any layer.
"""

from __future__ import annotations

import re

import keras

PRE_LOGITS = "pre_logits"


class BackboneInputError(ValueError):
    """An input the backbone cannot take (a ViT's image side its patch does not divide).

    Raised while a step is traced; the training binary reports it in one line
    before the run directory exists.
    """

    def message(self) -> str:
        """The message as raised, without what Keras adds around it in a layer's call."""
        text = str(self)
        # Keras re-raises "Exception encountered when calling L.call().\n\n<bold>...</bold>".
        bold = re.search(r"\x1b\[1m(.*?)\x1b\[0m", text, flags=re.S)
        text = bold.group(1) if bold else text
        return text.strip().splitlines()[0] if text.strip() else text


def make_backbone(inputs, endpoints: dict, *, name: str, spec: dict) -> keras.Model:
    """Wraps a graph of layers into a backbone model, checking the end-point contract.

    The contract (docs/backbones.md): `pre_logits` is a `[batch, D]` vector;
    every other end-point is a `[batch, height, width, channels]` map or a
    `[batch, D]` vector (AlexNet's `fc6`), with its last dimension known. The
    evaluation pools maps and reads vectors as they are, so a token sequence
    `[batch, tokens, D]` must be reshaped to its `[batch, h, w, D]` grid (or
    pooled) before it becomes an end-point.

    Args:
      inputs: The `keras.Input` of the graph.
      endpoints: Ordered dict of end-point name -> tensor.
      name: The model's name.
      spec: JSON-serialisable description (family, depth, widening factor,
        ...) recorded in exports.

    Returns:
      A `keras.Model` whose call returns the dict of end-points, with
      attributes `endpoint_names` and `spec`.

    Raises:
      ValueError: `pre_logits` is missing or not `[batch, D]`, or another
        end-point is neither a map nor a vector; the message names the
        end-point, its shape and what it must be.

    Example:

    >>> inputs = keras.Input((32, 32, 3))
    >>> block1 = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    >>> pooled = keras.layers.GlobalAveragePooling2D()(block1)
    >>> net = make_backbone(inputs, {"block1": block1, "pre_logits": pooled},
    ...                     name="tiny", spec={"family": "tiny"})
    >>> net.endpoint_names
    ('block1', 'pre_logits')
    """
    if PRE_LOGITS not in endpoints:
        raise ValueError(
            f"Backbone {name!r} must return a {PRE_LOGITS!r} end-point; it "
            f"returns {list(endpoints)}."
        )
    for endpoint, tensor in endpoints.items():
        _check_endpoint(name, endpoint, tensor.shape)
    model = keras.Model(inputs, dict(endpoints), name=name)
    # Plain attributes (a tuple and a JSON string) so Keras' attribute
    # tracking does not wrap them.
    model.endpoint_names = tuple(endpoints)
    model._spec_items = tuple(sorted(spec.items()))
    return model


def _check_endpoint(backbone: str, endpoint: str, shape) -> None:
    """Refuses an end-point outside the contract (see `make_backbone`)."""
    rank = len(shape)
    if endpoint == PRE_LOGITS and rank != 2:
        raise ValueError(
            f"Backbone {backbone!r}: {PRE_LOGITS!r} must be [batch, D], got shape {shape}; "
            f"pool the last feature map (global average) or flatten it.")
    if rank not in (2, 4):
        fix = (" A token sequence [batch, tokens, D] becomes a map by reshaping its patch "
               "tokens to [batch, h, w, D]." if rank == 3 else "")
        raise ValueError(
            f"Backbone {backbone!r}: end-point {endpoint!r} has shape {shape}; an end-point "
            f"must be a [batch, height, width, channels] map or a [batch, D] vector.{fix}")
    if shape[-1] is None:
        raise ValueError(
            f"Backbone {backbone!r}: end-point {endpoint!r} has shape {shape}; its last "
            f"dimension (channels or D) must be known when the backbone is built.")


def backbone_spec(backbone: keras.Model) -> dict:
    """The `spec` given to `make_backbone` (empty for foreign models)."""
    return dict(getattr(backbone, "_spec_items", ()))


def output_dim(backbone: keras.Model) -> int:
    """Width D of the backbone's pre-logits."""
    return int(backbone.output[PRE_LOGITS].shape[-1])
