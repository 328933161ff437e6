"""ResNet v1 and v2 with the widening factor of Kolesnikov et al.

Widths follow Kolesnikov et al. (2019): the root convolution has `16 k`
channels and blocks 1-4 output `64 k, 128 k, 256 k, 512 k` channels with
bottleneck units (inner width = output / 4). Networks of basic units
(depths 10, 18, 34) use the bottleneck inner widths `16 k .. 128 k` as their
block outputs, so `k = 4` gives the standard ResNet-18/34/50 widths and a
2048-d pre-logits for ResNet-50.

Both versions share the depth table, the layer factory, the stem and the
block loop; they differ in the unit (`_unit_v1`: post-activation, stride on
the 3x3 conv ("v1.5"), projection shortcuts with batch norm, ReLU after the
addition; `_unit_v2`: pre-activation) and in what follows the last block
(v2: a final batch norm and optional ReLU; v1: nothing, its units end with a
ReLU).
"""

from __future__ import annotations

import keras

from keras_ssl.backbones.base import make_backbone
from keras_ssl.backbones.common import (
    RESNET_DEPTHS,
    Layers,
    check_depth,
    check_strided_padding,
    check_strides,
    check_widening_factor,
    global_average,
    image_input,
    residual_stem,
    resnet_widths,
)


def _unit_v2(layers: Layers, x, filters, stride, kind, name):
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


