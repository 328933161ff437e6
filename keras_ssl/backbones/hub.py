"""keras-hub backbones as a keras-ssl family (`keras_hub`).

Any `keras_hub.models.Backbone` for images becomes a keras-ssl backbone: a
preset (a keras-hub preset directory, or a preset name where the machine can
download it) with its weights, or a class and its config at random
initialisation. Pre-training on it is continued pre-training of someone
else's network on your data; its export writes a keras-hub preset beside the
SavedModel (`keras_hub_preset/`), which `keras_hub.models.Backbone.from_preset`
loads without keras_ssl.

End-points: each of the backbone's `pyramid_outputs` under its keras-hub name
(`P2`..`P5` for the CNNs; a Transformer's token sequences become the patch
grid's `[B, h, w, C]` map), and `pre_logits`: the global average of a final
feature map, or a Transformer's class token.

Images reach the keras-hub network as keras-ssl feeds every backbone: float32
in [0, 1]. A preset whose image converter rescales (keras-hub's presets expect
[0, 255] and normalise with their own scale and offset) gets that converter's
per-channel `scale` and `offset` applied to `255 * images`, inside the
backbone, so the export includes it.
"""

from __future__ import annotations

import inspect
import os

import keras
import numpy as np
from keras_ssl_eval.reading.keras_models import load_keras_hub_preset, preset_image_converter

from keras_ssl.backbones.base import make_backbone

FAMILY = "keras_hub"
_UNSAFE_PRESET = "keras_hub.unsafe_preset = True"


def _import_keras_hub():
    try:
        import keras_hub
    except ImportError as error:
        raise ImportError(
            "The keras_hub backbone family needs the keras-hub package: "
            "pip install 'keras-ssl[keras-hub]'.") from error
    return keras_hub


def _hub_network(keras_hub, preset, class_name, config, image_size, unsafe_preset):
    image_shape = None if image_size is None else (int(image_size), int(image_size), 3)
    if preset is not None:
        if class_name is not None or config:
            raise ValueError(
                "keras_hub: bind either keras_hub.preset (a preset and its weights) or "
                "keras_hub.class_name with keras_hub.config (random initialisation), not both.")
        overrides = {} if image_shape is None else {"image_shape": image_shape}
        try:
            if os.path.isdir(preset):  # a local preset loads in Keras' safe mode
                return load_keras_hub_preset(preset, unsafe=unsafe_preset, flag=_UNSAFE_PRESET,
                                             **overrides)
            return keras_hub.models.Backbone.from_preset(preset, **overrides)
        except (FileNotFoundError, ValueError, OSError) as error:
            raise ValueError(
                f"keras_hub: cannot load the preset {preset!r} ({str(error).splitlines()[0]}); "
                f"give a keras-hub preset directory (config.json, model.weights.h5) or a preset "
                f"name this machine can download.") from error
    if class_name is None:
        raise ValueError("keras_hub: bind keras_hub.preset (a preset directory or name) or "
                         "keras_hub.class_name (e.g. 'ResNetBackbone') with keras_hub.config.")
    cls = getattr(keras_hub.models, str(class_name), None)
    if not (inspect.isclass(cls) and issubclass(cls, keras_hub.models.Backbone)):
        known = sorted(n for n in dir(keras_hub.models)
                       if n.endswith("Backbone") and n != "Backbone")
        raise ValueError(f"keras_hub: {class_name!r} is not a keras_hub.models backbone; "
                         f"choose one of {known[:12]}... (keras_hub.models.*Backbone).")
    config = dict(config or {})
    if image_shape is not None and "image_shape" in inspect.signature(cls.__init__).parameters:
        config.setdefault("image_shape", image_shape)
    try:
        return cls(**config)
    except (TypeError, ValueError) as error:
        raise ValueError(f"keras_hub: {class_name}(**keras_hub.config) refused the config: "
                         f"{str(error).splitlines()[0]}") from error


def _as_map(name, tensor, grid):
    """A pyramid output as an end-point: maps as they are, token sequences as the patch grid."""
    if len(tensor.shape) == 4:
        return tensor
    if len(tensor.shape) == 3 and grid is not None:
        tokens, width = tensor.shape[1], tensor.shape[-1]
        prefix = tokens - grid * grid
        patches = tensor[:, prefix:]
        return keras.layers.Reshape((grid, grid, width), name=f"{name}_grid")(patches)
    raise ValueError(f"keras_hub: pyramid output {name!r} has shape {tensor.shape}, neither a "
                     f"[B, H, W, C] map nor a token sequence of a known patch grid.")


