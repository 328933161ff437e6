"""Backbones: functional Keras models that return named end-points.

Families are registered in the `keras_ssl.backbones` entry-point group and
built by name, with their parameters bound by gin (`resnet_v2.depth = 18`).
"""

from keras_ssl.backbones.base import (
    PRE_LOGITS, BackboneInputError, backbone_spec, make_backbone, output_dim,
)


def build_backbone(name: str, **kwargs):
    """Builds the backbone registered as `name` (gin bindings apply).

    Args:
      name: Registered family name, e.g. `"resnet_v2"`.
      **kwargs: Overrides of the family's arguments.

    Returns:
      A `keras.Model` returning a dict of end-points.
    """
    from keras_ssl.registry import BACKBONES

    return BACKBONES.get(name)(**kwargs)


__all__ = ["PRE_LOGITS", "BackboneInputError", "backbone_spec", "build_backbone", "make_backbone",
           "output_dim"]
