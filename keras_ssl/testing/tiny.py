"""What "tiny" means for the checks: one small backbone, image size, batch and dataset.

A method states what it needs to be cheap at these shapes in its
`tiny_settings()` (see `keras_ssl.Method.tiny_settings`); `build_tiny_method`
builds it from there, and `tiny_examples` gives it images of the size its
settings need.
"""

from __future__ import annotations

# ResNet-10 v2 at k=1 with the small-image stem: 16 root channels, 128-d pre-logits.
TINY_BACKBONE = dict(depth=10, widening_factor=1, small_image_stem=True)

# ViT-Tiny's shape at toy size: 64 wide (one head), 2 blocks, 4-px patches of 16-px images.
TINY_VIT = dict(widening_factor=1, depth=2, patch_size=4, image_size=16)
# keras-hub's ResNet at its smallest (its first stage must be 64 wide), random init.
TINY_KERAS_HUB = dict(class_name="ResNetBackbone", config=dict(
    input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 16],
    stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block"))
# What `tiny_backbone` builds per family (TINY_BACKBONE for the others).
_TINY_BY_FAMILY = {"vit": TINY_VIT, "keras_hub": TINY_KERAS_HUB}

# Image size, batch size and number of examples the checks train on.
TINY_IMAGE_SIZE = 16
TINY_BATCH_SIZE = 4
TINY_NUM_EXAMPLES = 8

# The 3x3 patch grid cut from 45 px out of 48 px, 12 px patches: what Jigsaw,
# Relative Patch Location and PIRL need to fit the tiny images.
TINY_PATCH_GRID = dict(resize=48, crop=45, patch_size=12)

__all__ = ["TINY_BACKBONE", "TINY_BATCH_SIZE", "TINY_IMAGE_SIZE", "TINY_KERAS_HUB",
           "TINY_NUM_EXAMPLES", "TINY_PATCH_GRID", "TINY_VIT", "build_tiny_method", "method_class", "tiny_backbone",
           "tiny_backbone_for", "tiny_examples", "tiny_family", "tiny_method_settings"]


def method_class(method) -> tuple[type, str | None]:
    """`(class, registry name or None)` of a registered name or a `keras_ssl.Method` subclass.

    Raises:
      keras_ssl.registry.UnknownPluginError (a `KeyError`): `method` is a
        name nothing registered.
      TypeError: `method` is neither a name nor a `Method` subclass.
    """
    from keras_ssl.method import Method
    from keras_ssl.registry import METHODS

    if isinstance(method, str):
        return METHODS.get(method), method
    if isinstance(method, type) and issubclass(method, Method):
        registered = [name for name in METHODS.names() if METHODS.get(name) is method]
        return method, (registered[0] if registered else None)
    raise TypeError(f"Expected a registered method name or a keras_ssl.Method subclass; got "
                    f"{method!r}.")


def tiny_backbone(family: str = "resnet_v2", **overrides):
    """Builds the tiny backbone of `family` (`TINY_VIT`, `TINY_KERAS_HUB`, else `TINY_BACKBONE`).

    Args:
      family: A registered backbone family taking those arguments.
      **overrides: Arguments replacing or adding to `TINY_BACKBONE`
        (e.g. `synchronized_bn=True`).

    Returns:
      The backbone model.

    Example:

    >>> net = tiny_backbone()                                  # doctest: +SKIP
    >>> net.endpoint_names[-1]                                 # doctest: +SKIP
    'pre_logits'
    """
    from keras_ssl.backbones import build_backbone

    return build_backbone(family, **{**_TINY_BY_FAMILY.get(family, TINY_BACKBONE), **overrides})


def tiny_backbone_for(method, family: str | None = None, **overrides):
    """The tiny backbone `method` trains on: its `required_backbone`, else `family`.

    Args:
      method: A registered method name or a `keras_ssl.Method` subclass.
      family: The family to build (None: the one the method requires, else
        `resnet_v2`); the method's other required values (a ViT's
        `mask_token`) are added when the family is the one it requires.
      **overrides: Arguments over the tiny ones (see `tiny_backbone`).

    Example:

    >>> tiny_backbone_for("mae").name                          # doctest: +SKIP
    'vit'
    """
    family, required = tiny_family(method, family)
    return tiny_backbone(family, **{**required, **overrides})


def tiny_family(method, family: str | None = None) -> tuple[str, dict]:
    """`(family, its required arguments)` that `tiny_backbone_for` builds for `method`."""
    cls, _ = method_class(method)
    required = dict(cls.required_backbone or {})
    required_family = required.pop("family", None)
    family = family or required_family or "resnet_v2"
    return family, (required if family == (required_family or family) else {})


def tiny_method_settings(method, **overrides) -> dict:
    """The method's `tiny_settings()`, updated by `overrides`.

    Args:
      method: A registered method name or a `keras_ssl.Method` subclass.
      **overrides: Constructor arguments replacing or adding to them.
    """
    cls, _ = method_class(method)
    return {**cls.tiny_settings(), **overrides}


def build_tiny_method(method, backbone=None, **overrides):
    """Builds `method` on the tiny backbone with its tiny settings.

    Args:
      method: A registered method name or a `keras_ssl.Method` subclass.
      backbone: The backbone (default: `tiny_backbone_for(method)`).
      **overrides: Constructor arguments replacing the tiny settings.

    Returns:
      The method, its `registry_name` set as `keras_ssl.building.build_method`
      sets it (the class name for an unregistered class).

    Example:

    >>> simclr = build_tiny_method("simclr")                   # doctest: +SKIP
    """
    cls, name = method_class(method)
    backbone = tiny_backbone_for(cls) if backbone is None else backbone
    instance = cls(backbone, **tiny_method_settings(cls, **overrides))
    instance.registry_name = name or cls.__name__
    return instance


def tiny_examples(method, count: int = TINY_NUM_EXAMPLES, seed: int = 0, **overrides):
    """`count` decoded examples of random images sized for `method`.

    Args:
      method: A registered method name or a `keras_ssl.Method` subclass (a
        method whose tiny settings resize to a patch grid gets images of
        that size, the others `TINY_IMAGE_SIZE`).
      count: Number of examples; labels cycle over 3 classes.
      seed: Seed of the images.
      **overrides: The method's settings over its tiny ones, as the method
        is built.

    Returns:
      A `tf.data.Dataset` of `{"image", "label", "index"}`.
    """
    import numpy as np
    import tensorflow as tf

    size = tiny_method_settings(method, **overrides).get("resize", TINY_IMAGE_SIZE)
    images = np.random.RandomState(seed).rand(count, size, size, 3).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices(
        {"image": images, "label": np.arange(count) % 3, "index": np.arange(count)}
    )
