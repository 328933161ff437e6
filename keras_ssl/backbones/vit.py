"""Vision Transformer (Dosovitskiy et al. 2021), with DINOv2's registers and LayerScale.

  patches     conv p x p, stride p (64 k channels)          [B, H/p, W/p, 64 k]
  tokens      [class, registers, patches + position]        [B, 1 + R + N, 64 k]
  block i     x + LS(attention(LN(x))); x + LS(MLP(LN(x)))  -> block{i}: patch tokens as a map
  norm        LayerNorm                                    -> pre_logits: class token (or mean)

The widening factor k is the number of 64-d attention heads, so the width is
64 k: k = 3, 6, 12 are ViT-Tiny, -Small and -Base (192, 384, 768 wide, depth
12, MLP ratio 4; gin_configs/backbones/vit_{tiny,small,base}.gin bind them).
Position embeddings are learned for the patch grid of `image_size` and
resized (bicubic) to any other grid, so the same network takes DINO's 96-px
local crops and its 224-px global views.
The class token has its own position embedding; registers (Darcet et al.
2024) have none and are dropped from every output.

Methods reach the tokens through `encode_tokens`: the encoder on a subset of
the patch tokens (MAE, I-JEPA) or with chosen tokens replaced by a learned
mask token (iBOT, DINOv2).
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from keras_ssl.backbones.base import BackboneInputError, make_backbone
from keras_ssl.backbones.common import check_positive_int

HEAD_DIM = 64
POOLINGS = ("class_token", "mean")
_PATCHES = "patch_embedding"
_TOKENS = "tokens"
_NORM = "encoder_norm"


def _block_name(i: int) -> str:
    return f"block{i + 1}_transformer"


# Keys' cubic convolution parameter of PyTorch's bicubic resize, which DINO and
# timm resize position embeddings with.
BICUBIC_A = -0.75


def bicubic_matrix(output_size, input_size: int) -> tf.Tensor:
    """`[output_size, input_size]` weights of a 1-d bicubic resize (half-pixel centres).

    Output sample i reads the input at `(i + 0.5) * input_size / output_size - 0.5`
    through Keys' cubic kernel (a = `BICUBIC_A`) over its 4 nearest samples,
    indices clamped to the edges, as PyTorch's `interpolate(mode="bicubic",
    align_corners=False)` does. A matrix rather than `tf.image.resize`, which
    has no XLA kernel for bicubic; `output_size` may be a tensor.

    Example:

    >>> bicubic_matrix(3, 3).numpy().round(6).tolist()
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    a = BICUBIC_A
    steps = tf.cast(tf.range(output_size), tf.float32)
    source = (steps + 0.5) * (input_size / tf.cast(output_size, tf.float32)) - 0.5
    base = tf.floor(source)
    t = source - base
    matrix = 0.0
    for offset in (-1, 0, 1, 2):
        x = tf.abs(t - offset)
        weight = tf.where(x <= 1.0, ((a + 2) * x - (a + 3)) * x * x + 1,
                          ((a * x - 5 * a) * x + 8 * a) * x - 4 * a)
        index = tf.clip_by_value(tf.cast(base, tf.int32) + offset, 0, input_size - 1)
        matrix += tf.one_hot(index, input_size) * weight[:, None]
    return matrix


@keras.saving.register_keras_serializable(package="keras_ssl")
class TokenEmbedding(keras.layers.Layer):
    """Patch map -> token sequence: class token, registers, patches with positions.

    Holds the class token, the registers, the mask token (with
    `use_mask_token`) and the position embeddings: the patch grid's, learned
    at `grid` x `grid` and resized by `bicubic_matrix` to other grids, and the
    class token's.

    Call: `(patch_map [B, h, w, C], keep [B, K] int or None, masked [B, h*w]
    bool or None)` -> `[B, 1 + R + N, C]`, N = K with `keep`, else h*w. A masked
    patch is replaced by the mask token before its position is added; `keep`
    selects patch positions (row-major) after it.
    """

    def __init__(self, grid: int, num_registers: int = 0, use_mask_token: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.grid, self.num_registers = int(grid), int(num_registers)
        self.use_mask_token = bool(use_mask_token)

    def build(self, input_shape):
        width = input_shape[-1]
        init = keras.initializers.TruncatedNormal(stddev=0.02)
        self.class_token = self.add_weight(shape=(1, 1, width), initializer=init,
                                           name="class_token")
        self.registers = (self.add_weight(shape=(1, self.num_registers, width), initializer=init,
                                          name="registers") if self.num_registers else None)
        # Only where a method masks: a weight no loss reaches would have no gradient.
        self.mask_token = (self.add_weight(shape=(1, 1, width), initializer="zeros",
                                           name="mask_token") if self.use_mask_token else None)
        self.position = self.add_weight(shape=(1, self.grid, self.grid, width), initializer=init,
                                        name="position_embedding")
        self.class_position = self.add_weight(shape=(1, 1, width), initializer=init,
                                              name="class_position_embedding")

    def positions(self, height, width):
        """The patch grid's position embeddings at `height` x `width`: `[1, h * w, C]`."""
        position = self.position
        if not (isinstance(height, int) and isinstance(width, int)
                and (height, width) == (self.grid, self.grid)):
            rows, columns = bicubic_matrix(height, self.grid), bicubic_matrix(width, self.grid)
            position = tf.einsum("hi,bijc,wj->bhwc", rows, tf.cast(position, tf.float32), columns)
            position = tf.cast(position, self.position.dtype)
        return ops.reshape(position, (1, -1, position.shape[-1]))

    def call(self, patch_map, keep=None, masked=None):
        shape = ops.shape(patch_map)
        batch, height, width, channels = shape[0], shape[1], shape[2], patch_map.shape[-1]
        patches = ops.reshape(patch_map, (batch, -1, channels))
        if masked is not None:
            if self.mask_token is None:
                raise ValueError("vit: masking patches needs the mask token; bind "
                                 "`vit.mask_token = True`.")
            masked = ops.cast(ops.expand_dims(masked, -1), patches.dtype)
            patches = patches * (1 - masked) + ops.cast(self.mask_token, patches.dtype) * masked
        patches = patches + ops.cast(self.positions(height, width), patches.dtype)
        if keep is not None:
            patches = ops.take_along_axis(patches, ops.expand_dims(keep, -1), axis=1)
        prefix = [ops.cast(self.class_token + self.class_position, patches.dtype)]
        if self.registers is not None:
            prefix.append(ops.cast(self.registers, patches.dtype))
        prefix = ops.concatenate(prefix, axis=1)
        return ops.concatenate([ops.tile(prefix, (batch, 1, 1)), patches], axis=1)

    def compute_output_shape(self, input_shape):
        tokens = (None if input_shape[1] is None or input_shape[2] is None
                  else 1 + self.num_registers + input_shape[1] * input_shape[2])
        return (input_shape[0], tokens, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "grid": self.grid, "num_registers": self.num_registers,
                "use_mask_token": self.use_mask_token}


@keras.saving.register_keras_serializable(package="keras_ssl")
class TransformerBlock(keras.layers.Layer):
    """A pre-norm encoder block: `x + LS1(attention(LN(x)))`, then `x + LS2(MLP(LN(x)))`.

    Attention is `keras.ops.dot_product_attention` (a fused kernel where the
    device has one); the MLP is Dense(mlp_ratio C), GELU, Dense(C). LayerScale
    (Touvron et al. 2021, used by DINOv2) multiplies each branch by a learned
    per-channel vector initialised to `layer_scale`; None leaves it out.
    """

    def __init__(self, num_heads: int, mlp_ratio: float = 4.0, layer_scale: float | None = None,
                 epsilon: float = 1e-6, kernel_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.mlp_ratio = int(num_heads), float(mlp_ratio)
        self.layer_scale, self.epsilon = layer_scale, float(epsilon)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def build(self, input_shape):
        width = input_shape[-1]
        dense = dict(kernel_initializer="glorot_uniform", kernel_regularizer=self.kernel_regularizer)
        self.norm1 = keras.layers.LayerNormalization(epsilon=self.epsilon, name="norm1")
        self.qkv = keras.layers.Dense(3 * width, name="qkv", **dense)
        self.projection = keras.layers.Dense(width, name="projection", **dense)
        self.norm2 = keras.layers.LayerNormalization(epsilon=self.epsilon, name="norm2")
        self.fc1 = keras.layers.Dense(int(width * self.mlp_ratio), name="fc1", **dense)
        self.fc2 = keras.layers.Dense(width, name="fc2", **dense)
        for layer, shape in ((self.norm1, input_shape), (self.qkv, input_shape),
                             (self.projection, input_shape), (self.norm2, input_shape),
                             (self.fc1, input_shape),
                             (self.fc2, (*input_shape[:-1], int(width * self.mlp_ratio)))):
            layer.build(shape)
        self.scales = None
        if self.layer_scale is not None:
            init = keras.initializers.Constant(self.layer_scale)
            self.scales = [self.add_weight(shape=(width,), initializer=init, name=f"layer_scale{i}")
                           for i in (1, 2)]

    def _scaled(self, x, i):
        return x if self.scales is None else x * ops.cast(self.scales[i], x.dtype)

    def call(self, x, attention_mask=None):
        """`x` `[B, T, C]`; `attention_mask` `[B, T]` bool, the tokens others may attend to.

        A token outside the mask influences no other token's output (its own
        output is still computed), so a sequence padded to a static length
        encodes its visible tokens exactly as the shorter sequence would.
        """
        shape = ops.shape(x)
        batch, tokens, width = shape[0], shape[1], x.shape[-1]
        qkv = ops.reshape(self.qkv(self.norm1(x)),
                          (batch, tokens, 3, self.num_heads, width // self.num_heads))
        # Unstacked rather than sliced: 5% faster per ViT-S/16 step on a CPU.
        query, key, value = ops.unstack(qkv, 3, axis=2)
        mask = None if attention_mask is None else ops.cast(attention_mask, "bool")[:, None, None, :]
        attended = ops.dot_product_attention(query, key, value, mask=mask)
        x = x + self._scaled(self.projection(ops.reshape(attended, (batch, tokens, width))), 0)
        hidden = keras.activations.gelu(self.fc1(self.norm2(x)), approximate=False)
        return x + self._scaled(self.fc2(hidden), 1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "mlp_ratio": self.mlp_ratio,
                "layer_scale": self.layer_scale, "epsilon": self.epsilon,
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer)}


@keras.saving.register_keras_serializable(package="keras_ssl")
class PatchTokenMap(keras.layers.Layer):
    """The patch tokens of a sequence as the `[B, h, w, C]` map of the patch grid."""

    def __init__(self, num_prefix_tokens: int, **kwargs):
        super().__init__(**kwargs)
        self.num_prefix_tokens = int(num_prefix_tokens)

    def call(self, tokens, patch_map):
        shape = ops.shape(patch_map)
        return ops.reshape(tokens[:, self.num_prefix_tokens:],
                           (shape[0], shape[1], shape[2], tokens.shape[-1]))

    def compute_output_shape(self, tokens_shape, patch_map_shape):
        return (*patch_map_shape[:3], tokens_shape[-1])

    def get_config(self):
        return {**super().get_config(), "num_prefix_tokens": self.num_prefix_tokens}


@keras.saving.register_keras_serializable(package="keras_ssl")
class Pooling(keras.layers.Layer):
    """`[B, T, C]` -> `[B, C]`: the class token, or the mean of the patch tokens."""

    def __init__(self, pooling: str, num_prefix_tokens: int, **kwargs):
        super().__init__(**kwargs)
        self.pooling, self.num_prefix_tokens = pooling, int(num_prefix_tokens)

    def call(self, tokens):
        if self.pooling == "class_token":
            return tokens[:, 0]
        return ops.mean(tokens[:, self.num_prefix_tokens:], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "pooling": self.pooling,
                "num_prefix_tokens": self.num_prefix_tokens}


@keras.saving.register_keras_serializable(package="keras_ssl")
class CheckPatchDivisible(keras.layers.Layer):
    """Refuses images whose side the patch size does not divide (static sizes at trace time)."""

    def __init__(self, patch_size: int, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = int(patch_size)

    def call(self, images):
        for side in images.shape[1:3]:
            if side is not None:
                _check_divisible(side, self.patch_size)
        return images

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size}


def _check_divisible(image_size: int, patch_size: int) -> None:
    if image_size % patch_size:
        raise BackboneInputError(
            f"vit: an input side of {image_size} px is not a multiple of the patch size "
            f"{patch_size}; make every image the backbone sees a multiple of {patch_size} (the "
            f"training images, keras_ssl.train.image_size, e.g. "
            f"{max(image_size // patch_size, 1) * patch_size}; a method's crops or patches) "
            f"or bind vit.patch_size to a divisor of {image_size}.")


def vit(
    widening_factor: int = 3,
    depth: int = 12,
    patch_size: int = 16,
    image_size: int = 224,
    mlp_ratio: float = 4.0,
    num_registers: int = 0,
    layer_scale: float | None = None,
    mask_token: bool = False,
    pooling: str = "class_token",
    weight_decay: float = 0.0,
    layer_norm_epsilon: float = 1e-6,
    synchronized_bn: bool = False,
    name: str | None = None,
) -> keras.Model:
    """Builds a Vision Transformer backbone.

    End-points: `block1`..`block{depth}` (each block's patch tokens as a
    `[batch, H/p, W/p, 64 k]` map) and `pre_logits` (`[batch, 64 k]`: the
    class token after the final norm, or the mean of its patch tokens).

    Args:
      widening_factor: k, the number of 64-d heads; the width is 64 k (3, 6
        and 12 for ViT-Tiny, -Small and -Base, each of depth 12).
      depth: Number of transformer blocks.
      patch_size: Side p of the square patches (16 at 224 px; 2, 4 or 8 for
        32-96 px images).
      image_size: The side the position embeddings are learned at; other
        sides (multiples of p) use resized embeddings.
      mlp_ratio: Hidden width of each MLP over the width.
      num_registers: Register tokens (0 for none; DINOv2 uses 4).
      layer_scale: LayerScale's initial value (DINOv2: 1e-5); None for none.
      mask_token: Add the learned mask token that `encode_tokens(masked=...)`
        puts in place of masked patches (iBOT, DINOv2).
      pooling: `"class_token"` or `"mean"` (of the patch tokens), for
        `pre_logits`.
      weight_decay: Decay on the dense and patch kernels as an L2 loss
        (gradient `wd * w`); leave 0 with a decoupled decay (AdamW).
      layer_norm_epsilon: Epsilon of every LayerNorm.
      synchronized_bn: The ViT has no batch norm; this is what the batch norm
        of a method's heads on it does, as the heads on another family follow
        its `synchronized_bn`: compute batch statistics across replicas.
      name: Model name (default `vit`).

    Returns:
      A backbone (see `keras_ssl.backbones.base.make_backbone`).

    Example:

    >>> net = vit(widening_factor=1, depth=2, patch_size=4, image_size=32)
    >>> out = net(keras.ops.zeros((2, 32, 32, 3)))
    >>> tuple(out["block2"].shape), tuple(out["pre_logits"].shape)
    ((2, 8, 8, 64), (2, 64))
    """
    k = check_positive_int("vit", "widening_factor", widening_factor)
    depth = check_positive_int("vit", "depth", depth)
    patch_size = check_positive_int("vit", "patch_size", patch_size)
    image_size = check_positive_int("vit", "image_size", image_size)
    num_registers = int(num_registers)
    if num_registers < 0:
        raise ValueError(f"vit: num_registers must be >= 0, got {num_registers}.")
    if pooling not in POOLINGS:
        raise ValueError(f"vit: unknown pooling {pooling!r}; choose one of {list(POOLINGS)}.")
    if mlp_ratio <= 0:
        raise ValueError(f"vit: mlp_ratio must be positive, got {mlp_ratio}.")
    _check_divisible(image_size, patch_size)
    width = HEAD_DIM * k
    regularizer = keras.regularizers.L2(weight_decay / 2) if weight_decay else None

    inputs = keras.Input((None, None, 3), name="images")
    checked = CheckPatchDivisible(patch_size, name="check_patch_size")(inputs)
    patch_map = keras.layers.Conv2D(
        width, patch_size, strides=patch_size, padding="valid", kernel_regularizer=regularizer,
        name=_PATCHES)(checked)
    x = TokenEmbedding(image_size // patch_size, num_registers, mask_token,
                       name=_TOKENS)(patch_map)
    prefix = 1 + num_registers
    endpoints = {}
    for i in range(depth):
        x = TransformerBlock(k, mlp_ratio, layer_scale, layer_norm_epsilon, regularizer,
                             name=_block_name(i))(x)
        endpoints[f"block{i + 1}"] = PatchTokenMap(prefix, name=f"block{i + 1}")(x, patch_map)
    x = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, name=_NORM)(x)
    endpoints["pre_logits"] = Pooling(pooling, prefix, name="pre_logits")(x)
    spec = dict(family="vit", widening_factor=k, depth=depth, patch_size=patch_size,
                image_size=image_size, num_registers=num_registers, mask_token=bool(mask_token),
                pooling=pooling, synchronized_bn=bool(synchronized_bn))
    return make_backbone(inputs, endpoints, name=name or "vit", spec=spec)


def encode_tokens(backbone: keras.Model, images, *, keep=None, masked=None, visible=None,
                  training=False):
    """Runs a `vit` backbone's layers on all, some or masked patch tokens.

    Args:
      backbone: A model built by `vit`.
      images: `[B, H, W, 3]` in [0, 1], H and W multiples of the patch size.
      keep: `[B, K]` int patch positions (row-major over the `H/p x W/p`
        grid) to encode, K the same for every image; None encodes all.
      masked: `[B, H/p * W/p]` bool, the patches replaced by the mask token
        (before `keep` selects); None masks none.
      visible: `[B, H/p * W/p]` bool, the patches the others may attend to
        (the class token and registers always are); the encoded visible
        tokens equal those of encoding them alone with `keep`, at a static
        sequence length (I-JEPA's context). None: all.
      training: Passed to the layers.

    Returns:
      `{"class_token": [B, C], "registers": [B, R, C], "patch_tokens": [B, N, C]}`
      after the final norm; N = K with `keep`, in its order.

    Example:

    >>> net = vit(widening_factor=1, depth=1, patch_size=4, image_size=16)
    >>> out = encode_tokens(net, keras.ops.zeros((2, 16, 16, 3)),
    ...                     keep=keras.ops.zeros((2, 5), dtype="int32"))
    >>> tuple(out["patch_tokens"].shape)
    (2, 5, 64)
    """
    spec = dict(getattr(backbone, "_spec_items", ()))
    if spec.get("family") != "vit":
        raise ValueError(
            f"encode_tokens needs a vit backbone; got {backbone.name!r} (family "
            f"{spec.get('family')!r}). Bind keras_ssl.build_method.backbone = 'vit'.")
    images = backbone.get_layer("check_patch_size")(images)
    patch_map = backbone.get_layer(_PATCHES)(images, training=training)
    x = backbone.get_layer(_TOKENS)(patch_map, keep=keep, masked=masked)
    prefix = 1 + spec["num_registers"]
    attention_mask = None
    if visible is not None:
        visible = ops.cast(visible, "bool")
        if keep is not None:
            visible = ops.take_along_axis(visible, keep, axis=1)
        attention_mask = ops.concatenate(
            [ops.ones((ops.shape(visible)[0], prefix), "bool"), visible], axis=1)
    for i in range(spec["depth"]):
        x = backbone.get_layer(_block_name(i))(x, attention_mask=attention_mask, training=training)
    x = backbone.get_layer(_NORM)(x)
    return {"class_token": x[:, 0], "registers": x[:, 1:prefix], "patch_tokens": x[:, prefix:]}
