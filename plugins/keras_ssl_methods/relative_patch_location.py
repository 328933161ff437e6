"""Relative Patch Location (Doersch et al. 2015), as in Kolesnikov et al. 2019.

Input builder (per image, in tf.data): the Jigsaw grid — resize to 292, random
255 crop, 3x3 cells of 85 px — with one 64x64 patch per cell, centred in its
cell and moved by at most `jitter` (7) pixels each way. The cells leave a gap
of 21 px between neighbouring patches (85 - 64), +-2 * jitter, so the task
cannot be solved by continuing edges or textures across the border.

All 8 (centre, neighbour) pairs of an image are used: the neighbour of grid
cell n (row-major, centre 4 excluded) has label 0..7 in the order
top-left, top, top-right, left, right, bottom-left, bottom, bottom-right.

Chromatic aberration: lenses shift colour channels towards the image border,
so the colour fringes of a patch tell where in the image it came from —
a shortcut Doersch et al. found the network exploits. Three counter-measures,
per patch (`color_handling`):

- `drop` (default, Doersch's "colour dropping"): keep one random channel and
  replace the other two with Gaussian noise of 1/100 the kept channel's
  standard deviation;
- `grayscale`: every patch turned gray;
- `none`: no counter-measure.

Model: the shared backbone embeds each patch (pre-logits -> dense 1000-d),
the centre and neighbour embeddings are concatenated -> fc 4096 + BN + ReLU +
dropout 0.5 -> 8-way softmax. Per-patch standardisation sits in front of the
backbone and is built into the export, as for Jigsaw.
"""

from __future__ import annotations

import keras
import tensorflow as tf

import keras_ssl.random
from keras_ssl.augment import to_grayscale
from keras_ssl.toolkit import GRID, PatchGridMethod, embed_patches, fc_head
from keras_ssl.testing.tiny import TINY_PATCH_GRID

CENTRE = 4
NEIGHBOURS = (0, 1, 2, 3, 5, 6, 7, 8)
COLOR_HANDLING = ("drop", "grayscale", "none")


def drop_colors(patch: tf.Tensor, noise_fraction: float = 0.01) -> tf.Tensor:
    """Keeps one random channel of `[h, w, 3]`; the others become weak Gaussian noise."""
    keep = keras_ssl.random.uniform([], 0, 3, dtype=tf.int32)
    kept = patch[..., keep]
    noise = keras_ssl.random.normal(tf.shape(patch)) * noise_fraction * tf.math.reduce_std(kept)
    mask = tf.one_hot(keep, 3)
    return patch * mask + noise * (1.0 - mask)


class RelativePatchLocation(PatchGridMethod):
    """Predicts where a neighbouring patch lies relative to the centre one (8-way).

    Args:
      backbone: The backbone, applied to every patch.
      resize: Side the image is resized to (292).
      crop: Side of the random crop cut into the 3x3 grid (255).
      patch_size: Side of the patches (64); the gap is crop // 3 - patch_size.
      jitter: Largest shift of a patch from its cell's centre, in pixels (7).
      color_handling: `drop`, `grayscale` or `none` (see the module docstring).
      standardize: Per-patch standardisation (True).
      embedding_dim: Per-patch embedding width (1000).
      hidden_units: Width of the fc layer of the head (4096).
      dropout: Dropout of the head (0.5).
      augmentation: Stack applied to the image before the grid is cut.
      **kwargs: Passed to `keras_ssl.Method`.
    """

    @classmethod
    def tiny_settings(cls):
        # Dropout off, so a few steps on a fixed batch show the loss falling.
        return dict(jitter=1, embedding_dim=16, hidden_units=32, dropout=0.0, **TINY_PATCH_GRID)

    def __init__(
        self,
        backbone,
        resize: int = 292,
        crop: int = 255,
        patch_size: int = 64,
        jitter: int = 7,
        color_handling: str = "drop",
        standardize: bool = True,
        embedding_dim: int = 1000,
        hidden_units: int = 4096,
        dropout: float = 0.5,
        augmentation="none",
        **kwargs,
    ):
        super().__init__(backbone, "relative_patch_location", resize, crop, patch_size, standardize,
                         augmentation=augmentation, **kwargs)
        if color_handling not in COLOR_HANDLING:
            raise ValueError(
                f"relative_patch_location: color_handling must be one of {COLOR_HANDLING}, "
                f"got {color_handling!r}."
            )
        if jitter < 0:
            raise ValueError(f"relative_patch_location: jitter must be >= 0, got {jitter}.")
        self.jitter = int(jitter)
        self.color_handling = color_handling
        self.patch_embedding = keras.layers.Dense(embedding_dim, name="patch_embedding")
        self.head = fc_head(backbone, len(NEIGHBOURS), hidden_units, dropout, name="location_head")

    def preprocess(self, example):
        patches = self.cut_patches(self.crop_image(example["image"]), jitter=self.jitter)
        if self.color_handling == "drop":
            patches = tf.stack([drop_colors(patches[i]) for i in range(GRID * GRID)])
        elif self.color_handling == "grayscale":
            patches = to_grayscale(patches)
        return {"patches": patches, "location": tf.range(len(NEIGHBOURS), dtype=tf.int32)}

    def pair_features(self, patches, training):
        """`[B, 9, h, w, 3]` -> `[B * 8, 2 * D]`: concat(centre, neighbour n) for the 8 n."""
        embeddings = embed_patches(self, self.patch_embedding, patches, training)
        embeddings = tf.reshape(embeddings, [-1, GRID * GRID, self.patch_embedding.units])
        centre = tf.repeat(embeddings[:, CENTRE:CENTRE + 1], len(NEIGHBOURS), axis=1)
        neighbours = tf.gather(embeddings, list(NEIGHBOURS), axis=1)
        pairs = tf.concat([centre, neighbours], axis=-1)
        return tf.reshape(pairs, [-1, 2 * self.patch_embedding.units])

    def compute_pretext_loss(self, batch, training):
        logits = self.head_logits(self.pair_features(batch["patches"], training), training)
        labels = tf.reshape(batch["location"], [-1])
        loss = self.classification_loss(labels, logits)
        return loss, {"location_accuracy": self.accuracy(labels, logits)}