def _unit_v1(layers: Layers, x, filters, stride, kind, name):
    """One post-activation residual unit (v1.5: the stride is on the 3x3 conv)."""
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.conv(x, filters, 1, stride, f"{name}_shortcut")
        shortcut = layers.bn_relu(shortcut, f"{name}_shortcut", relu=False)
    else:
        shortcut = x
    if kind == "bottleneck":
        inner = filters // 4
        y = layers.conv_bn_relu(x, inner, 1, 1, f"{name}_conv1")
        y = layers.conv_bn_relu(y, inner, 3, stride, f"{name}_conv2")
        y = layers.conv_bn_relu(y, filters, 1, 1, f"{name}_conv3", relu=False)
    else:
        y = layers.conv_bn_relu(x, filters, 3, stride, f"{name}_conv1")
        y = layers.conv_bn_relu(y, filters, 3, 1, f"{name}_conv2", relu=False)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def _resnet(
    version, depth, widening_factor, last_relu, small_image_stem, root_stride, root_pool,
    block_strides, weight_decay, bn_momentum, bn_epsilon, synchronized_bn, kernel_initializer,
    strided_padding, image_size, name,
):
    family = f"resnet_{version}"
    check_depth(family, depth, RESNET_DEPTHS)
    k = check_widening_factor(family, widening_factor)
    if len(tuple(block_strides)) != 4:
        raise ValueError(f"{family}: block_strides needs 4 entries, got {block_strides}.")
    block_strides = check_strides(family, "block_strides", block_strides, 4)
    kind, units = RESNET_DEPTHS[depth]
    unit = _unit_v1 if version == "v1" else _unit_v2
    layers = Layers(weight_decay, bn_momentum, bn_epsilon, synchronized_bn, kernel_initializer,
                    check_strided_padding(family, strided_padding))

    inputs = image_input(image_size)
    x = residual_stem(
        layers, inputs, 16 * k, small_image_stem=small_image_stem,
        root_stride=root_stride, root_pool=root_pool, bn_relu=version == "v1",
    )
    endpoints = {"after_root": x}
    for b, (width, n, stride) in enumerate(zip(resnet_widths(kind, k), units, block_strides)):
        for u in range(n):
            x = unit(layers, x, width, stride if u == 0 else 1, kind, f"block{b + 1}_unit{u + 1}")
        if b == 3 and version == "v2":
            x = layers.bn_relu(x, "final", relu=last_relu)
        endpoints[f"block{b + 1}"] = x
    endpoints["pre_logits"] = global_average(x)
    spec = dict(
        family=family,
        depth=depth,
        widening_factor=k,
        last_relu=last_relu,
        small_image_stem=small_image_stem,
    )
    return make_backbone(inputs, endpoints, name=name or f"resnet{depth}_{version}", spec=spec)


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
    kernel_initializer: str = "he_normal",
    strided_padding: str = "same",
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
      kernel_initializer: Convolution kernels' initialisation: 'he_normal', 'pytorch'
        (PyTorch's default) or another Keras initializer name.
      strided_padding: How stride-2 convolutions and the max-pool pad: 'same'
        (Keras': the extra row and column at the bottom and right) or
        'symmetric' (kernel // 2 on every side, as PyTorch's ResNets).
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
    return _resnet(
        "v2", depth, widening_factor, last_relu, small_image_stem, root_stride, root_pool,
        block_strides, weight_decay, bn_momentum, bn_epsilon, synchronized_bn, kernel_initializer,
        strided_padding, image_size, name,
    )


def resnet_v1(
    depth: int = 50,
    widening_factor: int = 4,
    small_image_stem: bool = False,
    root_stride: int = 2,
    root_pool: bool = True,
    block_strides: tuple = (1, 2, 2, 2),
    weight_decay: float = 1e-4,
    bn_momentum: float = 0.99,
    bn_epsilon: float = 1e-3,
    synchronized_bn: bool = False,
    kernel_initializer: str = "he_normal",
    strided_padding: str = "same",
    image_size: int | None = None,
    name: str | None = None,
) -> keras.Model:
    """Builds a post-activation ResNet (He et al. 2015, "v1.5").

    The stride of a downsampling bottleneck unit is on its 3x3 convolution
    (not the first 1x1); shortcuts that change the shape are 1x1
    projections followed by batch norm; every unit ends with a ReLU after
    the addition, so the network always has a final ReLU (there is no
    `last_relu` switch, as in Kolesnikov et al.).

    End-points: `after_root` (root conv, BN, ReLU and max-pool),
    `block1`..`block4` (output of each block, after its last ReLU) and
    `pre_logits` (global average of `block4`).

    Args:
      depth: 10, 18, 26, 34, 50, 101 or 152.
      widening_factor: k; root width 16 k, block outputs 64 k .. 512 k
        (bottleneck) or 16 k .. 128 k (basic units).
      small_image_stem: For 32-px images: a 3x3 stride-1 root convolution
        and no max-pool (overrides `root_stride` and `root_pool`).
      root_stride: Stride of the 7x7 root convolution.
      root_pool: Apply the 3x3 stride-2 max-pool after the root.
      block_strides: Stride of the first unit of each of the four blocks.
      weight_decay: Decay on convolution kernels (gradient `wd * w`).
      bn_momentum: Batch-norm moving-average momentum.
      bn_epsilon: Batch-norm epsilon.
      synchronized_bn: Compute batch statistics across replicas.
      kernel_initializer: Convolution kernels' initialisation: 'he_normal', 'pytorch'
        (PyTorch's default) or another Keras initializer name.
      strided_padding: How stride-2 convolutions and the max-pool pad: 'same'
        (Keras': the extra row and column at the bottom and right) or
        'symmetric' (kernel // 2 on every side, as PyTorch's ResNets).
      image_size: Fixes the input height/width; None accepts any size.
      name: Model name (default `resnet{depth}_v1`).

    Returns:
      A backbone (see `keras_ssl.backbones.base.make_backbone`).

    Example:

    >>> net = resnet_v1(depth=10, widening_factor=1, small_image_stem=True)
    >>> out = net(keras.ops.zeros((2, 32, 32, 3)))
    >>> tuple(out["block4"].shape)
    (2, 4, 4, 128)
    """
    return _resnet(
        "v1", depth, widening_factor, True, small_image_stem, root_stride, root_pool,
        block_strides, weight_decay, bn_momentum, bn_epsilon, synchronized_bn, kernel_initializer,
        strided_padding, image_size, name,
    )
