"""Jigsaw puzzles (Noroozi & Favaro 2016), as in Kolesnikov et al. 2019.

Input builder (per image, in tf.data): resize to 292, random 255 crop, 3x3
cells of 85 px, a random 64x64 crop inside every cell (jitter), grayscale with
p = 0.66 (the whole image, so all tiles agree). A permutation index k is drawn
uniformly from the permutation set P; the tiles are shown in the order
`perms[k]`: input slot i holds the tile of grid cell `perms[k][i]` (cells
numbered row-major).

Model: the shared backbone embeds every tile (pre-logits -> dense 1000-d);
the nine embeddings are concatenated in slot order -> fc 4096 + BN + ReLU +
dropout 0.5 -> |P|-way softmax that predicts k. Per-patch standardisation is
applied to every tile in front of the backbone and is built into the export
(`export_input_transform`), so a client feeds plain [0, 1] patches.

P is the greedy maximal-minimum-Hamming-distance set (`_permutations`),
deterministic from `permutation_seed`, any size from 10 to 10,000, cached.
"""

from __future__ import annotations

import keras
import tensorflow as tf

import keras_ssl.random
from keras_ssl.toolkit import PatchGridMethod, embed_patches, fc_head
from keras_ssl.testing.tiny import TINY_PATCH_GRID
from keras_ssl_methods._image_ops import maybe_grayscale
from keras_ssl_methods._permutations import permutation_set



class Jigsaw(PatchGridMethod):
    """Predicts which permutation of the 3x3 tiles the network was shown.

    Args:
      backbone: The backbone, applied to every tile (see `keras_ssl.backbones`;
        for 64-px tiles Kolesnikov et al. use root stride 1 and block strides
        (1, 2, 2, 1)).
      num_permutations: |P|, 10 to 10,000 (the difficulty knob; 100 default,
        Goyal et al. go to 10,000).
      permutation_seed: Seed of the greedy permutation set.
      resize: Side the image is resized to (292).
      crop: Side of the random crop cut into the grid (255).
      patch_size: Side of the tile cropped in each cell of crop // 3 px (64).
      grayscale_probability: Chance an image is turned gray (0.66).
      standardize: Per-patch standardisation (True).
      embedding_dim: Per-tile embedding width (1000).
      hidden_units: Width of the fc layer of the head (4096).
      dropout: Dropout of the head (0.5).
      augmentation: Stack applied to the image before the grid is cut.
      **kwargs: Passed to `keras_ssl.Method`.

    Example:

    >>> from keras_ssl.backbones import build_backbone
    >>> net = build_backbone("resnet_v2", depth=10, widening_factor=1,
    ...                      small_image_stem=True)
    >>> method = Jigsaw(net, num_permutations=10, resize=48, crop=45, patch_size=12)
    >>> inputs = method.preprocess({"image": tf.zeros((16, 16, 3)),
    ...                             "label": tf.constant(0, tf.int64),
    ...                             "index": tf.constant(0, tf.int64)})
    >>> inputs["patches"].shape
    TensorShape([9, 12, 12, 3])
    """

    @classmethod
    def tiny_settings(cls):
        # Dropout off, so a few steps on a fixed batch show the loss falling.
        return dict(num_permutations=10, embedding_dim=16, hidden_units=32, dropout=0.0,
                    **TINY_PATCH_GRID)

    def __init__(
        self,
        backbone,
        num_permutations: int = 100,
        permutation_seed: int = 0,
        resize: int = 292,
        crop: int = 255,
        patch_size: int = 64,
        grayscale_probability: float = 0.66,
        standardize: bool = True,
        embedding_dim: int = 1000,
        hidden_units: int = 4096,
        dropout: float = 0.5,
        augmentation="none",
        **kwargs,
    ):
        super().__init__(backbone, "jigsaw", resize, crop, patch_size, standardize,
                         augmentation=augmentation, **kwargs)
        if not 10 <= num_permutations <= 10_000:
            raise ValueError(f"jigsaw: num_permutations must be in [10, 10000], got {num_permutations}.")
        self.num_permutations = int(num_permutations)
        self.permutations = permutation_set(self.num_permutations, permutation_seed)
        self.grayscale_probability = float(grayscale_probability)
        self.patch_embedding = keras.layers.Dense(embedding_dim, name="patch_embedding")
        self.head = fc_head(backbone, self.num_permutations, hidden_units, dropout, name="jigsaw_head")

    # ------------------------------------------------------------------ inputs
    def preprocess(self, example):
        image = maybe_grayscale(self.crop_image(example["image"]), self.grayscale_probability)
        tiles = self.cut_patches(image, jitter=None)
        label = keras_ssl.random.uniform([], 0, self.num_permutations, dtype=tf.int32)
        order = tf.gather(tf.constant(self.permutations), label)
        return {"patches": tf.gather(tiles, order), "permutation": label}

    def export_metadata(self):
        return {**super().export_metadata(), "num_permutations": self.num_permutations}

    # -------------------------------------------------------------------- loss
    def slot_features(self, patches, training):
        """`[B, 9, h, w, 3]` -> `[B, 9 * D]`: tile embeddings concatenated in slot order."""
        return embed_patches(self, self.patch_embedding, patches, training)

    def compute_pretext_loss(self, batch, training):
        logits = self.head_logits(self.slot_features(batch["patches"], training), training)
        loss = self.classification_loss(batch["permutation"], logits)
        return loss, {"permutation_accuracy": self.accuracy(batch["permutation"], logits)}
