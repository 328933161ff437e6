"""RevNet (Gomez et al. 2017) as used by Kolesnikov et al. (2019).

A reversible unit splits its input channels into halves `x1, x2`, computes
`y1 = x1 + F(x2)` with `F` a pre-activation residual branch (bottleneck or
basic, without shortcut) and outputs `concat(x2, y1)`; its input is
recovered from its output as `x2 = first half`, `x1 = y1 - F(x2)`.
Between stages the map is 2x2 average-pooled and its channels are
zero-padded to twice as many (a reversible-friendly downsampling). The root
is a 7x7 convolution without batch norm, projecting straight to the block1
width, then a 3x3 max-pool.

Widths are those of ResNet v2 with the same `k`: blocks 1-4 carry
`64 k .. 512 k` channels (bottleneck, depths 26/50/101/152) or
`16 k .. 128 k` (basic, depths 10/18/34); the root convolution outputs the
block1 width. Gradients are computed the plain way (activations are kept),
not by recomputation.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_ssl.backbones.base import make_backbone
from keras_ssl.backbones.common import (
    RESNET_DEPTHS,
    Layers,
    check_depth,
    check_strides,
    check_widening_factor,
    global_average,
    image_input,
    residual_stem,
    resnet_widths,
)


class ReversibleUnit(keras.layers.Layer):
    """`(x1, x2) -> (x2, x1 + F(x2))` on the two halves of the channels.

    Args:
      channels: Input (= output) channels; even.
      kind: `"bottleneck"` (F: BN-ReLU-1x1, BN-ReLU-3x3, BN-ReLU-1x1 with
        inner width channels / 8) or `"basic"` (F: BN-ReLU-3x3, BN-ReLU-3x3).
      layers: The network's `Layers` factory (regularizer, BN options).
    """

    def __init__(self, channels: int, kind: str, layers: Layers, **kwargs):
        super().__init__(**kwargs)
        if channels % 2:
            raise ValueError(f"revnet: a reversible unit needs an even width, got {channels}.")
        self.channels = channels
        self.kind = kind
        half = channels // 2
        name = self.name
        if kind == "bottleneck":
            spec = [(half // 4, 1), (half // 4, 3), (half, 1)]
        else:
            spec = [(half, 3), (half, 3)]
        self.depth = len(spec)
        # One attribute per layer, not lists: Keras 3 wraps a list attribute in
        # its own tracker, which tf.train.Checkpoint does not see, and the
        # layers' weights would be missing from checkpoints.
        for i, (filters, kernel) in enumerate(spec):
            setattr(self, f"norm{i + 1}", layers.bn_layer(f"{name}_conv{i + 1}_preact_bn"))
            setattr(self, f"conv{i + 1}", layers.conv_layer(filters, kernel, 1, f"{name}_conv{i + 1}"))

    @property
    def norms(self):
        return [getattr(self, f"norm{i + 1}") for i in range(self.depth)]

    @property
    def convs(self):
        return [getattr(self, f"conv{i + 1}") for i in range(self.depth)]

    def build(self, input_shape):
        shape = list(input_shape[:-1]) + [self.channels // 2]
        for norm, conv in zip(self.norms, self.convs):
            norm.build(shape)
            conv.build(shape)
            shape = list(conv.compute_output_shape(shape))
        self.built = True

    def residual(self, x2, training=None):
        """The branch F."""
        y = x2
        for norm, conv in zip(self.norms, self.convs):
            y = conv(tf.nn.relu(norm(y, training=training)))
        return y

    def call(self, x, training=None):
        x1, x2 = tf.split(x, 2, axis=-1)
        return tf.concat([x2, x1 + self.residual(x2, training=training)], axis=-1)

    def inverse(self, y, training=None):
        """The unit's input, reconstructed from its output."""
        x2, y1 = tf.split(y, 2, axis=-1)
        return tf.concat([y1 - self.residual(x2, training=training), x2], axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape


class PoolAndPadChannels(keras.layers.Layer):
    """Average-pools by `stride` (if > 1) and zero-pads the channels to `channels`."""

    def __init__(self, stride: int, channels: int, **kwargs):
        super().__init__(**kwargs)
        self.stride = int(stride)
        self.channels = int(channels)

    def call(self, x):
        if self.stride > 1:
            x = tf.nn.avg_pool2d(x, self.stride, self.stride, padding="SAME")
        extra = self.channels - x.shape[-1]
        return tf.pad(x, [[0, 0], [0, 0], [0, 0], [extra // 2, extra - extra // 2]])

    def compute_output_shape(self, input_shape):
        def down(d):
            return None if d is None else -(-d // self.stride)

        return (input_shape[0], down(input_shape[1]), down(input_shape[2]), self.channels)

    def get_config(self):
        return {**super().get_config(), "stride": self.stride, "channels": self.channels}


def revnet(
    depth: int = 50,
    widening_factor: int = 4,
    last_relu: bool = False,
    small_image_stem: bool = False,
    root_stride: int = 2,
    root_pool: bool = True,
    block_strides: tuple = (1, 2, 2, 2),
    weight_decay: float = 1e-4,
    bn_momentum: float = 0.99,
    bn_epsilon: float = 1e-3,
    synchronized_bn: bool = False,
    kernel_initializer: str = "he_normal",
    image_size: int | None = None,
    name: str | None = None,
) -> keras.Model:
    """Builds a RevNet with the widths and units of ResNet v2 of the same depth.

    End-points: `after_root` (root conv and max-pool), `block1`..`block3`
    (the reversible stream after each block, before the next stage's
    pooling), `block4` (after the final batch norm, and ReLU if
    `last_relu`) and `pre_logits` (global average of `block4`).

    Args:
      depth: 10, 18, 26, 34, 50, 101 or 152 (units per block as ResNet).
      widening_factor: k; blocks carry 64 k .. 512 k (bottleneck) or
        16 k .. 128 k (basic) channels.
      last_relu: ReLU after the final batch norm. Kolesnikov et al. use
        RevNet without it (their "(-)" variant), hence False by default.
      small_image_stem: 3x3 stride-1 root convolution, no max-pool.
      root_stride: Stride of the 7x7 root convolution.
      root_pool: Apply the 3x3 stride-2 max-pool after the root.
      block_strides: Pooling stride before each block (the first one before
        block1, without channel padding).
      weight_decay: Decay on the kernels of the units (gradient `wd * w`);
        the root convolution, a fixed-size random projection, has none.
      bn_momentum: Batch-norm moving-average momentum.
      bn_epsilon: Batch-norm epsilon.
      synchronized_bn: Compute batch statistics across replicas.
      kernel_initializer: Convolution kernels' initialisation: 'he_normal', 'pytorch'
        (PyTorch's default) or another Keras initializer name.
      image_size: Fixes the input height/width; None accepts any size.
      name: Model name (default `revnet{depth}`).

    Returns:
      A backbone (see `keras_ssl.backbones.base.make_backbone`).

    Example:

    >>> net = revnet(depth=10, widening_factor=1, small_image_stem=True)
    >>> out = net(keras.ops.zeros((2, 32, 32, 3)))
    >>> tuple(out["block4"].shape)
    (2, 4, 4, 128)
    """
    check_depth("revnet", depth, RESNET_DEPTHS)
    k = check_widening_factor("revnet", widening_factor)
    block_strides = check_strides("revnet", "block_strides", block_strides, 4)
    kind, units = RESNET_DEPTHS[depth]
    widths = resnet_widths(kind, k)
    layers = Layers(weight_decay, bn_momentum, bn_epsilon, synchronized_bn, kernel_initializer)
    root_layers = Layers(0.0, bn_momentum, bn_epsilon, synchronized_bn, kernel_initializer)

    inputs = image_input(image_size)
    x = residual_stem(
        root_layers, inputs, widths[0], small_image_stem=small_image_stem,
        root_stride=root_stride, root_pool=root_pool, bn_relu=False,
    )
    endpoints = {"after_root": x}
    for b, (width, n, stride) in enumerate(zip(widths, units, block_strides)):
        if b > 0 or stride > 1:
            x = PoolAndPadChannels(stride, width, name=f"block{b + 1}_downsample")(x)
        for u in range(n):
            x = ReversibleUnit(width, kind, layers, name=f"block{b + 1}_unit{u + 1}")(x)
        if b == 3:
            x = layers.bn_relu(x, "final", relu=last_relu)
        endpoints[f"block{b + 1}"] = x
    endpoints["pre_logits"] = global_average(x)
    spec = dict(
        family="revnet",
        depth=depth,
        widening_factor=k,
        last_relu=last_relu,
        small_image_stem=small_image_stem,
    )
    return make_backbone(inputs, endpoints, name=name or f"revnet{depth}", spec=spec)
