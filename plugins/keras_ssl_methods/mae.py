"""MAE (He et al. 2022): masked autoencoders; the encoder sees only the visible patches.

Each image is cut into N patches of p x p pixels; a random 75% of them are
masked, drawn per image, and the ViT encoder runs on the K = int(N (1 - r))
visible ones alone (the class token with them), which is where its speed
comes from: with r = 0.75 the encoder's sequence is a quarter as long. A
light decoder (a Dense from the encoder's width to its own, 8 blocks of
width 512 with 16 heads at ImageNet scale) gets the encoded tokens put back
at their positions and a learned mask token at every masked one, each with
fixed 2-d sine-cosine position embeddings (the class token kept, with none),
and predicts every patch's p * p * 3 pixels through a final LayerNorm and a
Dense. The loss is the mean squared error over the masked patches only,

    loss = sum_n m_n mean_j (y_nj - t_nj)^2 / sum_n m_n,

with m_n = 1 for a masked patch and, with `normalized_pixels` (the paper's
norm_pix_loss), the target t of each patch its own pixels minus their mean,
over their (unbiased) standard deviation; else the [0, 1] pixels. Only the
encoder (the backbone) is exported, with a `reconstruct` signature for
looking at what the decoder learned (`keras-ssl-reconstruct`).

The paper's recipe: AdamW at 1.5e-4 x batch / 256, weight decay 0.05, betas
(0.9, 0.95), 40 warm-up epochs, 800-1600 epochs, random resized crops of
area 0.2-1 and flips as the only augmentation. Its encoder's position
embeddings are fixed sine-cosine ones; keras-ssl's ViT learns them.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_ssl import Method
from keras_ssl.augment.view_specs import ViewSpec, draw_view
from keras_ssl.backbones import backbone_spec
from keras_ssl.backbones.vit import TransformerBlock, encode_tokens
from keras_ssl.random import example_seed, seeded
from keras_ssl.toolkit.masking import (
    check_mask_ratio, normalized_pixel_target, patch_statistics, patchify, random_patch_mask,
    sincos_position_embedding, unpatchify, visible_count,
)

# Shown in place of a masked patch by the `reconstruct` signatures.
MASKED_GREY = 0.5
# The seed of the masks `reconstruct` draws: fixed, so an export shows the same
# masks for the same images every time.
RECONSTRUCT_SEED = 31


def check_area_range(setting: str, area_range) -> tuple:
    """`area_range` as a float pair `0 < low <= high <= 1`, else a one-line ValueError naming `setting`."""
    try:
        low, high = (float(v) for v in area_range)
    except (TypeError, ValueError):
        raise ValueError(f"{setting} must be a pair (low, high) of crop areas, got "
                         f"{area_range!r}; e.g. (0.2, 1.0).") from None
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"{setting} must satisfy 0 < low <= high <= 1, got {area_range!r}; "
                         f"e.g. (0.2, 1.0).")
    return low, high


def crop_and_flip(image, area_range, flip: bool):
    """A random resized crop (Inception crop, aspect 3/4-4/3) of `area_range` and a flip, at the image's size."""
    spec = ViewSpec(area_range=tuple(area_range), flip=bool(flip), jitter=None,
                    grayscale_probability=0.0)
    return draw_view(image, spec)


def masked_patch_mse(predictions, targets, masked):
    """MAE's loss: per-patch mean squared error, averaged over the masked patches.

    Args:
      predictions: `[B, N, P]` predicted patches.
      targets: `[B, N, P]` target patches.
      masked: `[B, N]` bool (or 0/1), True where the patch was masked.

    Returns:
      The scalar `sum_n m_n mean_j (y - t)^2 / sum_n m_n` (float32; 0 when
      nothing is masked).
    """
    error = tf.reduce_mean(tf.square(tf.cast(predictions, tf.float32)
                                     - tf.cast(targets, tf.float32)), axis=-1)
    weights = tf.cast(masked, tf.float32)
    return tf.reduce_sum(error * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)


def mask_images(images, masked_pixels):
    """`images` with every masked pixel (`masked_pixels` `[B, H, W, 1]`, 1 = masked) set to `MASKED_GREY`."""
    return images * (1.0 - masked_pixels) + MASKED_GREY * masked_pixels


