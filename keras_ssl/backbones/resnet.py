"""ResNet v2 (pre-activation) with the widening factor of Kolesnikov et al.

Widths follow Kolesnikov et al. (2019): the root convolution has `16 k`
channels and blocks 1-4 output `64 k, 128 k, 256 k, 512 k` channels with
bottleneck units (inner width = output / 4). Networks of basic units
(depths 10, 18, 34) use the bottleneck inner widths `16 k .. 128 k` as their
block outputs, so `k = 4` gives the standard ResNet-18/34/50 widths and a
2048-d pre-logits for ResNet-50.
"""

from __future__ import annotations

import keras

from keras_ssl.backbones.base import make_backbone

# depth -> (unit type, units per block)
_DEPTHS = {
    10: ("basic", (1, 1, 1, 1)),
    18: ("basic", (2, 2, 2, 2)),
    26: ("bottleneck", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


class _Layers:
    """Builds convolutions and batch norms with the network's shared options."""

    def __init__(self, weight_decay, bn_momentum, bn_epsilon, synchronized_bn):
        # Keras' L2(l) adds l * sum(w^2), whose gradient is 2 l w; weight
        # decay wd in the papers means a gradient of wd * w, hence wd / 2.
        self._regularizer = (
            keras.regularizers.L2(weight_decay / 2) if weight_decay else None
        )
        self._bn = dict(
            momentum=bn_momentum, epsilon=bn_epsilon, synchronized=synchronized_bn
        )

    def conv(self, x, filters, kernel, stride, name):
        return keras.layers.Conv2D(
            filters,
            kernel,
            strides=stride,
            padding="same",
            use_bias=False,
            kernel_initializer="he_normal",
            kernel_regularizer=self._regularizer,
            name=name,
        )(x)

    def bn_relu(self, x, name, relu=True):
        x = keras.layers.BatchNormalization(name=f"{name}_bn", **self._bn)(x)
        return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _unit_v2(layers: _Layers, x, filters, stride, kind, name):
    """One pre-activation residual unit; `filters` is the unit's output width."""
    preact = layers.bn_relu(x, f"{name}_preact")
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.conv(preact, filters, 1, stride, f"{name}_shortcut")
    else:
        shortcut = x
    if kind == "bottleneck":
        inner = filters // 4
        y = layers.conv(preact, inner, 1, 1, f"{name}_conv1")
        y = layers.bn_relu(y, f"{name}_conv1")
        y = layers.conv(y, inner, 3, stride, f"{name}_conv2")
        y = layers.bn_relu(y, f"{name}_conv2")
        y = layers.conv(y, filters, 1, 1, f"{name}_conv3")
    else:
        y = layers.conv(preact, filters, 3, stride, f"{name}_conv1")
        y = layers.bn_relu(y, f"{name}_conv1")
        y = layers.conv(y, filters, 3, 1, f"{name}_conv2")
    return keras.layers.Add(name=f"{name}_add")([shortcut, y])


def resnet_v2(
    depth: int = 50,
    widening_factor: int = 4,
    last_relu: bool = True,
    small_image_stem: bool = False,
    root_stride: int = 2,
    root_pool: bool = True,
    block_strides: tuple = (1, 2, 2, 2),
    weight_decay: float = 1e-4,
    bn_momentum: float = 0.99,
    bn_epsilon: float = 1e-3,
    synchronized_bn: bool = False,
    image_size: int | None = None,
    name: str | None = None,
) -> keras.Model:
    """Builds a pre-activation ResNet (He et al. 2016, "v2").

    End-points: `after_root` (after the root conv and max-pool),
    `block1`..`block3` (the residual stream after each block), `block4`
    (after the final batch norm, and ReLU if `last_relu`) and `pre_logits`
    (global average of `block4`).

    Args:
      depth: 10, 18, 26, 34, 50, 101 or 152.
      widening_factor: k; root width 16 k, block outputs 64 k .. 512 k
        (bottleneck) or 16 k .. 128 k (basic units).
      last_relu: Apply ReLU after the final batch norm. False gives the
        "(-)" variants of Kolesnikov et al.
      small_image_stem: For 32-px images: a 3x3 stride-1 root convolution
        and no max-pool (overrides `root_stride` and `root_pool`).
      root_stride: Stride of the 7x7 root convolution.
      root_pool: Apply the 3x3 stride-2 max-pool after the root.
      block_strides: Stride of the first unit of each of the four blocks.
      weight_decay: Decay on convolution kernels (gradient `wd * w`).
      bn_momentum: Batch-norm moving-average momentum.
      bn_epsilon: Batch-norm epsilon.
      synchronized_bn: Compute batch statistics across replicas.
      image_size: Fixes the input height/width; None accepts any size.
      name: Model name (default `resnet{depth}_v2`).

    Returns:
      A backbone (see `keras_ssl.backbones.base.make_backbone`).

    Example:

    >>> net = resnet_v2(depth=10, widening_factor=1, small_image_stem=True)
    >>> out = net(keras.ops.zeros((2, 32, 32, 3)))
    >>> tuple(out["pre_logits"].shape)
    (2, 128)
    """
    if depth not in _DEPTHS:
        raise ValueError(
            f"resnet_v2: unsupported depth {depth}; choose one of {sorted(_DEPTHS)}."
        )
    if widening_factor < 1 or int(widening_factor) != widening_factor:
        raise ValueError(
            f"resnet_v2: widening_factor must be a positive integer, got "
            f"{widening_factor}."
        )
    if len(block_strides) != 4:
        raise ValueError(
            f"resnet_v2: block_strides needs 4 entries, got {block_strides}."
        )
    kind, units = _DEPTHS[depth]
    k = int(widening_factor)
    widths = [64 * k * 2**i for i in range(4)]
    if kind == "basic":
        widths = [w // 4 for w in widths]
    layers = _Layers(weight_decay, bn_momentum, bn_epsilon, synchronized_bn)

    inputs = keras.Input((image_size, image_size, 3), name="images")
    if small_image_stem:
        x = layers.conv(inputs, 16 * k, 3, 1, "root_conv")
    else:
        x = layers.conv(inputs, 16 * k, 7, root_stride, "root_conv")
        if root_pool:
            x = keras.layers.MaxPooling2D(3, 2, padding="same", name="root_pool")(x)
    endpoints = {"after_root": x}
    for b, (width, n, stride) in enumerate(zip(widths, units, block_strides)):
        for u in range(n):
            x = _unit_v2(
                layers, x, width, stride if u == 0 else 1, kind, f"block{b + 1}_unit{u + 1}"
            )
        if b == 3:
            x = layers.bn_relu(x, "final", relu=last_relu)
        endpoints[f"block{b + 1}"] = x
    endpoints["pre_logits"] = keras.layers.GlobalAveragePooling2D(name="pre_logits")(x)
    spec = dict(
        family="resnet_v2",
        depth=depth,
        widening_factor=k,
        last_relu=last_relu,
        small_image_stem=small_image_stem,
    )
    return make_backbone(
        inputs, endpoints, name=name or f"resnet{depth}_v2", spec=spec
    )
