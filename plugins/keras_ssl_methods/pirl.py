"""PIRL, pretext-invariant representations (Misra & van der Maaten, 2020).

Jigsaw made invariant rather than predicted: an image's representation
should not change when the image is cut into shuffled tiles. Two encodings
share the backbone:

- f(v_I): the augmented image -> pre-logits -> linear 128-d, l2-normalised;
- g(v_I^t): nine tiles of a 3x3 grid (the Jigsaw geometry of
  `keras_ssl.toolkit.patches`), in a random order, each -> pre-logits ->
  linear 128-d, the nine concatenated -> linear 128-d, l2-normalised.

A memory bank holds m_I, a moving average (momentum 0.5) of f(v_I) for every
training image, as NPID's does (`keras_ssl.toolkit.memory_bank`). With
h(u, v) = exp(u . v / tau) / (exp(u . v / tau) + N / n), N noise images
drawn from the bank and n its size,

    L_NCE(m_I, v) = -log h(m_I, v) - sum_{I' in noise} log(1 - h(m_I', v)),
    loss = lambda L_NCE(m_I, g(v_I^t)) + (1 - lambda) L_NCE(m_I, f(v_I)),

lambda = 0.5, tau = 0.07. The paper writes h with the unnormalised
exp(u . v / tau); here the exponentials are divided by NPID's Z (estimated
from f's noise scores, once or per batch), as NPID's NCE does: with Z = 1
the tiny contract run's loss rose from 18 to 58 in ten steps, the noise rows
of a young bank scoring as high as the positives. Only f's network is
exported: the representation is the backbone on whole images.
"""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

from keras_ssl import random
from keras_ssl.losses import nce_loss
from keras_ssl.metrics import normalized_embedding_std
from keras_ssl.toolkit import GRID, bank_scores, cut_grid, grid_cell, random_crop_resized
from keras_ssl.testing.tiny import TINY_NUM_EXAMPLES, TINY_PATCH_GRID
from keras_ssl_methods.npid import NPID


