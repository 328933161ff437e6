"""Building blocks shared by the backbone families.

Every family builds its convolutions and batch norms through `Layers`, so the
shared options (`weight_decay`, `bn_momentum`, `bn_epsilon`, `synchronized_bn`,
`kernel_initializer`, `strided_padding`) mean the same thing everywhere, and checks
its arguments with the helpers below so a bad value fails the same way in every family.
"""

from __future__ import annotations

import random

import keras
import tensorflow as tf

from keras_ssl.normalization import BatchNormalization

# depth -> (unit type, units per block), for the residual and reversible nets.
RESNET_DEPTHS = {
    10: ("basic", (1, 1, 1, 1)),
    18: ("basic", (2, 2, 2, 2)),
    26: ("bottleneck", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def resnet_widths(kind: str, k: int) -> list[int]:
    """Output widths of blocks 1-4: `64 k .. 512 k`, or `16 k .. 128 k` for basic units."""
    widths = [64 * k * 2**i for i in range(4)]
    return [w // 4 for w in widths] if kind == "basic" else widths


# PyTorch's default for Conv2d and Linear, kaiming_uniform(a = sqrt(5)):
# U(-b, b) with b = 1 / sqrt(fan_in), which is VarianceScaling(1/3, fan_in, uniform).
_PYTORCH_DEFAULT = dict(scale=1 / 3, mode="fan_in", distribution="uniform")


def kernel_initializer_of(name: str):
    """The convolution kernels' initializer: `'pytorch'` or a Keras initializer name.

    `'he_normal'` (Keras' variance scaling 2 / fan_in, normal) is every
    family's default. `'pytorch'` is PyTorch's default initialisation,
    `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`: kernels about 2.4x smaller, which
    with batch norm after every convolution gives the same forward pass but a
    larger effective learning rate (docs/backbones.md, "Initialisation").
    A Keras name is returned as it is, for the layer to resolve, so a run's
    random draws are the ones they were before this option existed.

    Raises:
      ValueError: `name` is neither.

    Example:

    >>> kernel_initializer_of("pytorch")(shape=(3, 3, 16, 32)).numpy().max() <= 1 / 12
    True
    """
    if name == "pytorch":
        return keras.initializers.VarianceScaling(**_PYTORCH_DEFAULT)
    # Instantiating an unseeded Keras initializer draws its seed from Python's
    # `random`; the state is put back so that checking the name draws nothing.
    state = random.getstate()
    try:
        keras.initializers.get(name)
    except ValueError:
        raise ValueError(
            f"kernel_initializer: unknown initializer {name!r}; use 'pytorch' (PyTorch's "
            f"default) or a Keras initializer name such as 'he_normal', 'he_uniform' or "
            f"'glorot_uniform'.") from None
    finally:
        random.setstate(state)
    return name


# How a strided convolution or max-pool pads its input (docs/backbones.md, "Padding").
STRIDED_PADDINGS = ("same", "symmetric")


def check_strided_padding(family: str, strided_padding: str) -> str:
    if strided_padding not in STRIDED_PADDINGS:
        raise ValueError(
            f"{family}: strided_padding must be one of {STRIDED_PADDINGS}, got "
            f"{strided_padding!r}; 'symmetric' pads as PyTorch's padding = kernel // 2 does.")
    return strided_padding


@keras.saving.register_keras_serializable(package="keras_ssl")
class SymmetricPad(keras.layers.Layer):
    """Pads height and width by `pad` on every side with `value`.

    Put before a strided `valid` convolution (value 0) or max-pool (value
    -inf, which never wins the max) of an odd `kernel = 2 pad + 1`, it gives the
    output size of Keras' `same` padding with the windows centred on rows and
    columns 0, s, 2s, ... as PyTorch's are (on an even map Keras' `same` pads
    only the bottom and right, which centres them one row and column later).

    Example:

    >>> SymmetricPad(1)(tf.ones([1, 4, 4, 2])).shape
    TensorShape([1, 6, 6, 2])
    """

    def __init__(self, pad: int, value: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.pad, self.value = int(pad), float(value)

    def call(self, x):
        p = self.pad
        return tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], constant_values=self.value)

    def compute_output_shape(self, input_shape):
        def grow(d):
            return None if d is None else d + 2 * self.pad

        return (input_shape[0], grow(input_shape[1]), grow(input_shape[2]), input_shape[3])

    def get_config(self):
        return {**super().get_config(), "pad": self.pad, "value": self.value}


class Layers:
    """Builds convolutions and batch norms with the network's shared options.

    Args:
      weight_decay: Decay on convolution kernels; the gradient is `wd * w`.
      bn_momentum: Batch-norm moving-average momentum.
      bn_epsilon: Batch-norm epsilon.
      synchronized_bn: Compute batch statistics across replicas.
      kernel_initializer: A name `kernel_initializer_of` accepts (above).
      strided_padding: `'same'` (Keras': a strided convolution's extra padding
        goes to the bottom and right) or `'symmetric'` (`kernel // 2` on every
        side, as PyTorch pads; the same output size).
    """

    def __init__(self, weight_decay, bn_momentum, bn_epsilon, synchronized_bn,
                 kernel_initializer="he_normal", strided_padding="same"):
        # Keras' L2(l) adds l * sum(w^2), whose gradient is 2 l w; weight
        # decay wd in the papers means a gradient of wd * w, hence wd / 2.
        self.regularizer = (
            keras.regularizers.L2(weight_decay / 2) if weight_decay else None
        )
        self.bn_options = dict(
            momentum=bn_momentum, epsilon=bn_epsilon, synchronized=synchronized_bn
        )
        kernel_initializer_of(kernel_initializer)  # refuses an unknown name before building
        self.kernel_initializer = kernel_initializer
        self.strided_padding = check_strided_padding("backbone", strided_padding)

    def _pads_symmetrically(self, stride, padding):
        # Stride 1 with an odd kernel is already symmetric under "same".
        return self.strided_padding == "symmetric" and padding == "same" and stride > 1

    def conv_layer(self, filters, kernel, stride, name, padding="same"):
        return keras.layers.Conv2D(
            filters,
            kernel,
            strides=stride,
            padding=padding,
            use_bias=False,
            kernel_initializer=kernel_initializer_of(self.kernel_initializer),
            kernel_regularizer=self.regularizer,
            name=name,
        )

    def conv(self, x, filters, kernel, stride, name, padding="same"):
        if self._pads_symmetrically(stride, padding):
            if kernel % 2 == 0:
                raise ValueError(
                    f"{name}: strided_padding = 'symmetric' needs an odd kernel, got {kernel}; "
                    f"use strided_padding = 'same'.")
            x = SymmetricPad(kernel // 2, name=f"{name}_pad")(x) if kernel > 1 else x
            padding = "valid"
        return self.conv_layer(filters, kernel, stride, name, padding)(x)

    def max_pool(self, x, size, stride, name):
        if self._pads_symmetrically(stride, "same"):
            x = SymmetricPad(size // 2, float("-inf"), name=f"{name}_pad")(x)
            return keras.layers.MaxPooling2D(size, stride, padding="valid", name=name)(x)
        return keras.layers.MaxPooling2D(size, stride, padding="same", name=name)(x)

    def bn_layer(self, name):
        return BatchNormalization(name=name, **self.bn_options)

    def bn_relu(self, x, name, relu=True):
        x = self.bn_layer(f"{name}_bn")(x)
        return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x

    def conv_bn_relu(self, x, filters, kernel, stride, name, relu=True, padding="same"):
        x = self.conv(x, filters, kernel, stride, name, padding)
        return self.bn_relu(x, name, relu=relu)


class PadToAtLeast(keras.layers.Layer):
    """Zero-pads height and width (evenly on both sides) up to at least `size`.

    Lets a network whose standard form has a valid pooling or a "fully
    connected" convolution of a fixed kernel (AlexNet, VGG) run on images of
    any size; a map that is already large enough passes unchanged, so at the
    standard input size the network is exactly the standard one.
    """

    def __init__(self, size: int, **kwargs):
        super().__init__(**kwargs)
        self.size = int(size)

    def call(self, x):
        shape = tf.shape(x)
        pads = [tf.maximum(self.size - shape[i], 0) for i in (1, 2)]
        paddings = [[0, 0], [pads[0] // 2, pads[0] - pads[0] // 2],
                    [pads[1] // 2, pads[1] - pads[1] // 2], [0, 0]]
        return tf.pad(x, paddings)

    def compute_output_shape(self, input_shape):
        def grow(d):
            return None if d is None else max(d, self.size)

        return (input_shape[0], grow(input_shape[1]), grow(input_shape[2]), input_shape[3])

    def get_config(self):
        return {**super().get_config(), "size": self.size}


def check_positive_int(family: str, name: str, value) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{family}: {name} must be a positive integer, got {value}.")
    return int(value)


def check_widening_factor(family: str, widening_factor) -> int:
    return check_positive_int(family, "widening_factor", widening_factor)


def check_depth(family: str, depth, depths) -> None:
    if depth not in depths:
        raise ValueError(
            f"{family}: unsupported depth {depth}; choose one of {sorted(depths)}."
        )


def check_strides(family: str, name: str, strides, n: int) -> tuple:
    strides = tuple(strides)
    if len(strides) != n or any(int(s) != s or s < 1 for s in strides):
        raise ValueError(
            f"{family}: {name} needs {n} entries (positive integers), got {strides}."
        )
    return tuple(int(s) for s in strides)


def image_input(image_size: int | None):
    """The `images` input: `[batch, image_size, image_size, 3]` (any size if None)."""
    return keras.Input((image_size, image_size, 3), name="images")


def residual_stem(layers: Layers, inputs, width, *, small_image_stem, root_stride,
                  root_pool, bn_relu):
    """Root of the residual/reversible nets: 7x7 conv (or 3x3 stride 1), optional BN-ReLU, max-pool.

    `small_image_stem` (3x3 stride 1, no max-pool) overrides `root_stride`
    and `root_pool`.
    """
    if small_image_stem:
        x = layers.conv(inputs, width, 3, 1, "root_conv")
        if bn_relu:
            x = layers.bn_relu(x, "root")
        return x
    x = layers.conv(inputs, width, 7, root_stride, "root_conv")
    if bn_relu:
        x = layers.bn_relu(x, "root")
    if root_pool:
        x = layers.max_pool(x, 3, 2, "root_pool")
    return x


def global_average(x, name="pre_logits"):
    return keras.layers.GlobalAveragePooling2D(name=name)(x)
