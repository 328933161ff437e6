"""VGG with batch norm (Simonyan & Zisserman 2014) as in Kolesnikov et al. (2019).

Every convolution is 3x3, without bias, followed by batch norm and ReLU.
The first block has `8 k` channels and the blocks 1-5 `8 k, 16 k, 32 k,
64 k, 64 k`, so `k = 8` is the standard VGG (64 .. 512 channels). The fully
connected layers are convolutions with `512 k` channels (4096 at k = 8),
with batch norm and ReLU and no dropout: `fc6` has a `fc6_kernel` x
`fc6_kernel` kernel (7: the 7x7 map of a 224-px image) applied without
padding, `fc7` is 1x1. A map smaller than the fc6 kernel (small images) is
zero-padded up to it, so any image size works and the parameter count does
not depend on it; at 224 px the network is exactly the standard one.
"""

from __future__ import annotations

import keras

from keras_ssl.backbones.base import make_backbone
from keras_ssl.backbones.common import (
    Layers,
    PadToAtLeast,
    check_depth,
    check_positive_int,
    check_strides,
    check_widening_factor,
    global_average,
    image_input,
)

# depth -> convolutions per block (Simonyan & Zisserman, configurations A, B, D, E).
VGG_DEPTHS = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}


def vgg19_bn(
    depth: int = 19,
    widening_factor: int = 8,
    fc6_kernel: int = 7,
    pool_strides: tuple = (2, 2, 2, 2, 2),
    weight_decay: float = 5e-4,
    bn_momentum: float = 0.99,
    bn_epsilon: float = 1e-3,
    synchronized_bn: bool = False,
    kernel_initializer: str = "he_normal",
    image_size: int | None = None,
    name: str | None = None,
) -> keras.Model:
    """Builds VGG with batch norm; depth 19 by default (11, 13, 16 too).

    End-points: `block1`..`block5` (after the last conv-BN-ReLU of each
    block, before its max-pool), `fc6` (a 4-d map, `[batch, h, w, 512 k]`;
    1x1 at 224 px) and `pre_logits` (fc7, globally averaged: `[batch, 512 k]`).

    Args:
      depth: 11, 13, 16 or 19.
      widening_factor: k; block widths 8 k .. 64 k, fc widths 512 k (k = 8
        is the standard VGG).
      fc6_kernel: Kernel size of fc6 (7 as in VGG at 224 px; 1 turns fc6
        into a 1x1 convolution, the natural choice at 32 px).
      pool_strides: Size and stride of the max-pool after each of the five
        blocks (1 skips it); patch-sized inputs can use fewer poolings.
      weight_decay: Decay on kernels (gradient `wd * w`); 5e-4 as in the
        VGG paper and Kolesnikov et al.
      bn_momentum: Batch-norm moving-average momentum.
      bn_epsilon: Batch-norm epsilon.
      synchronized_bn: Compute batch statistics across replicas.
      kernel_initializer: Convolution kernels' initialisation: 'he_normal', 'pytorch'
        (PyTorch's default) or another Keras initializer name.
      image_size: Fixes the input height/width; None accepts any size.
      name: Model name (default `vgg{depth}_bn`).

    Returns:
      A backbone (see `keras_ssl.backbones.base.make_backbone`).

    Example:

    >>> net = vgg19_bn(widening_factor=1)
    >>> out = net(keras.ops.zeros((2, 32, 32, 3)))
    >>> tuple(out["fc6"].shape), tuple(out["pre_logits"].shape)
    ((2, 1, 1, 512), (2, 512))
    """
    check_depth("vgg19_bn", depth, VGG_DEPTHS)
    k = check_widening_factor("vgg19_bn", widening_factor)
    pool_strides = check_strides("vgg19_bn", "pool_strides", pool_strides, 5)
    fc6_kernel = check_positive_int("vgg19_bn", "fc6_kernel", fc6_kernel)
    layers = Layers(weight_decay, bn_momentum, bn_epsilon, synchronized_bn, kernel_initializer)
    widths = [8 * k, 16 * k, 32 * k, 64 * k, 64 * k]

    inputs = image_input(image_size)
    x = inputs
    endpoints = {}
    for b, (width, n, pool) in enumerate(zip(widths, VGG_DEPTHS[depth], pool_strides)):
        for c in range(n):
            x = layers.conv_bn_relu(x, width, 3, 1, f"block{b + 1}_conv{c + 1}")
        endpoints[f"block{b + 1}"] = x
        if pool > 1:
            x = keras.layers.MaxPooling2D(pool, pool, padding="same", name=f"block{b + 1}_pool")(x)
    if fc6_kernel > 1:
        x = PadToAtLeast(fc6_kernel, name="fc6_pad")(x)
    x = layers.conv_bn_relu(x, 512 * k, int(fc6_kernel), 1, "fc6", padding="valid")
    endpoints["fc6"] = x
    x = layers.conv_bn_relu(x, 512 * k, 1, 1, "fc7")
    endpoints["pre_logits"] = global_average(x)
    spec = dict(family="vgg19_bn", depth=depth, widening_factor=k, fc6_kernel=int(fc6_kernel))
    return make_backbone(inputs, endpoints, name=name or f"vgg{depth}_bn", spec=spec)
