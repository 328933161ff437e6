"""DeepCluster: k-means pseudo-labels of the network's own features (Caron et al. 2018).

The network learns to classify images into clusters of its own features,
and the clusters are recomputed as the features improve. Before every
epoch:

1. the backbone's pre-logits of every training image (inference mode, no
   augmentation) are computed: `X`, `[N, D]`;
2. PCA whitening keeps the `p` leading principal axes (p = 256 in the
   paper) and scales each to unit variance: `Y = (X - mean) V_p diag(lambda_p)^(-1/2)`;
3. each row of `Y` is l2-normalised;
4. k-means (Lloyd's iterations from k distinct rows drawn with a seed of
   the run seed and the epoch) gives each image a cluster `y_i`; a cluster
   that empties is re-seeded by splitting the largest one in two;
5. the linear classifier on the pre-logits is re-initialised, since its
   old outputs mean nothing for the new clusters.

During the epoch the loss is the cross-entropy of the classifier on the
pseudo-labels of the batch's images (looked up by their `index` in a
checkpointed `[N]` variable). The paper samples images uniformly over the
clusters so that large clusters do not dominate; here the input order is
the library's (fixed by the seed, the same for every method), so each
example's loss is weighted instead by `N / (k' n_c)` (n_c the size of its
cluster, k' the number of non-empty clusters): its expectation over an
epoch equals the mean over clusters of each cluster's mean loss, what
uniform sampling over clusters minimises.

Other differences from the paper: no fixed Sobel filter in front of the
network (it takes RGB, like every export here); the optimizer's momentum of
the re-initialised classifier is kept, not reset (the paper builds a new
optimizer for it each epoch; with momentum 0.9 the old velocity fades within
tens of steps); an empty cluster is split from the largest cluster rather
than from one drawn in proportion to size (no extra draw, same on every
replica).

The clustering is `Method.before_epoch`, run by the training loop before
the first step of each epoch; the features are computed by every replica
on its share and gathered, and k-means runs on the gathered features, so
every replica gets the same assignments (`keras_ssl.clustering`). Kolesnikov
et al. (2019, Table 2) quote 41.0% ImageNet linear top-1 for DeepCluster.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_ssl import Method, cross_replica
from keras_ssl.backbones import output_dim
from keras_ssl.clustering import DatasetFeatures, kmeans, pca_whitening
from keras_ssl.random import example_seed
from keras_ssl.toolkit import checked_index, required_num_examples
from keras_ssl.testing.tiny import TINY_NUM_EXAMPLES

# Keys that keep the k-means and classifier draws apart from each other and from other seeds.
_KMEANS_KEY = 101
_CLASSIFIER_KEY = 102


def cluster_weights(counts: tf.Tensor, num_examples: int) -> tf.Tensor:
    """`N / (k' n_c)` per cluster (0 for an empty one), k' the non-empty clusters.

    A loss weighted by these, averaged over an epoch's examples, is the mean
    over clusters of each cluster's mean loss.

    Example:
      >>> cluster_weights(tf.constant([3.0, 1.0, 0.0]), 4).numpy().tolist()
      [0.6666666865348816, 2.0, 0.0]
    """
    counts = tf.cast(counts, tf.float32)
    nonempty = tf.reduce_sum(tf.cast(counts > 0, tf.float32))
    return tf.where(counts > 0, float(num_examples) / (nonempty * tf.maximum(counts, 1.0)), 0.0)


class DeepCluster(Method):
    """Classifies images into k-means clusters of their own features, reclustered every epoch.

    Args:
      backbone: The backbone.
      num_examples: N, the size of the training split (the assignments are
        an `[N]` variable indexed by the examples' `index`). Required: bind
        `deepcluster.num_examples`.
      num_clusters: k (10,000 on ImageNet in the paper; about 10x the
        number of classes).
      pca_dim: Principal axes kept by the whitening (256 in the paper); at
        most the feature width and N - 1 are used.
      kmeans_iterations: Lloyd iterations per clustering (20, Faiss' and the
        paper's setting).
      balance_clusters: Weight each example's loss by `N / (k' n_c)` so
        every cluster counts equally (the stand-in for the paper's uniform
        sampling over clusters); False weights all examples by 1.
      feature_batch_size: Images per global batch of the feature pass.
      augmentation: The stack drawing the training view (the paper: random
        resized crops and flips).
      **kwargs: Passed to `keras_ssl.Method`.

    Example:
      >>> method = DeepCluster(backbone, num_examples=1281167, num_clusters=10000)
    """

    @classmethod
    def tiny_settings(cls):
        return dict(num_examples=TINY_NUM_EXAMPLES, num_clusters=3, pca_dim=4, kmeans_iterations=3,
                    feature_batch_size=4)

    def __init__(
        self,
        backbone,
        num_examples: int | None = None,
        num_clusters: int = 10000,
        pca_dim: int = 256,
        kmeans_iterations: int = 20,
        balance_clusters: bool = True,
        feature_batch_size: int = 256,
        augmentation="crop_flip",
        **kwargs,
    ):
        super().__init__(backbone, augmentation=augmentation, **kwargs)
        self.num_examples = required_num_examples(num_examples, "deepcluster", "assignments")
        self.num_clusters = int(num_clusters)
        if self.num_clusters < 2:
            raise ValueError(
                f"deepcluster.num_clusters must be >= 2, got {num_clusters}; the paper uses "
                f"about 10x the number of classes."
            )
        _check_clusters_fit(self.num_clusters, self.num_examples)
        for name, value in (("pca_dim", pca_dim), ("kmeans_iterations", kmeans_iterations),
                            ("feature_batch_size", feature_batch_size)):
            if int(value) < 1:
                raise ValueError(f"deepcluster.{name} must be >= 1, got {value}.")
        feature_dim = output_dim(backbone)
        self.pca_dim = min(int(pca_dim), feature_dim, self.num_examples - 1)
        self.kmeans_iterations = int(kmeans_iterations)
        self.balance_clusters = bool(balance_clusters)
        self.feature_batch_size = int(feature_batch_size)
        self.classifier = keras.layers.Dense(self.num_clusters, name="cluster_classifier")
        self.classifier.build((None, feature_dim))
        self.assignments = self.add_weight(
            shape=(self.num_examples,), dtype="int32", initializer="zeros", trainable=False,
            name="assignments",
        )
        self.cluster_weights = self.add_weight(
            shape=(self.num_clusters,), initializer="ones", trainable=False,
            name="cluster_weights",
        )
        # The epoch whose clusters `assignments` holds (-1: not clustered yet).
        self.clustered_epoch = self.add_weight(
            shape=(), dtype="int32", initializer=keras.initializers.Constant(-1),
            trainable=False, name="clustered_epoch",
        )

    def adapt(self, examples):
        """Refuses a training split whose known size differs from `num_examples`."""
        count = int(examples.cardinality())
        if count >= 0:
            _check_clusters_fit(self.num_clusters, count)
            if count != self.num_examples:
                raise ValueError(
                    f"deepcluster.num_examples = {self.num_examples}, but the training split "
                    f"has {count} examples; bind deepcluster.num_examples = {count}."
                )

    def preprocess(self, example):
        return {"image": self.augment(example["image"]),
                "index": checked_index(example, self.num_examples, "deepcluster")}

    def compute_pretext_loss(self, batch, training):
        pre_logits = self.backbone(batch["image"], training=training)["pre_logits"]
        logits = tf.cast(self.classifier(pre_logits), tf.float32)
        targets = tf.gather(self.assignments.value, tf.cast(batch["index"], tf.int32))
        weights = tf.gather(self.cluster_weights.value, targets)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
        loss = tf.reduce_mean(weights * losses)
        return loss, {
            "cluster_accuracy": self.accuracy(targets, logits),
            "nonempty_clusters": tf.reduce_sum(tf.cast(self.cluster_weights.value > 0, tf.float32)),
        }

    # ------------------------------------------------------------- clustering
    def cluster_features(self, images):
        """The features clustered: the pre-logits in inference mode."""
        return self.backbone(images, training=False)["pre_logits"]

    def cluster(self, features, epoch: int):
        """`(assignments [N], counts [k])` of `features` `[N, D]` for `epoch` (steps 2-4)."""
        whitened, _, _ = pca_whitening(features, self.pca_dim)
        points = tf.math.l2_normalize(whitened, axis=-1)
        _, assignments, counts = kmeans(
            points, self.num_clusters, example_seed(self.seed, _KMEANS_KEY, epoch),
            iterations=self.kmeans_iterations,
        )
        return assignments, counts

    def before_epoch(self, epoch, examples):
        """Reclusters the split's features and re-initialises the classifier (`Method.before_epoch`)."""
        if "_features" not in self.__dict__:  # a plain attribute, outside Keras' tracking
            object.__setattr__(self, "_features", DatasetFeatures(
                self.cluster_features, self.feature_batch_size))
        features = self._features(examples, self.num_examples)
        assignments, counts = self.cluster(features, epoch)
        weights = (cluster_weights(counts, self.num_examples) if self.balance_clusters
                   else tf.ones([self.num_clusters]))
        kernel = self.classifier.kernel
        fan_in, fan_out = kernel.shape
        limit = (6.0 / (fan_in + fan_out)) ** 0.5  # Glorot uniform, drawn from (seed, epoch)
        new_kernel = tf.random.stateless_uniform(
            kernel.shape, example_seed(self.seed, _CLASSIFIER_KEY, epoch), -limit, limit)
        cross_replica.assign([
            (self.assignments, assignments),
            (self.cluster_weights, weights),
            (self.clustered_epoch, tf.constant(int(epoch), tf.int32)),
            (kernel, new_kernel),
            (self.classifier.bias, tf.zeros(self.classifier.bias.shape)),
        ])


def _check_clusters_fit(num_clusters: int, num_examples: int) -> None:
    if num_clusters > num_examples:
        raise ValueError(
            f"deepcluster.num_clusters = {num_clusters} is more than the {num_examples} "
            f"training images: k-means cannot make more clusters than there are images. Bind "
            f"deepcluster.num_clusters to at most {num_examples} (about 10x the number of "
            f"classes), or train on a larger split."
        )
