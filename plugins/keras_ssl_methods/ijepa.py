"""I-JEPA (Assran et al. 2023): predict a momentum encoder's patch tokens of target blocks from a context block.

One image, no colour or flip augmentation (a random resized crop of 30-100%
of its area only). Per image, `keras_ssl.toolkit.masking.multi_block_masks`
draws M = 4 target blocks (each 15-20% of the patch grid, aspect ratio
0.75-1.5) and one context block (85-100%, square) from which every target
patch is removed. The target encoder, a momentum copy of the backbone, sees
the whole image; its output patch tokens pass through a layer norm without
parameters: s_y = LN(f_target(x)). The context encoder (the backbone, the
one exported) sees the context patches only: s_x = f(x_context). A narrow
ViT predictor g (a Dense to its width, fixed 2-d sine-cosine positions, a
learned mask token, transformer blocks, a LayerNorm and a Dense back to the
encoder's width) gets the context tokens and one mask token at each position
of target block i, once per block, and predicts s_y there. The loss is the
squared L2 distance per target patch, over the width C,

    loss = 1/M sum_i 1/|B_i| sum_{j in B_i} 1/C || g(s_x, pos(B_i))_j - sg(s_y)_j ||^2_2,

averaged over the images of the batch (sg: no gradient). The paper writes
the sum of the squared distances over a block's patches; here each block's
patches are averaged, as its code does (its code draws one block size per
batch and averages over every element, so each block weighs the same),
which keeps the loss a mean over images, the same on any number of
replicas; and, as its code, the distance is averaged over the C channels (a
constant factor that keeps the loss's scale, and so plain SGD's step,
independent of the width). The paper's code uses a smooth-L1 loss; the
paper's formula, the squared L2 distance, is what this computes. The target
encoder's momentum rises linearly from 0.996 to 1 over the run (the paper's
schedule; `momentum_schedule="cosine"` gives BYOL's).

Static shapes (what XLA and TPUs need): the number of context patches
differs per image, so nothing is gathered. The context encoder runs on all
N patch tokens with an attention key mask (`encode_tokens(visible=context)`):
a non-context token is never attended to, so every context token's output is
exactly that of encoding the context patches alone (tests/methods/
test_ijepa.py checks this). The predictor runs on N slots per target block:
slot j holds the context token j when j is in the context, the mask token
when j is in target block i (the two are disjoint), and is hidden from
attention otherwise. Attention is the same for any order of its tokens (the
positions are added to them), so the predictions at block i are exactly
those of the paper's predictor on [context tokens, mask tokens of block i].
The cost: the context encoder processes N tokens per image instead of the
context's (0.42 N on average on 14 x 14 and 16 x 16 grids; `context_fraction`
is a metric), the predictor N per block instead of context plus block
(0.59 N): about 1.7x the paper's training FLOPs per image for ViT-H/14 and
ViT-B/16 (dense layers; the target encoder's full pass is the same in both).
Unlike the paper's code, which cuts every context of a batch to the
smallest one's size, every image keeps its whole context.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_ssl import Method
from keras_ssl.augment import inception_crop
from keras_ssl.backbones import backbone_spec, output_dim
from keras_ssl.backbones.vit import TransformerBlock, encode_tokens
from keras_ssl.schedules import cosine_momentum
from keras_ssl.toolkit.masking import (
    check_multi_block, multi_block_masks, sincos_position_embedding,
)

MOMENTUM_SCHEDULES = ("linear", "cosine")
# The target tokens' layer norm (no parameters): PyTorch's `F.layer_norm` default.
TARGET_NORM_EPSILON = 1e-5


def linear_momentum(base_momentum: float, progress, final_momentum: float = 1.0) -> tf.Tensor:
    """I-JEPA's target momentum: from `base_momentum` to `final_momentum` linearly in the progress.

    Example:

    >>> round(float(linear_momentum(0.996, 0.5)), 6)
    0.998
    """
    progress = tf.clip_by_value(tf.cast(progress, tf.float32), 0.0, 1.0)
    return base_momentum + (final_momentum - base_momentum) * progress


def normalize_tokens(tokens, epsilon: float = TARGET_NORM_EPSILON) -> tf.Tensor:
    """Layer norm over the channels without scale or offset: `(x - mean) / sqrt(var + eps)`."""
    tokens = tf.cast(tokens, tf.float32)
    mean, variance = tf.nn.moments(tokens, axes=[-1], keepdims=True)
    return (tokens - mean) * tf.math.rsqrt(variance + epsilon)


def ijepa_loss(predictions, targets, target_masks) -> tf.Tensor:
    """Mean over images and blocks of each block's mean squared L2 distance per patch, over C.

    Args:
      predictions: `[B, M, N, C]`, the predictor's output for block i at every
        position (only block i's positions count).
      targets: `[B, N, C]`, the normalised target tokens (no gradient flows
        into them).
      target_masks: `[B, M, N]` bool, the patches of each target block.

    Returns:
      A float32 scalar.
    """
    predictions = tf.cast(predictions, tf.float32)
    targets = tf.stop_gradient(tf.cast(targets, tf.float32))
    squared = tf.reduce_mean(tf.square(predictions - targets[:, None]), axis=-1)  # [B, M, N]
    weights = tf.cast(target_masks, tf.float32)
    per_block = tf.reduce_sum(squared * weights, -1) / tf.maximum(tf.reduce_sum(weights, -1), 1.0)
    return tf.reduce_mean(per_block)


@keras.saving.register_keras_serializable(package="keras_ssl_methods")
class IJEPAPredictor(keras.layers.Layer):
    """I-JEPA's narrow ViT predictor, on N static slots per target block.

    Call: `(context_tokens [B, N, C], context [B, N] bool, targets [B, M, N]
    bool, grid (h, w))` -> `[B, M, N, C]`: for block i, position j holds the
    prediction of the target token j (meaningful where `targets[:, i, j]`).
    The context tokens are mapped to the predictor's width and get its fixed
    sine-cosine positions; the target positions get the mask token plus their
    position; the other positions are hidden from attention.
    """

    def __init__(self, output_width: int, width: int = 384, depth: int = 12, num_heads: int = 16,
                 mlp_ratio: float = 4.0, epsilon: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.output_width, self.width, self.depth = int(output_width), int(width), int(depth)
        self.num_heads, self.mlp_ratio, self.epsilon = int(num_heads), float(mlp_ratio), epsilon

    def build(self, input_shape=None):
        del input_shape
        self.embed = keras.layers.Dense(self.width, name="predictor_embed")
        self.embed.build((None, None, self.output_width))
        self.mask_token = self.add_weight(
            shape=(1, 1, self.width), name="mask_token",
            initializer=keras.initializers.TruncatedNormal(stddev=0.02))
        self.blocks = []
        for i in range(self.depth):
            block = TransformerBlock(self.num_heads, self.mlp_ratio, epsilon=self.epsilon,
                                     name=f"predictor_block{i + 1}")
            block.build((None, None, self.width))
            self.blocks.append(block)
        self.norm = keras.layers.LayerNormalization(epsilon=self.epsilon, name="predictor_norm")
        self.norm.build((None, None, self.width))
        self.projection = keras.layers.Dense(self.output_width, name="predictor_projection")
        self.projection.build((None, None, self.width))
        self.built = True

    def call(self, context_tokens, context, targets, grid):
        num_targets, num_patches = targets.shape[1], targets.shape[2]
        positions = sincos_position_embedding(int(grid[0]), int(grid[1]), self.width)
        x = self.embed(context_tokens)
        positions = tf.cast(positions[None], x.dtype)                              # [1, N, P]
        x = x + positions
        masks = tf.cast(self.mask_token, x.dtype) + positions
        # One pass per target block, all blocks in one batch: [B * M, N, P].
        slots = tf.where(targets[..., None], masks[:, None], x[:, None])
        slots = tf.reshape(slots, (-1, num_patches, self.width))
        visible = tf.reshape(tf.logical_or(context[:, None], targets), (-1, num_patches))
        for block in self.blocks:
            slots = block(slots, attention_mask=visible)
        out = self.projection(self.norm(slots))
        return tf.reshape(out, (-1, num_targets, num_patches, self.output_width))

    def get_config(self):
        return {**super().get_config(), "output_width": self.output_width, "width": self.width,
                "depth": self.depth, "num_heads": self.num_heads, "mlp_ratio": self.mlp_ratio,
                "epsilon": self.epsilon}


def _check_range(name, values, low, high, low_open=True, high_open=False):
    try:
        lo, hi = (float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"ijepa: {name} must be a pair (min, max), got {values!r}; bind "
                         f"`ijepa.{name} = (min, max)`.") from None
    above = lo > low if low_open else lo >= low
    below = hi < high if high_open else hi <= high
    if not (above and below and lo <= hi):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"ijepa: {name} must be (min, max) with min <= max inside {interval}, "
                         f"got {values!r}; fix `ijepa.{name}`.")
    return lo, hi


class IJEPA(Method):
    """I-JEPA: predict the momentum encoder's normalised patch tokens of target blocks from a context block.

    Args:
      backbone: A `vit` backbone, the context encoder (the one exported).
      num_targets: M, the target blocks per image (4).
      target_scale: Fraction of the patch grid each target block covers
        ((0.15, 0.2)).
      target_aspect_ratio: Width / height of the target blocks ((0.75, 1.5)).
      context_scale: Fraction of the grid the context block covers before the
        targets are removed ((0.85, 1.0); its aspect ratio is 1).
      min_context: Context patches a context block should keep after the
        targets are removed: of 8 positions drawn, the first that keeps this
        many is used, else the one keeping most (10, the paper's code's
        `min_keep`).
      crop_area_range: Area of the random resized crop ((0.3, 1.0)); no
        other augmentation.
      predictor_width: Width of the predictor (384).
      predictor_depth: Its transformer blocks (12).
      predictor_num_heads: Its attention heads (16, the ViT-H encoder's, as the
        paper's code takes the encoder's).
      base_momentum: The target encoder's momentum at the first step (0.996).
      final_momentum: Its momentum at the last step (1.0).
      momentum_schedule: `"linear"` (the paper's) or `"cosine"` (BYOL's).
      **kwargs: Passed to `keras_ssl.Method`.

    Example:

    >>> from keras_ssl.testing import tiny_backbone, tiny_examples
    >>> ijepa = IJEPA(tiny_backbone("vit"), num_targets=2, min_context=4,
    ...               predictor_width=16, predictor_depth=1, predictor_num_heads=2)
    >>> batch = next(iter(ijepa.make_dataset(tiny_examples(IJEPA, 4), 4)))
    >>> tuple(batch["context"].shape), tuple(batch["targets"].shape)
    ((4, 16), (4, 2, 16))
    >>> loss, metrics = ijepa.compute_pretext_loss(batch, training=False)
    >>> sorted(metrics)
    ['context_fraction', 'momentum', 'prediction_loss', 'target_fraction']
    """

    required_backbone = {"family": "vit"}

    @classmethod
    def tiny_settings(cls):
        # The 4 x 4 grid of the tiny ViT (16 px, 4-px patches) fits two blocks of
        # 2-3 patches and keeps a context.
        return dict(num_targets=2, min_context=4, predictor_width=16, predictor_depth=1,
                    predictor_num_heads=2)

    def __init__(
        self,
        backbone,
        num_targets: int = 4,
        target_scale=(0.15, 0.2),
        target_aspect_ratio=(0.75, 1.5),
        context_scale=(0.85, 1.0),
        min_context: int = 10,
        crop_area_range=(0.3, 1.0),
        predictor_width: int = 384,
        predictor_depth: int = 12,
        predictor_num_heads: int = 16,
        base_momentum: float = 0.996,
        final_momentum: float = 1.0,
        momentum_schedule: str = "linear",
        **kwargs,
    ):
        super().__init__(backbone, **kwargs)
        if isinstance(num_targets, bool) or not isinstance(num_targets, int) or num_targets < 1:
            raise ValueError(f"ijepa: num_targets must be an integer >= 1, got {num_targets!r}; "
                             f"bind `ijepa.num_targets = 4` (the paper's).")
        self.target_scale = _check_range("target_scale", target_scale, 0.0, 1.0, high_open=True)
        self.target_aspect_ratio = _check_range("target_aspect_ratio", target_aspect_ratio,
                                                0.0, float("inf"), high_open=True)
        self.context_scale = _check_range("context_scale", context_scale, 0.0, 1.0)
        self.crop_area_range = _check_range("crop_area_range", crop_area_range, 0.0, 1.0)
        for name, value in (("min_context", min_context), ("predictor_width", predictor_width),
                            ("predictor_depth", predictor_depth),
                            ("predictor_num_heads", predictor_num_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ijepa: {name} must be an integer >= 1, got {value!r}; fix "
                                 f"`ijepa.{name}`.")
        if predictor_width % 4:
            raise ValueError(
                f"ijepa: predictor_width must be a multiple of 4 (its sine-cosine positions), got "
                f"{predictor_width}; fix `ijepa.predictor_width` (the paper: 384).")
        if predictor_width % predictor_num_heads:
            raise ValueError(
                f"ijepa: predictor_width {predictor_width} is not a multiple of "
                f"predictor_num_heads {predictor_num_heads}; bind `ijepa.predictor_num_heads` to "
                f"a divisor of it (the paper: 384 wide, 16 heads).")
        if not 0.0 <= base_momentum <= final_momentum <= 1.0:
            raise ValueError(
                f"ijepa: momentum must rise within [0, 1], got base_momentum {base_momentum} and "
                f"final_momentum {final_momentum}; fix `ijepa.base_momentum` / "
                f"`ijepa.final_momentum` (the paper: 0.996 -> 1.0).")
        if momentum_schedule not in MOMENTUM_SCHEDULES:
            raise ValueError(f"ijepa: unknown momentum_schedule {momentum_schedule!r}; bind "
                             f"`ijepa.momentum_schedule` to one of {list(MOMENTUM_SCHEDULES)}.")
        self.num_targets, self.min_context = num_targets, min_context
        self.base_momentum, self.final_momentum = float(base_momentum), float(final_momentum)
        self.momentum_schedule = momentum_schedule
        spec = backbone_spec(backbone)
        self.patch_size = int(spec["patch_size"])
        # A target block that cannot fit the grid is refused now, not inside tf.data.
        grid = int(spec["image_size"]) // self.patch_size
        self._check_blocks_fit(grid, grid, f"vit.image_size = {spec['image_size']}")
        width = output_dim(backbone)
        self.predictor = IJEPAPredictor(width, predictor_width, predictor_depth,
                                        predictor_num_heads, name="ijepa_predictor")
        self.predictor.build()
        self.target_backbone = self.momentum_copy(backbone)
        # `clone_model` drops the backbone's spec, which `encode_tokens` reads.
        self.target_backbone._spec_items = backbone._spec_items

    # ------------------------------------------------------------ masks
    def sample_masks(self, grid_height: int, grid_width: int):
        """`(context [N] bool, targets [M, N] bool)` for one image (draws from `keras_ssl.random`)."""
        return multi_block_masks(
            grid_height, grid_width, num_targets=self.num_targets, target_scale=self.target_scale,
            target_aspect=self.target_aspect_ratio, context_scale=self.context_scale,
            min_context=self.min_context)

    def _check_blocks_fit(self, grid_height, grid_width, where):
        try:
            check_multi_block(grid_height, grid_width, self.num_targets, self.target_scale,
                              self.target_aspect_ratio, self.context_scale, setting="sampler")
        except ValueError as error:
            raise ValueError(
                f"ijepa: the target/context blocks do not fit the {grid_height} x {grid_width} "
                f"patch grid of {where}: {error} Fix `ijepa.num_targets`, `ijepa.target_scale`, "
                f"`ijepa.context_scale` or the image/patch size.") from None

    def check_training_setup(self, global_batch_size, image_size):
        del global_batch_size
        if image_size is not None and image_size % self.patch_size == 0:
            grid = image_size // self.patch_size
            self._check_blocks_fit(grid, grid, f"keras_ssl.train.image_size = {image_size}")

    def preprocess(self, example):
        image = inception_crop(example["image"], self.crop_area_range)
        height, width = image.shape[0], image.shape[1]
        context, targets = self.sample_masks(height // self.patch_size, width // self.patch_size)
        return {"image": image, "context": context, "targets": targets}

    # ------------------------------------------------------------- loss
    def momentum(self) -> tf.Tensor:
        """The target encoder's momentum at the current step."""
        schedule = linear_momentum if self.momentum_schedule == "linear" else cosine_momentum
        return schedule(self.base_momentum, self.training_progress(), self.final_momentum)

    def target_tokens(self, images, training) -> tf.Tensor:
        """`[B, N, C]`: the target encoder's patch tokens of the whole images, layer-normalised."""
        tokens = encode_tokens(self.target_backbone, images, training=training)["patch_tokens"]
        return tf.stop_gradient(normalize_tokens(tokens))

    def predict_targets(self, images, context, targets, training) -> tf.Tensor:
        """`[B, M, N, C]`: the predictor's output per target block from the context encoder's tokens."""
        tokens = encode_tokens(self.backbone, images, visible=context,
                               training=training)["patch_tokens"]
        grid = (images.shape[1] // self.patch_size, images.shape[2] // self.patch_size)
        return self.predictor(tokens, context, targets, grid=grid, training=training)

    def compute_pretext_loss(self, batch, training):
        images, context, targets = batch["image"], batch["context"], batch["targets"]
        predictions = self.predict_targets(images, context, targets, training)
        loss = ijepa_loss(predictions, self.target_tokens(images, training), targets)
        metrics = {
            "prediction_loss": loss,
            "context_fraction": tf.reduce_mean(tf.cast(context, tf.float32)),
            "target_fraction": tf.reduce_mean(tf.cast(tf.reduce_any(targets, 1), tf.float32)),
            "momentum": self.momentum(),
        }
        return loss, metrics

    def after_update(self, saved):
        """Moves the target encoder towards the context encoder."""
        del saved
        self.update_momentum_copies(self.momentum())