def keras_hub_backbone(
    preset: str | None = None,
    class_name: str | None = None,
    config: dict | None = None,
    image_size: int | None = None,
    weight_decay: float = 0.0,
    synchronized_bn: bool = False,
    unsafe_preset: bool = False,
    name: str | None = None,
) -> keras.Model:
    """Builds a keras-hub image backbone with keras-ssl's end-points.

    Args:
      preset: A keras-hub preset directory (or name), weights included.
      class_name: A `keras_hub.models` backbone class, e.g. `"ResNetBackbone"`,
        built at random initialisation from `config` (not with `preset`).
      config: The class's constructor arguments.
      image_size: Fixes the input side (`image_shape`); None keeps the
        preset's or class's default.
      weight_decay: Decay on every kernel (convolutions and dense layers) as
        an L2 loss (gradient `wd * w`), as the other families apply it; leave
        0 with a decoupled decay (AdamW).
      synchronized_bn: Must be False: keras-hub's batch norms are Keras' own,
        unsynchronized; the value is what the heads on this backbone follow.
      unsafe_preset: Load a preset directory whose config needs deserialised
        code (Keras' safe mode off); only for presets you trust.
      name: Model name (default `keras_hub_<class>`).

    Returns:
      A backbone (see `keras_ssl.backbones.base.make_backbone`) with attribute
      `hub_backbone`, the keras-hub network, whose preset the export writes.

    Example:

    >>> net = keras_hub_backbone(class_name="ResNetBackbone", config=dict(   # doctest: +SKIP
    ...     input_conv_filters=[64], input_conv_kernel_sizes=[3],
    ...     stackwise_num_filters=[64, 16], stackwise_num_blocks=[1, 1],
    ...     stackwise_num_strides=[1, 2], block_type="basic_block"), image_size=16)
    >>> sorted(net.endpoint_names)                                           # doctest: +SKIP
    ['P2', 'P3', 'pre_logits']
    """
    if synchronized_bn:
        raise ValueError("keras_hub: synchronized_bn = True is not available: keras-hub's batch "
                         "norms compute per-replica statistics; leave it False.")
    keras_hub = _import_keras_hub()
    if unsafe_preset and not (preset and os.path.isdir(preset)):
        raise ValueError("keras_hub: unsafe_preset = True applies to a preset directory only; "
                         "bind keras_hub.preset to one or remove it.")
    hub = _hub_network(keras_hub, preset, class_name, config, image_size, unsafe_preset)
    if len(hub.inputs) != 1 or len(hub.inputs[0].shape) != 4:
        raise ValueError(f"keras_hub: {type(hub).__name__} takes {[i.shape for i in hub.inputs]}; "
                         f"the family needs one image input [B, H, W, 3].")
    size = hub.inputs[0].shape[1]
    inputs = keras.Input((size, size, 3), name="images")
    x = inputs
    converter = preset_image_converter(preset) if preset and os.path.isdir(preset) else None
    if converter and (converter["scale"] is not None or converter["offset"] is not None):
        scale = np.asarray(1.0 if converter["scale"] is None else converter["scale"], "float32")
        x = keras.layers.Rescaling(255.0 * scale, offset=converter["offset"] or 0.0,
                                   name="image_converter")(x)
    pyramid = dict(getattr(hub, "pyramid_outputs", None) or {})
    features = keras.Model(hub.inputs, {"final": hub.output, **pyramid},
                           name=f"{hub.name}_features")(x)
    patch = hub.get_config().get("patch_size")
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    grid = size // patch if (patch and size) else None
    endpoints = {key: _as_map(key, features[key], grid) for key in pyramid}
    final = features["final"]
    if len(final.shape) == 4:
        endpoints["pre_logits"] = keras.layers.GlobalAveragePooling2D(name="pre_logits")(final)
    elif len(final.shape) == 3:
        endpoints["pre_logits"] = keras.layers.Identity(name="pre_logits")(final[:, 0])
    else:
        endpoints["pre_logits"] = final
    spec = dict(family=FAMILY, class_name=type(hub).__name__, preset=preset,
                synchronized_bn=False)
    model = make_backbone(inputs, endpoints, name=name or f"keras_hub_{type(hub).__name__}",
                          spec=spec)
    if weight_decay:
        # keras-hub builds its layers without regularizers; a variable's own
        # regularizer counts in the model's losses like one given to its layer.
        for variable in hub.weights:
            if variable.path.endswith("kernel"):
                variable.regularizer = keras.regularizers.L2(weight_decay / 2)
    model.hub_backbone = hub
    return model
