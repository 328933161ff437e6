"""AMDIM, augmented multiscale deep InfoMax (Bachman, Hjelm & Buchwalter, 2019).

Each image gives two views drawn independently by the augmentation stack
(crops, colour jitter and grayscale in the paper; `simclr_cifar` by default,
whose jitter strength s = 0.5 gives the paper's 0.4 brightness, contrast and
saturation). Both views go through the backbone in one batch. AMDIM
maximises mutual information between features of one view and features at
other scales of the other view, through InfoNCE:

- the global feature f_1 (the paper's 1x1 map),
- local feature maps f_5 and f_7 (the paper's 5x5 and 7x7 maps, from the
  last two spatial stages of its encoder).

Each goes through its own embedding head to a common width d: a residual
MLP of 1x1 convolutions, `BN(x W_s + b_s + ReLU(BN(x W_1)) W_2 + b_2)` (a
linear shortcut plus a two-layer branch, batch-normalised), applied per
location on the maps. The output batch norm is a choice here: without
it the raw scores started at a mean square of about 60 on the tiny ResNet
(u and v carry the end-points' magnitudes) and ten SGD steps at 0.05 took
the loss from 10.4 to 23.9; with it they start near unit scale.

For a source vector u_i (image i of view A) and the target map of view B
with locations l, the raw scores are s_ijl = u_i . v_jl / sqrt(d) against
every location l of every image j of the *global* batch. Scores are
soft-clipped, s' = c tanh(s / c) with c = 20, and each location l of the
same image i is a positive against all locations of the other images:

    L(u, v) = mean_{i,l} -log [exp(s'_iil) / (exp(s'_iil) + sum_{j != i, l'} exp(s'_ijl'))].

The three pairs of the paper, each in both directions (A -> B and B -> A,
averaged):

- 1-5: f_1 of one view against every location of f_5 of the other;
- 1-7: f_1 against f_7;
- 5-5: one location of f_5, drawn per image, against every location of f_5
  of the other view.

As in the paper, a small penalty on the squared raw (unclipped) scores keeps
them from drifting into the flat part of the tanh:

    loss = sum_pairs [L_pair + lambda mean(s^2)_pair],   lambda = 0.05.

Negatives are gathered across replicas (`keras_ssl.cross_replica.gather`,
differentiable) and the 5-5 source locations are drawn for the global batch
from a step-keyed seed and sliced per replica, so 2 replicas train like one
device.

Which end-points play the paper's roles (ResNet v2 end-points `after_root`,
`block1`..`block4`, `pre_logits`): the paper's encoder at 128 px ends with a
7x7 stage, a 5x5 stage and a 1x1 output. Here the defaults are

- `global_endpoint = "pre_logits"` for the 1x1 feature: it is what the export
  hands downstream, so the global objective trains the representation that
  is evaluated;
- `local_endpoint_5x5 = "block4"` and `local_endpoint_7x7 = "block3"`, the
  backbone's last two spatial stages, as in the paper. At 32 px with the
  small-image stem (and at 128 px with the standard stem, the paper's
  ImageNet size) they are 4x4 and 8x8, the nearest the ResNet's stride-2
  stages come to 5x5 and 7x7.

One difference from the paper's encoder: there the 1x1 feature comes from
further convolutions on the 5x5 map; here `pre_logits` is the global
average of `block4`, so the 1-5 pair contrasts the mean of one view's
`block4` with the locations of the other's (through different heads).

Any other spatial end-point can be chosen; a missing one, or a non-spatial
one for a local role, is refused when the method is built. A spatial global
end-point is averaged over its locations. Only the backbone is exported; the
heads are training-only.

Metrics: `nce_1t5`, `nce_1t7`, `nce_5t5` (chance is log(1 + (N - 1) L) for
N images and L target locations), `accuracy_*` (the share of positives
scoring above every negative), `mean_squared_score` (the raw scores' mean
square, averaged over the pairs) and `embedding_std` of the global
embeddings (the collapse metric).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_ssl import cross_replica
from keras_ssl.heads import uses_synchronized_bn
from keras_ssl.metrics import normalized_embedding_std
from keras_ssl.normalization import BatchNormalization
from keras_ssl.random import step_seed
from keras_ssl.toolkit import ContrastiveMethod
from keras_ssl.toolkit import require_endpoint

# Fill of the positives among the negatives: far below any clipped score.
_MASKED = -1e9


def soft_clip(scores: tf.Tensor, clip: float) -> tf.Tensor:
    """`clip * tanh(scores / clip)`: about the identity near 0, bounded by +-clip."""
    return clip * tf.tanh(scores / clip)


def global_local_nce(sources: tf.Tensor, targets: tf.Tensor, clip: float = 20.0,
                     gathered_targets: tf.Tensor | None = None):
    """AMDIM's InfoNCE of source vectors against the locations of target maps.

    Source row i's positives are the L locations of target row i; its
    negatives are every location of every other image of the global batch
    (the targets are gathered across replicas).

    Args:
      sources: `[B, d]`, this replica's source vectors (f_1, or one location of f_5).
      targets: `[B, L, d]`, this replica's target maps, flattened over locations.
      clip: c of the soft clipping `c tanh(s / c)`.
      gathered_targets: `cross_replica.gather(targets)`, when the caller has
        it (a map that is the target of several pairs is gathered once).

    Returns:
      `(loss, mean_squared_score, accuracy)`: the mean over this replica's
      rows and locations of `-log softmax` of each positive against the
      negatives; the mean of the squared raw scores `s = u . v / sqrt(d)`
      over the `[B, N, L]` scores (the paper's penalty before its weight);
      and the fraction of positives that score above every negative.

    Example:
      >>> loss, _, _ = global_local_nce(tf.ones([2, 4]), tf.ones([2, 3, 4]))
      >>> round(float(loss), 4)  # all scores equal: -log(1 / (1 + 3))
      1.3863
    """
    sources = tf.cast(sources, tf.float32)
    targets = tf.cast(targets, tf.float32)
    rows = tf.shape(sources)[0]
    all_targets = tf.cast(  # [N, L, d]
        cross_replica.gather(targets) if gathered_targets is None else gathered_targets,
        tf.float32)
    _, replica = cross_replica.replica_position()
    width = tf.cast(tf.shape(sources)[-1], tf.float32)
    raw = tf.einsum("bd,nld->bnl", sources, all_targets) / tf.sqrt(width)
    mean_squared = tf.reduce_mean(tf.square(raw))
    scores = soft_clip(raw, clip)
    own = tf.range(rows) + replica * rows
    positive_mask = tf.one_hot(own, tf.shape(all_targets)[0], on_value=True, off_value=False)
    positive_mask = tf.broadcast_to(positive_mask[:, :, None], tf.shape(scores))
    positives = tf.gather(scores, own, axis=1, batch_dims=1)  # [B, L]
    negatives = tf.reshape(tf.where(positive_mask, _MASKED, scores), [rows, -1])
    negative_lse = tf.reduce_logsumexp(negatives, axis=1, keepdims=True)
    # -log(e^p / (e^p + sum e^n)) = softplus(logsumexp(n) - p).
    loss = tf.reduce_mean(tf.nn.softplus(negative_lse - positives))
    hardest = tf.reduce_max(negatives, axis=1, keepdims=True)
    accuracy = tf.reduce_mean(tf.cast(positives > hardest, tf.float32))
    return loss, mean_squared, accuracy


def residual_embedding(input_dim: int, dim: int, spatial: bool, synchronized_bn: bool,
                       name: str) -> keras.Model:
    """AMDIM's embedding head: a linear shortcut plus a 1x1-conv, BN, ReLU, 1x1-conv branch, then BN.

    Args:
      input_dim: Channels of the end-point.
      dim: d, the common embedding width.
      spatial: Built for `[B, H, W, input_dim]` maps (else `[B, input_dim]`).
      synchronized_bn: The branch's batch norm computes statistics across replicas.
      name: The model's name.

    Returns:
      A functional `keras.Model` mapping the last axis to `dim`.
    """
    inputs = keras.Input((None, None, input_dim) if spatial else (input_dim,))
    shortcut = keras.layers.Dense(dim, name=f"{name}_shortcut")(inputs)
    branch = keras.layers.Dense(dim, use_bias=False, name=f"{name}_dense_1")(inputs)
    branch = BatchNormalization(synchronized=synchronized_bn, name=f"{name}_bn")(branch)
    branch = keras.layers.ReLU(name=f"{name}_relu")(branch)
    branch = keras.layers.Dense(dim, name=f"{name}_dense_2")(branch)
    outputs = keras.layers.Add(name=f"{name}_add")([shortcut, branch])
    # Each output channel standardised over the batch (and locations): raw scores
    # u . v / sqrt(d) start near unit scale whatever the end-point's magnitude.
    outputs = BatchNormalization(synchronized=synchronized_bn, name=f"{name}_output_bn")(outputs)
    return keras.Model(inputs, outputs, name=name)


class AMDIM(ContrastiveMethod):
    """InfoNCE between global and local features of two views, across scales.

    Args:
      backbone: The backbone (see `keras_ssl.backbones`).
      global_endpoint: The end-point playing the paper's 1x1 global feature
        (`pre_logits`; a spatial one is averaged over its locations).
      local_endpoint_5x5: The spatial end-point playing the paper's 5x5 map
        (`block4`), the target of 1-5 and both ends of 5-5.
      local_endpoint_7x7: The spatial end-point playing the paper's 7x7 map
        (`block3`), the target of 1-7.
      embedding_dim: d, the common width of the three embedding heads.
      score_clip: c of the soft clipping `c tanh(s / c)` (20).
      score_penalty: lambda, the weight of the mean squared raw score of
        each pair (0.05; 0 turns it off).
      num_classes: Train an online linear probe (see `ContrastiveMethod`).
      augmentation: The stack drawing each of the two views.
      location_seed: Seed of the 5-5 source locations (with the optimizer step).
      **kwargs: Passed to `keras_ssl.Method`.

    Example:

    >>> from keras_ssl.backbones import build_backbone
    >>> net = build_backbone("resnet_v2", depth=10, widening_factor=1, small_image_stem=True)
    >>> method = AMDIM(net, embedding_dim=32)
    >>> inputs = method.preprocess({"image": tf.zeros((32, 32, 3)),
    ...                             "label": tf.constant(0, tf.int64),
    ...                             "index": tf.constant(0, tf.int64)})
    >>> inputs["view_1"].shape
    TensorShape([32, 32, 3])
    """

    @classmethod
    def tiny_settings(cls):
        # At 16 px block4 (the 5x5 role) is 2x2 and block3 (the 7x7 role) 4x4.
        return dict(embedding_dim=16)

    def __init__(
        self,
        backbone,
        global_endpoint: str = "pre_logits",
        local_endpoint_5x5: str = "block4",
        local_endpoint_7x7: str = "block3",
        embedding_dim: int = 1024,
        score_clip: float = 20.0,
        score_penalty: float = 0.05,
        num_classes: int | None = None,
        augmentation="simclr_cifar",
        location_seed: int = 0,
        **kwargs,
    ):
        super().__init__(backbone, num_classes=num_classes, augmentation=augmentation, **kwargs)
        if embedding_dim < 1:
            raise ValueError(f"amdim: embedding_dim must be positive, got {embedding_dim}.")
        if not score_clip > 0:
            raise ValueError(f"amdim: score_clip must be positive (the paper's c = 20), got "
                             f"{score_clip}.")
        if score_penalty < 0:
            raise ValueError(f"amdim: score_penalty must be non-negative (the paper's 0.05), "
                             f"got {score_penalty}.")
        outputs = backbone.output
        self.global_endpoint = require_endpoint(backbone, global_endpoint,
                                                "amdim.global_endpoint", spatial=False)
        self.local_endpoint_5x5 = require_endpoint(backbone, local_endpoint_5x5,
                                                   "amdim.local_endpoint_5x5", spatial=True)
        self.local_endpoint_7x7 = require_endpoint(backbone, local_endpoint_7x7,
                                                   "amdim.local_endpoint_7x7", spatial=True)
        self.embedding_dim = int(embedding_dim)
        self.score_clip = float(score_clip)
        self.score_penalty = float(score_penalty)
        self.location_seed = int(location_seed)
        synchronized = uses_synchronized_bn(backbone)

        def head(endpoint, spatial, name):
            channels = int(outputs[endpoint].shape[-1])
            return residual_embedding(channels, self.embedding_dim, spatial, synchronized, name)

        # A spatial global end-point is averaged before its head.
        self.global_head = head(self.global_endpoint, False, "amdim_global_head")
        self.head_5x5 = head(self.local_endpoint_5x5, True, "amdim_head_5x5")
        self.head_7x7 = head(self.local_endpoint_7x7, True, "amdim_head_7x7")

    def check_training_setup(self, global_batch_size, image_size):
        if global_batch_size < 2:
            raise ValueError(
                "amdim: its negatives are the other images of the global batch, so it needs "
                f"at least 2 images per step, got keras_ssl.train.batch_size = "
                f"{global_batch_size}; raise the batch size.")

    def preprocess(self, example):
        return self.two_views(example)

    def embed(self, images, training):
        """`(f_1 [B, d], f_5 [B, L5, d], f_7 [B, L7, d], pre_logits)` of `images` (float32)."""
        features = self.backbone(images, training=training)
        global_features = features[self.global_endpoint]
        if len(global_features.shape) == 4:
            global_features = tf.reduce_mean(global_features, axis=[1, 2])
        f1 = tf.cast(self.global_head(global_features, training=training), tf.float32)

        def flat(head, endpoint):
            maps = tf.cast(head(features[endpoint], training=training), tf.float32)
            return tf.reshape(maps, [tf.shape(maps)[0], -1, self.embedding_dim])

        return (f1, flat(self.head_5x5, self.local_endpoint_5x5),
                flat(self.head_7x7, self.local_endpoint_7x7), features["pre_logits"])

    def source_locations(self, rows, locations):
        """`[2, rows]` location indices of the 5-5 sources (A -> B, B -> A) of this replica.

        Drawn for the global batch from a step-keyed seed, then sliced per replica.
        """
        replicas, _ = cross_replica.replica_position()
        drawn = tf.random.stateless_uniform(
            [rows * replicas, 2], step_seed(self, self.location_seed), minval=0,
            maxval=locations, dtype=tf.int32)
        return tf.transpose(cross_replica.replica_rows(drawn))

    def compute_pretext_loss(self, batch, training):
        views = tf.concat([batch["view_1"], batch["view_2"]], axis=0)
        f1, f5, f7, pre_logits = self.embed(views, training)
        g_a, g_b = tf.split(f1, 2)
        m5_a, m5_b = tf.split(f5, 2)
        m7_a, m7_b = tf.split(f7, 2)
        where_a, where_b = tf.unstack(self.source_locations(tf.shape(g_a)[0], tf.shape(f5)[1]))
        s5_a = tf.gather(m5_a, where_a, axis=1, batch_dims=1)
        s5_b = tf.gather(m5_b, where_b, axis=1, batch_dims=1)
        clip = self.score_clip
        # Each target map (this replica's, all replicas') gathered once: f_5 serves two pairs.
        t5_a, t5_b, t7_a, t7_b = (
            (local, cross_replica.gather(local)) for local in (m5_a, m5_b, m7_a, m7_b))
        pairs = {
            "1t5": ((g_a, t5_b), (g_b, t5_a)),
            "1t7": ((g_a, t7_b), (g_b, t7_a)),
            "5t5": ((s5_a, t5_b), (s5_b, t5_a)),
        }
        loss = tf.zeros(())
        penalty = tf.zeros(())
        metrics = {}
        for name, directions in pairs.items():
            terms = [global_local_nce(source, target, clip, gathered)
                     for source, (target, gathered) in directions]
            nce = 0.5 * (terms[0][0] + terms[1][0])
            squared = 0.5 * (terms[0][1] + terms[1][1])
            loss += nce
            penalty += squared
            metrics[f"nce_{name}"] = nce
            metrics[f"accuracy_{name}"] = 0.5 * (terms[0][2] + terms[1][2])
        loss += self.score_penalty * penalty
        metrics["mean_squared_score"] = penalty / 3.0
        metrics["embedding_std"] = normalized_embedding_std(g_a)
        probe, probe_metrics = self.probe_loss(pre_logits, tf.tile(batch["label"], [2]))
        return loss + probe, {**metrics, **probe_metrics}

    def export_metadata(self):
        return {"amdim": {
            "global_endpoint": self.global_endpoint,
            "local_endpoint_5x5": self.local_endpoint_5x5,
            "local_endpoint_7x7": self.local_endpoint_7x7,
            "embedding_dim": self.embedding_dim,
        }}
