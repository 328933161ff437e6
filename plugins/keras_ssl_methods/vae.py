"""Variational autoencoder (Kingma & Welling, 2014), with the backbone as encoder.

The backbone's pre-logits give the mean and log-variance of a diagonal
Gaussian posterior q(z | x); a latent z = mu + sigma * eps is decoded by a
deconvolutional network into per-pixel Bernoulli logits. The loss is the
negative ELBO,

    -log p(x | z) + KL(q(z | x) || N(0, I)),

summed over pixels and latent dimensions per image and divided by the
number of pixel values (H * W * 3), so that its scale does not grow with the
image; the optimum is the ELBO's. [0, 1] intensities are the Bernoulli
targets (the usual choice for natural images, whose cross-entropy has a
non-zero floor). eps is drawn for the whole global batch from a seed keyed
by the step and sliced per replica, so 2 replicas train like one device.
Newell & Deng (2020) evaluate it among their pretext tasks; its
representation is the encoder's (the backbone's end-points).

The export has a `reconstruct` signature: images (resized to `image_size`)
-> the decoded posterior mean, `keras-ssl-reconstruct` writes a PNG of image
and reconstruction pairs from it.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_ssl import Method, cross_replica
from keras_ssl.random import step_seed
from keras_ssl.testing.tiny import TINY_IMAGE_SIZE


class VAE(Method):
    """A variational autoencoder whose encoder is the backbone.

    Args:
      backbone: The encoder (see `keras_ssl.backbones`).
      image_size: Side of the images it reconstructs; inputs are resized to
        it. A multiple of `2 ** num_upsamplings`.
      latent_dim: Width of z.
      decoder_width: Channels of the decoder's first feature map (halved at
        every upsampling, at least 8).
      num_upsamplings: Stride-2 transposed convolutions of the decoder.
      kl_weight: Weight of the KL term (1: the ELBO; other values give a
        beta-VAE).
      augmentation: Augmentation stack applied to each image.
      noise_seed: Seed of eps (with the optimizer step).
      **kwargs: Passed to `keras_ssl.Method`.

    Example:

    >>> from keras_ssl.backbones import build_backbone
    >>> net = build_backbone("resnet_v2", depth=10, widening_factor=1,
    ...                      small_image_stem=True)
    >>> method = VAE(net, image_size=16, latent_dim=8, decoder_width=16)
    >>> method.reconstruct(tf.zeros([2, 16, 16, 3]))["reconstruction"].shape
    TensorShape([2, 16, 16, 3])
    """

    @classmethod
    def tiny_settings(cls):
        return dict(image_size=TINY_IMAGE_SIZE, latent_dim=8, decoder_width=16)

    def __init__(self, backbone, image_size: int = 32, latent_dim: int = 128,
                 decoder_width: int = 256, num_upsamplings: int = 3, kl_weight: float = 1.0,
                 augmentation="none", noise_seed: int = 0, **kwargs):
        super().__init__(backbone, augmentation=augmentation, **kwargs)
        if num_upsamplings < 1 or image_size % (2 ** num_upsamplings):
            raise ValueError(
                f"vae: image_size ({image_size}) must be a multiple of 2 ** num_upsamplings "
                f"= {2 ** max(num_upsamplings, 0)} (num_upsamplings >= 1); bind vae.image_size "
                f"to keras_ssl.train.image_size or change vae.num_upsamplings."
            )
        if latent_dim < 1 or decoder_width < 1:
            raise ValueError(f"vae: latent_dim and decoder_width must be positive, got "
                             f"{latent_dim} and {decoder_width}.")
        if kl_weight < 0:
            raise ValueError(f"vae: kl_weight must be non-negative, got {kl_weight}.")
        self.image_size = int(image_size)
        self.latent_dim = int(latent_dim)
        self.kl_weight = float(kl_weight)
        self.noise_seed = int(noise_seed)
        self.posterior = keras.layers.Dense(2 * latent_dim, name="vae_posterior")
        base = self.image_size // 2 ** num_upsamplings
        layers = [
            keras.layers.Dense(base * base * decoder_width, activation="relu"),
            keras.layers.Reshape((base, base, decoder_width)),
        ]
        for i in range(num_upsamplings - 1):
            layers.append(keras.layers.Conv2DTranspose(
                max(decoder_width // 2 ** (i + 1), 8), 4, strides=2, padding="same",
                activation="relu"))
        layers.append(keras.layers.Conv2DTranspose(3, 4, strides=2, padding="same"))
        self.decoder = keras.Sequential(layers, name="vae_decoder")

    def preprocess(self, example):
        image = tf.image.resize(self.augment(example["image"]), [self.image_size] * 2)
        return {"image": tf.clip_by_value(image, 0.0, 1.0)}

    def encode(self, images, training):
        """`(mean, log_variance)` of q(z | images), each `[B, latent_dim]` (float32)."""
        pre_logits = self.backbone(images, training=training)["pre_logits"]
        mean, log_variance = tf.split(tf.cast(self.posterior(pre_logits), tf.float32), 2, -1)
        return mean, log_variance

    def decode(self, latents):
        """`[B, latent_dim]` -> `[B, image_size, image_size, 3]` Bernoulli logits (float32)."""
        return tf.cast(self.decoder(latents), tf.float32)

    def compute_pretext_loss(self, batch, training):
        images = tf.cast(batch["image"], tf.float32)
        mean, log_variance = self.encode(images, training)
        latents = mean
        if training:
            latents = mean + tf.exp(0.5 * log_variance) * self._noise(tf.shape(mean)[0])
        logits = self.decode(latents)
        pixels = tf.cast(tf.reduce_prod(tf.shape(images)[1:]), tf.float32)
        reconstruction = tf.reduce_sum(
            tf.nn.sigmoid_cross_entropy_with_logits(labels=images, logits=logits), [1, 2, 3])
        kl = 0.5 * tf.reduce_sum(
            tf.square(mean) + tf.exp(log_variance) - 1.0 - log_variance, axis=-1)
        loss = tf.reduce_mean(reconstruction + self.kl_weight * kl) / pixels
        # Posterior collapse shows as latent dimensions whose mean ignores the image.
        spread = cross_replica.global_mean(
            tf.square(mean - cross_replica.global_mean(mean)))
        metrics = {
            "reconstruction_loss": tf.reduce_mean(reconstruction) / pixels,
            "kl": tf.reduce_mean(kl),
            "mean_squared_error": tf.reduce_mean(tf.square(tf.sigmoid(logits) - images)),
            "active_latents": tf.reduce_mean(tf.cast(spread > 0.01, tf.float32)),
        }
        return loss, metrics

    def _noise(self, rows):
        """eps `[rows, latent_dim]`: this replica's rows of the global batch's draw."""
        replicas, _ = cross_replica.replica_position()
        noise = tf.random.stateless_normal([rows * replicas, self.latent_dim],
                                           step_seed(self, self.noise_seed))
        return cross_replica.replica_rows(noise)

    def reconstruct(self, images):
        """[0, 1] RGB images -> `{"reconstruction": the decoded posterior mean}` at `image_size`."""
        images = tf.image.resize(tf.cast(images, tf.float32), [self.image_size] * 2)
        mean, _ = self.encode(images, training=False)
        return {"reconstruction": tf.sigmoid(self.decode(mean))}

    def export_signatures(self):
        if not self.decoder.built:  # e.g. rebuilt from a checkpoint for keras-ssl-export
            self.reconstruct(tf.zeros([1, self.image_size, self.image_size, 3]))
        return {"reconstruct": self.reconstruct}, {
            "vae_posterior": self.posterior, "vae_decoder": self.decoder}

    def export_metadata(self):
        return {"vae": {"image_size": self.image_size, "latent_dim": self.latent_dim,
                        "likelihood": "Bernoulli on [0, 1] intensities"}}
