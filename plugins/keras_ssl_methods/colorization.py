"""Colorization (Zhang et al. 2016), as a pretext task for the backbone.

The backbone sees only the lightness: every image is converted to CIE Lab
(D65, `_lab.rgb_to_lab`) and its L channel, as a gray image L/100 in all
three channels, is the input. A dense head on a spatial end-point (`block3`
by default: 3x3 conv + ReLU, then a 1x1 conv) predicts, for every position, a
distribution over Q quantised ab bins:

- bins: the ab plane on a grid of step 10; by default the bins that sRGB
  colours reach under nearest-bin quantisation (`_lab.in_gamut_bins`, about
  260); or a user-supplied set (`bins`: a list of [a, b] or a .npy file);
- targets: soft encoding of the ground-truth ab (area-resized to the
  end-point's resolution) on its K nearest bins with a Gaussian kernel,
  sigma 5 (K = 5 by default; Goyal et al. use K as the difficulty knob);
- class rebalancing: every pixel's cross-entropy is weighted by
  w(nearest bin), w ~ ((1 - lambda) * p_smooth + lambda / Q)^-1 with
  lambda = 0.5 and E_p_smooth[w] = 1, where p is the empirical prior of the
  bins. p is estimated from the first `prior_images` training images when the
  dataset pipeline is built (`make_dataset`), unless given (`prior`); it is
  kept in the checkpoints (a non-trainable variable) and in the export
  metadata.

Decoding is the annealed mean (T = 0.38). The export carries the lightness
transform (clients feed RGB; the backbone sees its L) and an extra signature
`colorize`: `images` -> `{"colorized": RGB at the input size, "ab": ab at the
end-point's resolution}`, used by `keras-ssl-colorize`.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import tensorflow as tf

from keras_ssl import Method
from keras_ssl.toolkit import require_endpoint
from keras_ssl.testing.tiny import TINY_NUM_EXAMPLES
from keras_ssl_methods import _lab
from keras_ssl_methods._image_ops import area_downsample


def _load_array(value, name):
    if value is None:
        return None
    if isinstance(value, str):
        if value.endswith(".json"):
            with open(value) as f:
                return np.asarray(json.load(f), np.float32)
        return np.load(value).astype(np.float32)
    return np.asarray(value, np.float32)


class Colorization(Method):
    """Per-pixel classification of quantised ab colours from the lightness.

    Args:
      backbone: The backbone (its `endpoint` must be a spatial end-point).
      endpoint: End-point the dense head reads (`block3`).
      bin_step: Grid step of the ab plane for the computed bins (10).
      bins: Optional user-supplied bins `[Q, 2]` (list, or path to .npy/.json).
      num_neighbors: K of the soft encoding (5).
      sigma: Gaussian kernel width of the soft encoding and prior smoothing (5).
      rebalance: Weight pixels by the class-rebalancing weights (True).
      rebalance_lambda: Mixing weight of the uniform distribution (0.5).
      prior: Optional bin prior `[Q]` (list, or path to .npy/.json); default:
        estimated from the training data.
      prior_images: Training images the prior is estimated from (2000).
      temperature: Annealed-mean temperature for decoding (0.38).
      head_units: Channels of the head's 3x3 convolution (256).
      augmentation: Stack applied per image (`flip` by default).
      **kwargs: Passed to `keras_ssl.Method`.
    """

    @classmethod
    def tiny_settings(cls):
        # block4 rather than the default block3, so every backbone kernel feeds the loss
        # (the contract checks that the gradient reaches each of them).
        return dict(head_units=16, prior_images=TINY_NUM_EXAMPLES, endpoint="block4")

    def __init__(
        self,
        backbone,
        endpoint: str = "block3",
        bin_step: int = 10,
        bins=None,
        num_neighbors: int = 5,
        sigma: float = 5.0,
        rebalance: bool = True,
        rebalance_lambda: float = 0.5,
        prior=None,
        prior_images: int = 2000,
        temperature: float = 0.38,
        head_units: int = 256,
        augmentation="flip",
        **kwargs,
    ):
        super().__init__(backbone, augmentation=augmentation, **kwargs)
        self.endpoint = require_endpoint(backbone, endpoint, "colorization.endpoint", spatial=True)
        bins = _load_array(bins, "bins")
        self.bins = _lab.in_gamut_bins(bin_step) if bins is None else bins.reshape(-1, 2)
        self.num_bins = len(self.bins)
        if not 1 <= num_neighbors <= self.num_bins:
            raise ValueError(f"colorization: num_neighbors must be in [1, Q={self.num_bins}], got {num_neighbors}.")
        self.num_neighbors = int(num_neighbors)
        self.sigma = float(sigma)
        self.rebalance = bool(rebalance)
        self.rebalance_lambda = float(rebalance_lambda)
        self.temperature = float(temperature)
        self.prior_images = int(prior_images)
        self.prior = self.add_weight(
            shape=(self.num_bins,), initializer="ones", trainable=False, name="ab_prior")
        self.class_weights = self.add_weight(
            shape=(self.num_bins,), initializer="ones", trainable=False, name="ab_class_weights")
        self._given_prior = _load_array(prior, "prior")
        if self._given_prior is not None:
            if self._given_prior.shape != (self.num_bins,):
                raise ValueError(
                    f"colorization: prior has shape {self._given_prior.shape}, expected ({self.num_bins},).")
            self.set_prior(self._given_prior)
        self.head = keras.Sequential(
            [
                keras.layers.Conv2D(head_units, 3, padding="same", activation="relu", name="conv"),
                keras.layers.Conv2D(self.num_bins, 1, name="ab_logits"),
            ],
            name="colorization_head",
        )

    # ------------------------------------------------------------------ prior
    def set_prior(self, prior) -> None:
        """Sets the bin prior and the rebalancing weights derived from it."""
        prior = np.asarray(prior, np.float64)
        prior = prior / max(prior.sum(), 1e-12)
        self.prior.assign(prior.astype(np.float32))
        self.class_weights.assign(
            _lab.rebalancing_weights(prior, self.bins, self.sigma, self.rebalance_lambda))

    def estimate_prior(self, images: tf.data.Dataset, num_images: int | None = None) -> np.ndarray:
        """Empirical distribution of the nearest bins of all pixels of `num_images` images."""
        bins = tf.constant(self.bins)

        def histogram(batch):
            index = _lab.nearest_bin(_lab.rgb_to_lab(batch["image"])[..., 1:], bins)
            return tf.math.bincount(tf.reshape(index, [-1]), minlength=self.num_bins,
                                    maxlength=self.num_bins, dtype=tf.float64)

        counts = np.zeros(self.num_bins)
        for value in images.take(num_images or self.prior_images).batch(64).map(histogram):
            counts += value.numpy()
        return counts / max(counts.sum(), 1.0)

    def adapt(self, examples):
        """Estimates the colour prior from the training split in its stored order."""
        if self._given_prior is None:
            self.set_prior(self.estimate_prior(examples))
            self._prior_estimated = True

    def make_dataset(self, images, batch_size):
        # Without `adapt` (a hand-built pipeline), estimate from these images.
        if self._given_prior is None and not getattr(self, "_prior_estimated", False):
            self.set_prior(self.estimate_prior(images))
        return super().make_dataset(images, batch_size)

    # ------------------------------------------------------------------ task
    def preprocess(self, example):
        return {"image": self.augment(example["image"])}

    def export_input_transform(self, images):
        """RGB -> the L channel as a gray image (built into the export)."""
        return _lab.luminance_image(images)

    def logits(self, images, training):
        features = self.backbone(self.export_input_transform(images), training=training)
        return tf.cast(self.head(features[self.endpoint], training=training), tf.float32)

    def compute_pretext_loss(self, batch, training):
        images = batch["image"]
        logits = self.logits(images, training)
        ab = area_downsample(_lab.rgb_to_lab(images)[..., 1:], logits)
        targets = _lab.soft_encode(ab, self.bins, self.num_neighbors, self.sigma)
        nearest = _lab.nearest_bin(ab, self.bins)
        cross_entropy = tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)
        weights = tf.gather(self.class_weights, nearest) if self.rebalance else tf.ones_like(cross_entropy)
        loss = tf.reduce_mean(weights * cross_entropy)
        predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
        accuracy = tf.reduce_mean(tf.cast(tf.equal(predicted, nearest), tf.float32))
        return loss, {"bin_accuracy": accuracy}

    # -------------------------------------------------------------- decoding
    def colorize(self, images):
        """RGB (or gray) images -> `{"colorized": RGB, "ab": ab at the end-point's resolution}`."""
        images = tf.cast(images, tf.float32)
        probabilities = tf.nn.softmax(self.logits(images, training=False), axis=-1)
        ab = _lab.annealed_mean(probabilities, self.bins, self.temperature)
        lightness = _lab.rgb_to_lab(images)[..., :1]
        full_ab = tf.image.resize(ab, tf.shape(images)[1:3], method="bilinear")
        rgb = _lab.lab_to_rgb(tf.concat([lightness, full_ab], axis=-1))
        return {"colorized": rgb, "ab": ab}

    def export_signatures(self):
        if not self.head.built:  # e.g. rebuilt from a checkpoint for keras-ssl-export
            self.logits(tf.zeros([1, 32, 32, 3]), training=False)
        return {"colorize": self.colorize}, {"colorization_head": self.head}

    def export_metadata(self):
        return {
            "num_ab_bins": self.num_bins,
            "colorization": {
                "endpoint": self.endpoint,
                "temperature": self.temperature,
                "num_neighbors": self.num_neighbors,
                "sigma": self.sigma,
                "ab_bins": self.bins.tolist(),
                "ab_prior": [round(float(v), 8) for v in self.prior.numpy()],
                "input_transform": "CIE Lab L channel, as L / 100 in all three channels",
            },
        }

