"""Split-Brain autoencoders, cross-channel prediction (Zhang, Isola & Efros 2017).

The network is split in two halves by input channels
(`keras_ssl_methods._two_halves`: two copies of the bound backbone): one sees
the lightness L of CIE Lab and predicts the colour ab, the other sees ab and
predicts L. Both predictions are per-pixel classifications at the resolution
of a spatial end-point (`block3` by default), each by a dense head (3x3 conv
+ ReLU, 1x1 conv) on that half's end-point:

- L -> ab: over the quantised ab bins of Colorization (`_lab.in_gamut_bins`,
  a grid of step 10 restricted to the colours sRGB reaches; about 260);
- ab -> L: over `lightness_bins` (100) equal bins of L in [0, 100].

Targets are the area-downsampled Lab values' nearest bins (hard labels, as
the paper's classification loss), and the loss is the sum of the two mean
cross-entropies. Class rebalancing (Colorization's) is not applied: the paper
trains the split-brain halves without it.

The representation is both halves: the export's end-points are the
concatenations (`pre_logits` is `[B, 2 D]`) and each half's own (`l_block3`,
`ab_pre_logits`, ...). Grayscale-only data are refused before training.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_ssl.toolkit import require_endpoint
from keras_ssl_methods import _lab
from keras_ssl_methods._image_ops import area_downsample
from keras_ssl_methods._two_halves import LabHalvesMethod


def lightness_bin(lightness, num_bins: int):
    """The bin of L in [0, 100] among `num_bins` equal bins (int32)."""
    index = tf.floor(tf.cast(lightness, tf.float32) * (num_bins / 100.0))
    return tf.cast(tf.clip_by_value(index, 0, num_bins - 1), tf.int32)


def _dense_head(units, num_bins, name):
    return keras.Sequential(
        [keras.layers.Conv2D(units, 3, padding="same", activation="relu", name="conv"),
         keras.layers.Conv2D(num_bins, 1, name="logits")],
        name=name)


class SplitBrain(LabHalvesMethod):
    """Two halves, L -> ab and ab -> L, each a per-pixel classification.

    Args:
      backbone: The bound backbone; each half is a copy of it (bind half the
        widening factor for the paper's half-width halves).
      endpoint: The spatial end-point each half's head reads (`block3`).
      bin_step: Grid step of the ab bins (10).
      lightness_bins: Number of L bins (100).
      head_units: Channels of each head's 3x3 convolution (256).
      augmentation: Stack applied per image (`flip`).
      **kwargs: Passed to `keras_ssl.Method`.

    Example:

    >>> from keras_ssl.backbones import build_backbone
    >>> net = build_backbone("resnet_v2", depth=10, widening_factor=1,
    ...                      small_image_stem=True)
    >>> method = SplitBrain(net, head_units=16)
    >>> out = method(tf.zeros((2, 32, 32, 3)))
    >>> out["block3"].shape, out["ab_block3"].shape
    (TensorShape([2, 8, 8, 128]), TensorShape([2, 8, 8, 64]))
    """

    @classmethod
    def tiny_settings(cls):
        # block4, so every kernel of both halves feeds a head (as colorization).
        return dict(head_units=16, lightness_bins=10, endpoint="block4")

    def __init__(
        self,
        backbone,
        endpoint: str = "block3",
        bin_step: int = 10,
        lightness_bins: int = 100,
        head_units: int = 256,
        augmentation="flip",
        **kwargs,
    ):
        # Each half is a copy of the bound backbone: it has the same end-points.
        require_endpoint(backbone, endpoint, "split_brain.endpoint", spatial=True)
        super().__init__(backbone, augmentation=augmentation, **kwargs)
        if lightness_bins < 2:
            raise ValueError(f"split_brain: lightness_bins must be >= 2, got {lightness_bins}.")
        self.endpoint = endpoint
        self.ab_bins = _lab.in_gamut_bins(bin_step)
        self.lightness_bins = int(lightness_bins)
        self.l_to_ab_head = _dense_head(head_units, len(self.ab_bins), "l_to_ab_head")
        self.ab_to_l_head = _dense_head(head_units, self.lightness_bins, "ab_to_l_head")

    def preprocess(self, example):
        return {"image": self.augment(example["image"])}

    def logits(self, images, training, lab=None):
        """`(ab logits from the L half, L logits from the ab half)`, float32 `[B, h, w, bins]`.

        `lab`: `_lab.rgb_to_lab(images)`, when the caller has it.
        """
        outputs = self.halves(images, training, lab)
        return (tf.cast(self.l_to_ab_head(outputs[f"l_{self.endpoint}"], training=training),
                        tf.float32),
                tf.cast(self.ab_to_l_head(outputs[f"ab_{self.endpoint}"], training=training),
                        tf.float32))

    def targets(self, lab, like):
        """`(ab bin, L bin)` of each position of `like`'s resolution, from area-downsampled Lab."""
        lab = area_downsample(lab, like)
        return (_lab.nearest_bin(lab[..., 1:], tf.constant(self.ab_bins)),
                lightness_bin(lab[..., 0], self.lightness_bins))

    def compute_pretext_loss(self, batch, training):
        lab = _lab.rgb_to_lab(batch["image"])  # the halves' input and the targets
        ab_logits, l_logits = self.logits(batch["image"], training, lab)
        ab_target, l_target = self.targets(lab, ab_logits)
        losses, metrics = [], {}
        for name, target, logits in (("ab", ab_target, ab_logits), ("l", l_target, l_logits)):
            losses.append(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=target, logits=logits)))
            predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
            metrics[f"{name}_loss"] = losses[-1]
            metrics[f"{name}_bin_accuracy"] = tf.reduce_mean(
                tf.cast(tf.equal(predicted, target), tf.float32))
        return tf.add_n(losses), metrics

    def export_metadata(self):
        return {**super().export_metadata(), "split_brain": {
            "endpoint": self.endpoint, "num_ab_bins": len(self.ab_bins),
            "lightness_bins": self.lightness_bins}}
