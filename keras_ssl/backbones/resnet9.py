"""ResNet-9 of the DAWNBench CIFAR-10 entries, as compared by Newell & Deng (2020).

  prep    conv 3x3 (16 k)                          -> after_root
  layer1  conv 3x3 (32 k), max-pool 2, + residual (two conv 3x3)  -> block1
  layer2  conv 3x3 (64 k), max-pool 2                             -> block2
  layer3  conv 3x3 (128 k), max-pool 2, + residual (two conv 3x3) -> block3
  pool    global max-pool                                         -> pre_logits

Every convolution is followed by batch norm and ReLU; the residual branches
are `x + conv_bn_relu(conv_bn_relu(x))`. `k = 4` gives the standard widths
64, 128, 256, 512 (the DAWNBench network ends with a 4x4 max-pool on the
4x4 map of a 32-px image, i.e. a global max-pool; pre-logits are 512-d).
"""

from __future__ import annotations

import keras

from keras_ssl.backbones.base import make_backbone
from keras_ssl.backbones.common import (
    Layers,
    check_positive_int,
    check_strides,
    check_widening_factor,
    image_input,
)


def _residual(layers, x, width, name):
    y = layers.conv_bn_relu(x, width, 3, 1, f"{name}_res1")
    y = layers.conv_bn_relu(y, width, 3, 1, f"{name}_res2")
    return keras.layers.Add(name=f"{name}_add")([x, y])


def resnet9(
    widening_factor: int = 4,
    root_stride: int = 1,
    block_strides: tuple = (2, 2, 2),
    weight_decay: float = 5e-4,
    bn_momentum: float = 0.99,
    bn_epsilon: float = 1e-3,
    synchronized_bn: bool = False,
    kernel_initializer: str = "he_normal",
    image_size: int | None = None,
    name: str | None = None,
) -> keras.Model:
    """Builds the DAWNBench ResNet-9.

    End-points: `after_root` (prep conv), `block1`..`block3` (after each
    layer, residual included) and `pre_logits` (global max-pool of
    `block3`, `[batch, 128 k]`).

    Args:
      widening_factor: k; widths 16 k, 32 k, 64 k, 128 k (k = 4 is the
        standard 64 .. 512).
      root_stride: Stride of the prep convolution (1 for 32-px images; 2
        halves the cost at 64 px).
      block_strides: Size and stride of the max-pool in each of the three
        layers (1 skips it).
      weight_decay: Decay on kernels (gradient `wd * w`).
      bn_momentum: Batch-norm moving-average momentum.
      bn_epsilon: Batch-norm epsilon.
      synchronized_bn: Compute batch statistics across replicas.
      kernel_initializer: Convolution kernels' initialisation: 'he_normal', 'pytorch'
        (PyTorch's default) or another Keras initializer name.
      image_size: Fixes the input height/width; None accepts any size.
      name: Model name (default `resnet9`).

    Returns:
      A backbone (see `keras_ssl.backbones.base.make_backbone`).

    Example:

    >>> net = resnet9(widening_factor=1)
    >>> out = net(keras.ops.zeros((2, 32, 32, 3)))
    >>> tuple(out["block3"].shape), tuple(out["pre_logits"].shape)
    ((2, 4, 4, 128), (2, 128))
    """
    k = check_widening_factor("resnet9", widening_factor)
    block_strides = check_strides("resnet9", "block_strides", block_strides, 3)
    root_stride = check_positive_int("resnet9", "root_stride", root_stride)
    layers = Layers(weight_decay, bn_momentum, bn_epsilon, synchronized_bn, kernel_initializer)

    inputs = image_input(image_size)
    x = layers.conv_bn_relu(inputs, 16 * k, 3, int(root_stride), "prep")
    endpoints = {"after_root": x}
    for b, (width, pool, residual) in enumerate(
        zip((32 * k, 64 * k, 128 * k), block_strides, (True, False, True))
    ):
        block = f"block{b + 1}"
        x = layers.conv_bn_relu(x, width, 3, 1, f"{block}_conv")
        if pool > 1:
            x = keras.layers.MaxPooling2D(pool, pool, padding="same", name=f"{block}_pool")(x)
        if residual:
            x = _residual(layers, x, width, block)
        endpoints[block] = x
    endpoints["pre_logits"] = keras.layers.GlobalMaxPooling2D(name="pre_logits")(x)
    spec = dict(family="resnet9", widening_factor=k)
    return make_backbone(inputs, endpoints, name=name or "resnet9", spec=spec)
