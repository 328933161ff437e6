"""Heads for method authors: projection and prediction MLPs, a normalised output layer.

- `projection_head`: the MLP between a backbone and a loss (SimCLR, MoCo,
  BYOL's projector and predictor, SimSiam, Barlow Twins' and VICReg's
  expanders, DINO's and SwAV's MLPs), configured by width, depth and where
  batch norm goes.
- `NormalizedDense`: a bias-free linear layer whose weight columns are
  l2-normalised in the forward pass: DINO's weight-normalised last layer and
  SwAV's prototypes.
- `uses_synchronized_bn`: whether a backbone's batch norm is synchronized,
  so a head can follow it (what 2 replicas equal to one device needs).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_ssl.backbones.base import backbone_spec
from keras_ssl.normalization import BatchNormalization


def uses_synchronized_bn(model: keras.Model) -> bool:
    """Whether any batch norm of `model` computes statistics across replicas.

    A backbone without batch norm (`vit`) says in its spec's `synchronized_bn`
    what the batch norm of the heads on it should do.
    """
    return (any(getattr(layer, "synchronized", False) for layer in model._flatten_layers())
            or bool(backbone_spec(model).get("synchronized_bn", False)))


def uses_batch_norm(model: keras.Model) -> bool:
    """Whether `model` has any batch norm (a ViT has none: it normalises per token)."""
    return any(isinstance(layer, keras.layers.BatchNormalization)
               for layer in model._flatten_layers())


def projection_head(
    input_dim: int,
    hidden_dim: int,
    output_dim: int = 128,
    num_layers: int = 2,
    batch_norm: bool = True,
    output_batch_norm: str | None = "no_offset",
    activation: str = "relu",
    synchronized_bn: bool = False,
    batch_norm_epsilon: float = 1e-3,
    name: str = "projection_head",
) -> keras.Sequential:
    """An MLP of `num_layers` Dense layers, built for `[batch, input_dim]`.

    Hidden layers: Dense(hidden_dim) [+ BN] + activation. The last:
    Dense(output_dim) [+ BN as `output_batch_norm` says]. A Dense layer
    followed by batch norm has no bias.

    The papers' heads:

    | method | hidden, out | layers | batch_norm | output_batch_norm |
    | --- | --- | --- | --- | --- |
    | SimCLR v1 / v2 | width, 128 | 2 / 3 | yes | `no_offset` |
    | MoCo v2 | width, 128 | 2 | no | - |
    | BYOL projector, predictor | 4096, 256 | 2 | yes | `none` |
    | SimSiam projector / predictor | 2048, 2048 / 512, 2048 | 3 / 2 | yes | `no_affine` / `none` |
    | Barlow Twins, VICReg | 8192, 8192 | 3 | yes | `none` |
    | DINO (before the bottleneck norm) | 2048, 256 | 3 | no (GELU) | - |
    | SwAV | 2048, 128 | 2 | yes | `none` |

    Args:
      input_dim: Width of the input (the pre-logits).
      hidden_dim: Width of the hidden layers.
      output_dim: Width of the output.
      num_layers: Dense layers (1 = linear).
      batch_norm: Batch norm after each hidden Dense layer.
      output_batch_norm: Batch norm after the last Dense layer (only when
        `batch_norm`): `no_offset` (scale, no offset; SimCLR v2), `no_affine`
        (neither; SimSiam), `affine`, or `none`/None.
      activation: Of the hidden layers (`relu`, `gelu`).
      synchronized_bn: The batch norms compute statistics across replicas.
      batch_norm_epsilon: The batch norms' epsilon (Keras' 1e-3; PyTorch's
        `BatchNorm1d`, as LightlySSL's heads use it, 1e-5).
      name: The model's name.

    Returns:
      A built `keras.Sequential`.

    Example:

    >>> head = projection_head(128, 64, 32, num_layers=2, output_batch_norm="none")
    >>> head(tf.zeros([4, 128])).shape
    TensorShape([4, 32])
    """
    if num_layers < 1:
        raise ValueError(f"projection_head: num_layers must be >= 1, got {num_layers}.")
    output_norms = {"no_offset": (False, True), "no_affine": (False, False),
                    "affine": (True, True), "none": None, None: None}
    if output_batch_norm not in output_norms:
        raise ValueError(
            f"projection_head: output_batch_norm must be one of 'no_offset', 'no_affine', "
            f"'affine', 'none'; got {output_batch_norm!r}."
        )
    layers = []
    for i in range(num_layers):
        last = i == num_layers - 1
        norm = (output_norms[output_batch_norm] if last else (True, True)) if batch_norm else None
        layers.append(keras.layers.Dense(
            output_dim if last else hidden_dim, use_bias=norm is None, name=f"dense_{i}"
        ))
        if norm is not None:
            center, scale = norm
            layers.append(BatchNormalization(
                center=center, scale=scale, epsilon=batch_norm_epsilon,
                synchronized=synchronized_bn, name=f"bn_{i}"
            ))
        if not last:
            layers.append(keras.layers.Activation(activation, name=f"{activation}_{i}"))
    head = keras.Sequential(layers, name=name)
    head.build((None, input_dim))
    return head


class NormalizedDense(keras.layers.Layer):
    """`x @ (W / ||W||)`: a linear layer without bias whose weight columns have unit norm.

    With l2-normalised inputs each output is a cosine similarity: DINO's
    weight-normalised last layer (the norm's gain fixed to 1) and SwAV's
    prototypes (SwAV re-normalises them after each step; here the forward
    pass normalises, so the gradient has no radial part).

    Args:
      units: Output width (DINO's K, SwAV's number of prototypes).
      **kwargs: Passed to `keras.layers.Layer`.

    Example:

    >>> layer = NormalizedDense(10)
    >>> layer(tf.math.l2_normalize(tf.ones([2, 4]), -1)).shape
    TensorShape([2, 10])
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)

    def build(self, input_shape):
        self.kernel = self.add_weight(
            shape=(int(input_shape[-1]), self.units), initializer="glorot_uniform", name="kernel"
        )

    def normalized_kernel(self) -> tf.Tensor:
        """The kernel with unit-norm columns."""
        return tf.math.l2_normalize(tf.convert_to_tensor(self.kernel), axis=0)

    def call(self, inputs):
        kernel = tf.cast(self.normalized_kernel(), inputs.dtype)
        return tf.matmul(inputs, kernel)

    def get_config(self):
        return {**super().get_config(), "units": self.units}