class PIRL(NPID):
    """Pretext-invariant representation learning with Jigsaw tiles and a memory bank.

    Args:
      backbone: The backbone, shared by the image and its tiles.
      num_examples: n, the number of training images (rows of the bank).
        Required: bind `pirl.num_examples` to the training split's size.
      num_negatives: N noise images per example (32,000 in the paper).
      temperature: tau (0.07).
      bank_momentum: Momentum of the bank's moving average (0.5).
      fix_normalization: Z estimated once, on the first step, and kept; or
        estimated on every batch (False). As NPID's (`keras_ssl_methods.npid`).
      jigsaw_weight: lambda, the weight of the tiles' term (0.5).
      projection_dim: Width of f, g and the bank (128).
      resize: Side the image is resized to before the tiles' crop.
      crop: Side of the random crop cut into the 3x3 grid.
      patch_size: Side of the tiles (at most `crop // 3`).
      num_classes: Train an online linear probe (see `ContrastiveMethod`).
      augmentation: The stack drawing the image view (the tiles are cut
        from the same augmented image).
      noise_seed: Seed of the noise draws (with the optimizer step).
      **kwargs: Passed to `keras_ssl.Method`.

    Example:

    >>> from keras_ssl.backbones import build_backbone
    >>> net = build_backbone("resnet_v2", depth=10, widening_factor=1,
    ...                      small_image_stem=True)
    >>> method = PIRL(net, num_examples=100, num_negatives=16, resize=48, crop=45,
    ...               patch_size=12)
    >>> inputs = method.preprocess({"image": tf.zeros((32, 32, 3)),
    ...                             "label": tf.constant(0, tf.int64),
    ...                             "index": tf.constant(7, tf.int64)})
    >>> inputs["image"].shape, inputs["tiles"].shape
    (TensorShape([32, 32, 3]), TensorShape([9, 12, 12, 3]))
    """

    setting_prefix = "pirl"

    @classmethod
    def tiny_settings(cls):
        return dict(num_examples=TINY_NUM_EXAMPLES, num_negatives=8, fix_normalization=False,
                    projection_dim=16, **TINY_PATCH_GRID)

    def __init__(
        self,
        backbone,
        num_examples: int | None = None,
        num_negatives: int = 32000,
        temperature: float = 0.07,
        bank_momentum: float = 0.5,
        fix_normalization: bool = True,
        jigsaw_weight: float = 0.5,
        projection_dim: int = 128,
        resize: int = 292,
        crop: int = 255,
        patch_size: int = 64,
        num_classes: int | None = None,
        augmentation="crop_flip",
        noise_seed: int = 0,
        **kwargs,
    ):
        super().__init__(
            backbone, num_examples=num_examples, num_negatives=num_negatives,
            temperature=temperature, bank_momentum=bank_momentum,
            fix_normalization=fix_normalization, projection_dim=projection_dim,
            num_classes=num_classes, augmentation=augmentation, noise_seed=noise_seed, **kwargs,
        )
        if not 0.0 <= jigsaw_weight <= 1.0:
            raise ValueError(f"pirl: jigsaw_weight must be in [0, 1], got {jigsaw_weight}.")
        self.cell = grid_cell("pirl", resize, crop, patch_size)
        self.jigsaw_weight = float(jigsaw_weight)
        self.resize, self.crop, self.patch_size = int(resize), int(crop), int(patch_size)
        self.tile_projection = keras.layers.Dense(projection_dim, name="pirl_tile_projection")
        self.jigsaw_projection = keras.layers.Dense(projection_dim, name="pirl_jigsaw_projection")

    def preprocess(self, example):
        image = self.augment(example["image"])
        tiles = cut_grid(random_crop_resized(image, self.resize, self.crop), GRID, self.cell,
                         self.patch_size)
        return {
            "image": image,
            "tiles": tf.gather(tiles, random.permutation(GRID * GRID)),
            "index": self.bank_index(example),
            "label": tf.cast(example["label"], tf.int32),
        }

    def image_features(self, images, training):
        """f: `[B, H, W, 3]` -> (`[B, D]` unit features, pre-logits)."""
        pre_logits = self.backbone(images, training=training)["pre_logits"]
        features = tf.cast(self.head(pre_logits), tf.float32)
        return tf.math.l2_normalize(features, axis=-1), pre_logits

    def jigsaw_features(self, tiles, training):
        """g: `[B, 9, h, w, 3]` -> `[B, D]` unit features of the tiles, in their order."""
        shape = tf.shape(tiles)
        flat = tf.reshape(tiles, tf.concat([[-1], shape[2:]], 0))
        with _moving_statistics_kept(self.backbone):
            pre_logits = self.backbone(flat, training=training)["pre_logits"]
        projected = self.tile_projection(pre_logits)
        joined = tf.reshape(projected, [-1, tiles.shape[1] * self.tile_projection.units])
        return tf.math.l2_normalize(tf.cast(self.jigsaw_projection(joined), tf.float32), axis=-1)

    def compute_pretext_loss(self, batch, training):
        features, pre_logits = self.image_features(batch["image"], training)
        jigsaw = self.jigsaw_features(batch["tiles"], training)
        index = tf.cast(batch["index"], tf.int32)
        # f and g meet the same bank rows and noise, and one Z (estimated from f's scores).
        positives, noise = self.bank_rows(index)
        image_scores = bank_scores(features, positives, noise)
        jigsaw_scores = bank_scores(jigsaw, positives, noise)
        z = self.normalization(image_scores[1])
        image_loss, _ = nce_loss(*image_scores, self.num_examples, self.temperature, z)
        jigsaw_loss, _ = nce_loss(*jigsaw_scores, self.num_examples, self.temperature, z)
        loss = self.jigsaw_weight * jigsaw_loss + (1.0 - self.jigsaw_weight) * image_loss
        self.save_for_update(index=index, features=features, z=z)  # the bank follows f only
        probe, probe_metrics = self.probe_loss(pre_logits, batch["label"])
        metrics = {
            "jigsaw_nce_loss": jigsaw_loss,
            "image_nce_loss": image_loss,
            "jigsaw_bank_similarity": tf.reduce_mean(jigsaw_scores[0]),
            "image_bank_similarity": tf.reduce_mean(image_scores[0]),
            "embedding_std": normalized_embedding_std(features),
            **probe_metrics,
        }
        return loss + probe, metrics


@contextlib.contextmanager
def _moving_statistics_kept(network):
    """Batch norm inside the block leaves its moving mean and variance as they were.

    The tiles still normalise with their own batch statistics in training mode,
    but only the whole images' statistics enter the moving averages that the
    export (the backbone on whole images) normalises with. The block's updates
    are undone by assigning the values read before it (the reads, updates and
    restores of a variable run in program order inside a `tf.function`).
    Setting each layer's momentum to 1 for the block would not do: under a
    MirroredStrategy the replicas trace in turns on the same layers, and one
    replica's restore left every momentum at 1 for the rest of training.
    """
    variables = [variable for layer in network._flatten_layers()
                 if isinstance(layer, keras.layers.BatchNormalization)
                 for variable in (layer.moving_mean, layer.moving_variance)]
    saved = [tf.identity(variable.value) for variable in variables]
    yield
    for variable, value in zip(variables, saved):
        variable.assign(value)