def fixed_masks(images, draw, signature, seed: int = RECONSTRUCT_SEED):
    """`draw()`'s masks for each of `images`, seeded by `seed` and the image's own pixels.

    The `reconstruct` signatures use it: an image gets the same mask in every
    call, alone or in any batch, and different images get different masks,
    drawn as in training (`draw` runs under `keras_ssl.random.seeded`).

    Args:
      images: `[B, H, W, C]`, the images as the model sees them.
      draw: `() -> tensors`, one image's masks.
      signature: The `tf.TensorSpec`s of what `draw` returns.
      seed: The fixed seed.

    Returns:
      `draw()`'s outputs stacked over the batch.
    """
    # The first 8 bytes of each image's fingerprint as one int64 key.
    keys = tf.bitcast(tf.fingerprint(tf.cast(images, tf.float32)), tf.int64)

    def one(key):
        with seeded(example_seed(seed, key)):
            return draw()

    return tf.map_fn(one, keys, fn_output_signature=signature)


class MAEDecoder(keras.layers.Layer):
    """MAE's decoder: the encoded tokens back in place, mask tokens elsewhere, blocks, pixels.

    Call: `(tokens [B, 1 + K, C] (the class token, then the K encoded
    patches), keep [B, K] int (their positions), grid (h, w))` ->
    `[B, h * w, pixels_per_patch]` float32.
    """

    def __init__(self, width: int, depth: int, num_heads: int, mlp_ratio: float,
                 pixels_per_patch: int, **kwargs):
        super().__init__(**kwargs)
        self.width, self.depth, self.num_heads = int(width), int(depth), int(num_heads)
        self.mlp_ratio, self.pixels_per_patch = float(mlp_ratio), int(pixels_per_patch)
        self.embed = keras.layers.Dense(self.width, name="embed")
        self.blocks = [TransformerBlock(self.num_heads, self.mlp_ratio, None, 1e-6,
                                        name=f"block{i + 1}") for i in range(self.depth)]
        self.norm = keras.layers.LayerNormalization(epsilon=1e-6, name="norm")
        self.prediction = keras.layers.Dense(self.pixels_per_patch, name="prediction")

    def build(self, input_shape):
        self.embed.build(input_shape)
        shape = (input_shape[0], None, self.width)
        for block in self.blocks:
            block.build(shape)
        self.norm.build(shape)
        self.prediction.build(shape)
        self.mask_token = self.add_weight(
            shape=(1, 1, self.width), initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="mask_token")

    def call(self, tokens, keep, grid=None):
        height, width = grid
        num_patches = height * width
        x = self.embed(tokens)
        class_token, visible = x[:, :1], x[:, 1:]
        # Position n reads row slot(n) of [visible tokens..., mask token]: its own
        # token where it was kept, the mask token (row K) where it was masked.
        # A gather with static shapes, whatever order `keep` is in.
        keep = tf.cast(keep, tf.int32)
        num_kept = keep.shape[1] if keep.shape[1] is not None else tf.shape(keep)[1]
        hits = tf.equal(keep[:, :, None], tf.range(num_patches, dtype=tf.int32)[None, None])
        slot = tf.where(tf.reduce_any(hits, axis=1),
                        tf.argmax(tf.cast(hits, tf.int32), axis=1, output_type=tf.int32),
                        num_kept)
        mask_token = tf.tile(tf.cast(self.mask_token, x.dtype), [tf.shape(x)[0], 1, 1])
        patches = tf.gather(tf.concat([visible, mask_token], axis=1), slot, batch_dims=1)
        position = sincos_position_embedding(height, width, self.width)
        patches = patches + tf.cast(position, x.dtype)[None]
        x = tf.concat([class_token, patches], axis=1)  # the class token has no position
        for block in self.blocks:
            x = block(x)
        return tf.cast(self.prediction(self.norm(x))[:, 1:], tf.float32)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], None, self.pixels_per_patch)


