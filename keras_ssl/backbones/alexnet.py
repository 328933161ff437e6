"""AlexNet with batch norm, the Caffe form used by Goyal et al. (2019).

conv1 11x11 stride 4 (padding 2), conv2 5x5, conv3-conv5 3x3, each without
bias and followed by batch norm and ReLU; 3x3 stride-2 max-pools (no
padding) after conv1, conv2 and conv5; fc6 and fc7 as convolutions (fc6 a
6x6 kernel over the 6x6 map of a 224-px image, fc7 1x1) with batch norm and
ReLU and no dropout; no channel groups.

Widening convention: the widths are `24 k, 64 k, 96 k, 96 k, 64 k` for
conv1-conv5 and `1024 k` for fc6/fc7, so `k = 4` gives the standard AlexNet
(96, 256, 384, 384, 256, 4096) -- the same "k = 4 is standard" as ResNet-50.

Maps smaller than a pooling window or the fc6 kernel (small images) are
zero-padded up to it, so any image size works; at 224 px the network is the
standard one (55, 27, 13, 6 and 1 px maps).
"""

from __future__ import annotations

import keras

from keras_ssl.backbones.base import make_backbone
from keras_ssl.backbones.common import (
    Layers,
    PadToAtLeast,
    check_positive_int,
    check_widening_factor,
    global_average,
    image_input,
)


def _pool(x, name):
    x = PadToAtLeast(3, name=f"{name}_pad")(x)
    return keras.layers.MaxPooling2D(3, 2, padding="valid", name=name)(x)


def alexnet(
    widening_factor: int = 4,
    root_stride: int = 4,
    fc6_kernel: int = 6,
    weight_decay: float = 5e-4,
    bn_momentum: float = 0.99,
    bn_epsilon: float = 1e-3,
    synchronized_bn: bool = False,
    kernel_initializer: str = "he_normal",
    image_size: int | None = None,
    name: str | None = None,
) -> keras.Model:
    """Builds AlexNet with batch norm (Goyal et al. 2019).

    End-points: `conv1`..`conv5` (after each convolution's BN and ReLU,
    before any pooling), `pre_logits` (fc7 globally averaged,
    `[batch, 1024 k]`; 4096-d at the standard k = 4).

    Args:
      widening_factor: k; conv widths 24 k, 64 k, 96 k, 96 k, 64 k and fc
        widths 1024 k (k = 4 is the standard AlexNet).
      root_stride: Stride of conv1 (4 in AlexNet; 1 or 2 for small images).
      fc6_kernel: Kernel size of fc6 (6 at 224 px; 1 for small images).
      weight_decay: Decay on kernels (gradient `wd * w`).
      bn_momentum: Batch-norm moving-average momentum.
      bn_epsilon: Batch-norm epsilon.
      synchronized_bn: Compute batch statistics across replicas.
      kernel_initializer: Convolution kernels' initialisation: 'he_normal', 'pytorch'
        (PyTorch's default) or another Keras initializer name.
      image_size: Fixes the input height/width; None accepts any size.
      name: Model name (default `alexnet`).

    Returns:
      A backbone (see `keras_ssl.backbones.base.make_backbone`).

    Example:

    >>> net = alexnet(widening_factor=1)
    >>> out = net(keras.ops.zeros((2, 64, 64, 3)))
    >>> tuple(out["conv5"].shape), tuple(out["pre_logits"].shape)
    ((2, 3, 3, 64), (2, 1024))
    """
    k = check_widening_factor("alexnet", widening_factor)
    fc6_kernel = check_positive_int("alexnet", "fc6_kernel", fc6_kernel)
    root_stride = check_positive_int("alexnet", "root_stride", root_stride)
    layers = Layers(weight_decay, bn_momentum, bn_epsilon, synchronized_bn, kernel_initializer)

    inputs = image_input(image_size)
    x = keras.layers.ZeroPadding2D(2, name="conv1_pad")(inputs)
    x = PadToAtLeast(11, name="conv1_pad_small")(x)
    x = layers.conv_bn_relu(x, 24 * k, 11, int(root_stride), "conv1", padding="valid")
    endpoints = {"conv1": x}
    x = _pool(x, "pool1")
    x = layers.conv_bn_relu(x, 64 * k, 5, 1, "conv2")
    endpoints["conv2"] = x
    x = _pool(x, "pool2")
    for i, width in ((3, 96 * k), (4, 96 * k), (5, 64 * k)):
        x = layers.conv_bn_relu(x, width, 3, 1, f"conv{i}")
        endpoints[f"conv{i}"] = x
    x = _pool(x, "pool5")
    if fc6_kernel > 1:
        x = PadToAtLeast(int(fc6_kernel), name="fc6_pad")(x)
    x = layers.conv_bn_relu(x, 1024 * k, int(fc6_kernel), 1, "fc6", padding="valid")
    x = layers.conv_bn_relu(x, 1024 * k, 1, 1, "fc7")
    endpoints["pre_logits"] = global_average(x)
    spec = dict(family="alexnet", widening_factor=k, fc6_kernel=int(fc6_kernel))
    return make_backbone(inputs, endpoints, name=name or "alexnet", spec=spec)
