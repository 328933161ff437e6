"""What every backbone is: a functional Keras model returning named end-points.

A backbone maps float32 images `[batch, height, width, 3]` in [0, 1] to a
dict of tensors, one per end-point, and always includes `pre_logits`
(`[batch, D]`). The export writes every end-point into the SavedModel's
`representation` signature, so evaluation can probe any layer.
"""

from __future__ import annotations

import keras

PRE_LOGITS = "pre_logits"


def make_backbone(inputs, endpoints: dict, *, name: str, spec: dict) -> keras.Model:
    """Wraps a graph of layers into a backbone model.

    Args:
      inputs: The `keras.Input` of the graph.
      endpoints: Ordered dict of end-point name -> tensor; must contain
        `pre_logits` of rank 2.
      name: The model's name.
      spec: JSON-serialisable description (family, depth, widening factor,
        ...) recorded in exports.

    Returns:
      A `keras.Model` whose call returns the dict of end-points, with
      attributes `endpoint_names` and `spec`.
    """
    if PRE_LOGITS not in endpoints:
        raise ValueError(
            f"Backbone {name!r} must return a {PRE_LOGITS!r} end-point; it "
            f"returns {list(endpoints)}."
        )
    if len(endpoints[PRE_LOGITS].shape) != 2:
        raise ValueError(
            f"Backbone {name!r}: {PRE_LOGITS!r} must be [batch, D], got shape "
            f"{endpoints[PRE_LOGITS].shape}."
        )
    model = keras.Model(inputs, dict(endpoints), name=name)
    # Plain attributes (a tuple and a JSON string) so Keras' attribute
    # tracking does not wrap them.
    model.endpoint_names = tuple(endpoints)
    model._spec_items = tuple(sorted(spec.items()))
    return model


def backbone_spec(backbone: keras.Model) -> dict:
    """The `spec` given to `make_backbone` (empty for foreign models)."""
    return dict(getattr(backbone, "_spec_items", ()))


def output_dim(backbone: keras.Model) -> int:
    """Width D of the backbone's pre-logits."""
    return int(backbone.output[PRE_LOGITS].shape[-1])