class MAE(Method):
    """Masked autoencoder: reconstruct the pixels of randomly masked patches from the rest.

    Args:
      backbone: A `vit` backbone (the encoder, the one exported).
      mask_ratio: r, the fraction of patches masked per image, in [0, 1)
        (0.75); K = int(N (1 - r)) patches are encoded.
      decoder_depth: Blocks of the decoder (8).
      decoder_width: Width of the decoder (512).
      decoder_heads: Attention heads of the decoder (16); divides its width.
      decoder_mlp_ratio: The decoder's MLP width over its width (4).
      normalized_pixels: Predict each patch's pixels normalised by its own
        mean and standard deviation (the paper's norm_pix_loss; True), else
        the [0, 1] pixels.
      area_range: Area of the random resized crop (0.2-1).
      flip: Random left-right flip.
      augmentation: An augmentation stack applied after crop and flip
        ("none", as the paper).
      **kwargs: Passed to `keras_ssl.Method`.

    Example:

    >>> from keras_ssl.backbones import build_backbone
    >>> net = build_backbone("vit", widening_factor=1, depth=2, patch_size=4, image_size=16)
    >>> mae = MAE(net, decoder_depth=1, decoder_width=32, decoder_heads=2)
    >>> out = mae.reconstruct(tf.zeros([2, 16, 16, 3]))
    >>> out["reconstruction"].shape, out["mask"].shape
    (TensorShape([2, 16, 16, 3]), TensorShape([2, 16, 16, 1]))
    """

    required_backbone = {"family": "vit"}

    @classmethod
    def tiny_settings(cls):
        return dict(decoder_depth=1, decoder_width=32, decoder_heads=2)

    def __init__(self, backbone, mask_ratio: float = 0.75, decoder_depth: int = 8,
                 decoder_width: int = 512, decoder_heads: int = 16,
                 decoder_mlp_ratio: float = 4.0, normalized_pixels: bool = True,
                 area_range=(0.2, 1.0), flip: bool = True, augmentation="none", **kwargs):
        super().__init__(backbone, augmentation=augmentation, **kwargs)
        self.mask_ratio = check_mask_ratio(mask_ratio, "mae.mask_ratio")
        for setting, value in (("decoder_depth", decoder_depth), ("decoder_width", decoder_width),
                               ("decoder_heads", decoder_heads)):
            if int(value) != value or value < 1:
                raise ValueError(f"mae.{setting} must be a positive integer, got {value!r}.")
        if decoder_width % decoder_heads or decoder_width % 4:
            raise ValueError(f"mae.decoder_width ({decoder_width}) must be a multiple of 4 (its "
                             f"sine-cosine positions) and of mae.decoder_heads ({decoder_heads}); "
                             f"e.g. 512 and 16.")
        if not decoder_mlp_ratio > 0:
            raise ValueError(f"mae.decoder_mlp_ratio must be positive, got {decoder_mlp_ratio}.")
        self.area_range = check_area_range("mae.area_range", area_range)
        self.normalized_pixels = bool(normalized_pixels)
        self.flip = bool(flip)
        spec = backbone_spec(backbone)
        self.patch_size = int(spec["patch_size"])
        self.image_size = int(spec["image_size"])
        self.decoder = MAEDecoder(decoder_width, decoder_depth, decoder_heads, decoder_mlp_ratio,
                                  self.patch_size * self.patch_size * 3, name="mae_decoder")

    # ------------------------------------------------------------- masks
    def num_kept(self, num_patches: int) -> int:
        """K = int(N (1 - r)), the patches encoded of N = `num_patches`."""
        return visible_count(num_patches, self.mask_ratio)

    def _grid(self, height: int, width: int) -> tuple:
        return height // self.patch_size, width // self.patch_size

    def check_training_setup(self, global_batch_size, image_size):
        del global_batch_size
        if image_size is None:
            return
        if image_size % self.patch_size:
            return  # the ViT refuses it, naming its patch size
        check_mask_ratio(self.mask_ratio, "mae.mask_ratio", (image_size // self.patch_size) ** 2)

    def preprocess(self, example):
        image = self.augment(crop_and_flip(example["image"], self.area_range, self.flip))
        height, width = self._grid(*image.shape[:2])
        check_mask_ratio(self.mask_ratio, "mae.mask_ratio", height * width)
        keep, masked = random_patch_mask(height * width, self.mask_ratio)
        return {"image": image, "keep": keep, "masked": masked}

    # ------------------------------------------------------------ the task
    def encode(self, images, keep, training):
        """The encoder on the visible patches: `[B, 1 + K, C]`, the class token first."""
        encoded = encode_tokens(self.backbone, images, keep=keep, training=training)
        return tf.concat([encoded["class_token"][:, None], encoded["patch_tokens"]], axis=1)

    def targets(self, images):
        """`[B, N, p * p * 3]`: the patches the decoder predicts (normalised per patch or not)."""
        patches = patchify(tf.cast(images, tf.float32), self.patch_size)
        return normalized_pixel_target(patches) if self.normalized_pixels else patches

    def predict_patches(self, images, keep, training):
        """The decoder's `[B, N, p * p * 3]` for `images` with only the patches at `keep` encoded."""
        tokens = self.encode(images, keep, training)
        return self.decoder(tokens, keep, grid=self._grid(*images.shape[1:3]), training=training)

    def compute_pretext_loss(self, batch, training):
        images = batch["image"]
        predictions = self.predict_patches(images, batch["keep"], training)
        targets = self.targets(images)
        loss = masked_patch_mse(predictions, targets, batch["masked"])
        visible = tf.logical_not(tf.cast(batch["masked"], tf.bool))
        metrics = {"masked_mse": loss}
        if self.mask_ratio > 0:  # how far the decoder merely copies what it was shown
            metrics["visible_mse"] = masked_patch_mse(predictions, targets, visible)
        return loss, metrics

    # -------------------------------------------------------- the export
    def reconstruct(self, images):
        """Masked input, reconstruction and mask of `images` (`[B, H, W, 3]` in [0, 1]).

        Images are resized to the ViT's `image_size`; each gets a random mask
        fixed by its pixels (`fixed_masks`), so a call is reproducible. The
        reconstruction shows the input's own pixels at the visible patches and
        the decoder's elsewhere; with `normalized_pixels`
        its prediction is mapped back with each patch's mean and standard
        deviation taken from the input (what the paper's visualisations do).

        Returns:
          `{"masked": [B, s, s, 3] (masked patches grey), "reconstruction":
          [B, s, s, 3] in [0, 1], "mask": [B, s, s, 1] (1 = masked)}`, s the
          ViT's `image_size`.
        """
        size = self.image_size
        images = tf.image.resize(tf.cast(images, tf.float32), [size, size], antialias=True)
        images = tf.clip_by_value(images, 0.0, 1.0)
        height, width = self._grid(size, size)
        num_patches = height * width
        keep, masked = fixed_masks(
            images, lambda: random_patch_mask(num_patches, self.mask_ratio),
            (tf.TensorSpec([self.num_kept(num_patches)], tf.int32),
             tf.TensorSpec([num_patches], tf.bool)))
        predictions = self.predict_patches(images, keep, training=False)
        patches = patchify(images, self.patch_size)
        if self.normalized_pixels:
            mean, std = patch_statistics(patches)
            predictions = predictions * std + mean
        flags = tf.cast(masked, tf.float32)[:, :, None]
        pasted = patches * (1.0 - flags) + predictions * flags
        reconstruction = unpatchify(pasted, self.patch_size, height, width)
        mask = unpatchify(tf.tile(flags, [1, 1, self.patch_size ** 2]), self.patch_size,
                          height, width)
        return {"masked": mask_images(images, mask),
                "reconstruction": tf.clip_by_value(reconstruction, 0.0, 1.0), "mask": mask}

    def export_signatures(self):
        if not self.decoder.built:  # e.g. rebuilt from a checkpoint for keras-ssl-export
            self.reconstruct(tf.zeros([1, self.image_size, self.image_size, 3]))
        return {"reconstruct": self.reconstruct}, {"mae_decoder": self.decoder}

    def export_metadata(self):
        return {"mae": {"mask_ratio": self.mask_ratio, "patch_size": self.patch_size,
                        "image_size": self.image_size,
                        "normalized_pixels": self.normalized_pixels}}

