"""Exemplar (Dosovitskiy et al. 2014), in the triplet form of Kolesnikov et al. 2019.

Every image is a class of its own: `num_copies` independently augmented copies
of it (8 by default) go into the batch, a dense embedding head (1000-d) maps
each copy's pre-logits to an embedding that is l2-normalised on its own (per
embedding, not across the batch), and a triplet loss with margin 0.5 pulls the
copies of an image together and pushes other images away. The triplet labels
are the image's index within the global batch: triplets are mined over the
copies of every replica, so the loss does not depend on the replica count. The grayscale decision (p = 0.66) is
drawn once per image and shared by all its copies.
"""

from __future__ import annotations

import functools

import keras
import tensorflow as tf

from keras_ssl import Method
from keras_ssl import cross_replica
from keras_ssl.losses import TRIPLET_MINING, triplet_loss
from keras_ssl_methods._image_ops import exemplar_augment, maybe_grayscale


class Exemplar(Method):
    """Triplet loss over augmented copies of each image.

    Args:
      backbone: The backbone (see `keras_ssl.backbones`).
      num_copies: Augmented copies per image (8 in Kolesnikov et al.).
      embedding_dim: Width of the embedding head.
      margin: Triplet margin.
      triplet: `batch_hard` or `semi_hard` mining.
      grayscale_probability: Chance that all copies of an image are gray.
      augmentation: `exemplar` (crop-resize, flip, colour jitter; see
        `_image_ops.exemplar_augment`) or any registered stack; drawn
        independently for every copy.
      min_crop_area: Smallest crop area of the `exemplar` augmentation.
      **kwargs: Passed to `keras_ssl.Method`.

    Example:

    >>> from keras_ssl.backbones import build_backbone
    >>> net = build_backbone("resnet_v2", depth=10, widening_factor=1,
    ...                      small_image_stem=True)
    >>> method = Exemplar(net, num_copies=4)
    >>> inputs = method.preprocess({"image": tf.zeros((16, 16, 3)),
    ...                             "label": tf.constant(0, tf.int64),
    ...                             "index": tf.constant(0, tf.int64)})
    >>> inputs["images"].shape
    TensorShape([4, 16, 16, 3])
    """

    @classmethod
    def tiny_settings(cls):
        return dict(num_copies=4, embedding_dim=32)

    def __init__(
        self,
        backbone,
        num_copies: int = 8,
        embedding_dim: int = 1000,
        margin: float = 0.5,
        triplet: str = "batch_hard",
        grayscale_probability: float = 0.66,
        augmentation="exemplar",
        min_crop_area: float = 0.3,
        **kwargs,
    ):
        if augmentation == "exemplar":
            augmentation = functools.partial(exemplar_augment, min_area=min_crop_area)
            augmentation.__name__ = "exemplar"
        super().__init__(backbone, augmentation=augmentation, **kwargs)
        if num_copies < 2:
            raise ValueError(f"exemplar: num_copies must be >= 2 (positives), got {num_copies}.")
        if triplet not in TRIPLET_MINING:
            raise ValueError(f"exemplar: triplet must be one of {TRIPLET_MINING}, got {triplet!r}.")
        self.num_copies = int(num_copies)
        self.margin = float(margin)
        self.triplet = triplet
        self.grayscale_probability = float(grayscale_probability)
        self.embedding = keras.layers.Dense(embedding_dim, name="exemplar_embedding")

    def preprocess(self, example):
        image = example["image"]
        copies = tf.stack([self.augment(image) for _ in range(self.num_copies)])
        copies = maybe_grayscale(copies, self.grayscale_probability)
        return {"images": copies}

    def embed(self, images, training):
        """l2-normalised embeddings of a flat batch of images (each on its own)."""
        features = self.backbone(images, training=training)["pre_logits"]
        return tf.math.l2_normalize(tf.cast(self.embedding(features), tf.float32), axis=-1)

    def compute_pretext_loss(self, batch, training):
        images = batch["images"]
        batch_size = tf.shape(images)[0]
        flat = tf.reshape(images, tf.concat([[-1], tf.shape(images)[2:]], 0))
        # Copies are laid out image-major: image i owns rows i*N .. i*N+N-1.
        # Triplets are mined over the global batch (every replica computes the
        # same loss; all_gather's gradient sums the replicas' contributions),
        # so any number of replicas trains like one device.
        replicas, _ = cross_replica.replica_position()
        labels = tf.repeat(tf.range(batch_size * replicas), self.num_copies)
        embeddings = cross_replica.gather(self.embed(flat, training))
        # The embeddings are already l2-normalised.
        loss = triplet_loss(embeddings, labels, self.margin, self.triplet, normalize=False)
        return loss, {"nearest_neighbour_accuracy": _nn_accuracy(labels, embeddings)}


def _nn_accuracy(labels, embeddings):
    """Fraction of embeddings whose nearest other embedding is a copy of the same image."""
    similarity = tf.matmul(embeddings, embeddings, transpose_b=True)
    similarity -= 3.0 * tf.eye(tf.shape(embeddings)[0])
    nearest = tf.argmax(similarity, axis=1, output_type=tf.int32)
    return tf.reduce_mean(tf.cast(tf.equal(tf.gather(labels, nearest), labels), tf.float32))
