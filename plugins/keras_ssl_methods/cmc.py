"""CMC, contrastive multiview coding on the L and ab views (Tian, Krishnan & Isola 2019).

An image seen through two views, its lightness L and its colour ab (CIE Lab),
should be recognisable from one view among other images' other view. One
network per view (`keras_ssl_methods._two_halves`: two copies of the bound
backbone, one on L and one on ab) maps its view to a 128-d feature
`z = l2norm(W h)`, a linear projection of that half's pre-logits.

Each view has a memory bank, one l2-normalised feature per training image, as
NPID's (`keras_ssl.toolkit.memory_bank`). With N noise images j drawn uniformly from
the banks (the same j for both directions) and tau the temperature, the loss
in each direction is the softmax cross-entropy of the image's own row of the
other view's bank among the noise rows,

    L(z_L -> ab) = -log exp(z_L . m_ab(i) / tau)
                   / (exp(z_L . m_ab(i) / tau) + sum_j exp(z_L . m_ab(j) / tau)),

and the loss is L(z_L -> ab) + L(z_ab -> L) (`memory_bank_info_nce`). This is
the paper's softmax form of its contrastive loss, which needs no
normalisation constant (their other form is NPID's NCE). After each step the
banks move towards the new features: `m(i) <- l2norm(b m(i) + (1 - b) z_i)`,
b = 0.5.

`negatives="batch"` replaces the banks by the global batch: the positive is
the other view's current feature of the same image and the negatives are the
other view of every other image in the batch (gathered across replicas, with
their gradient; `cross_view_info_nce`). A bank row is refreshed once an epoch,
so in a run of a few epochs most of what the banks hold is stale or still
random; the batch form needs neither `num_examples` nor an index.

The representation is both halves: the export's end-points are the
concatenations (`pre_logits` is `[B, 2 D]`) and each half's own (`l_block3`,
`ab_pre_logits`, ...). Grayscale-only data are refused before training.
"""

from __future__ import annotations

import tensorflow as tf

from keras_ssl import cross_replica
from keras_ssl.heads import projection_head
from keras_ssl.metrics import normalized_embedding_std
from keras_ssl.toolkit import (
    ContrastiveMethod, add_memory_bank, bank_rows, bank_scores, checked_index, move_bank_rows,
    noise_index, required_num_examples,
)
from keras_ssl.testing.tiny import TINY_NUM_EXAMPLES
from keras_ssl_methods._two_halves import HALVES, LabHalvesMethod


def memory_bank_info_nce(features, positives, noise, temperature):
    """Softmax cross-entropy of each feature's positive bank row among its noise rows.

    Args:
      features: `[B, D]`, l2-normalised.
      positives: `[B, D]`, row i is the positive of feature i.
      noise: `[B, K, D]`, the noise rows of each feature.
      temperature: tau.

    Returns:
      `(mean loss, [B] positive scores)`.
    """
    positive_scores, noise_scores = bank_scores(features, positives, noise)
    logits = tf.concat([positive_scores[:, None], noise_scores], axis=1) / temperature
    labels = tf.zeros(tf.shape(logits)[:1], tf.int32)
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_mean(loss), positive_scores


def cross_view_info_nce(queries, keys, temperature):
    """Softmax cross-entropy of each query's own key among the global batch's keys.

    Args:
      queries: `[B, D]` l2-normalised features of one view, this replica's rows.
      keys: `[B, D]` the other view's features of the same images.
      temperature: tau.

    Returns:
      `(mean loss over this replica's rows, [B] positive scores)`. The keys
      are gathered across replicas (with their gradient), so the negatives
      are the other view of every other image of the global batch.
    """
    all_keys = cross_replica.gather(keys)
    logits = tf.matmul(queries, all_keys, transpose_b=True) / temperature
    _, replica = cross_replica.replica_position()
    rows = tf.shape(queries)[0]
    labels = tf.range(rows) + tf.cast(replica, tf.int32) * rows
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_mean(loss), tf.reduce_sum(queries * keys, axis=-1)


#: Where the negatives come from: the memory banks (the paper) or the global batch.
NEGATIVES = ("memory_bank", "batch")


class CMC(LabHalvesMethod, ContrastiveMethod):
    """Contrastive multiview coding of L and ab with a memory bank per view.

    Args:
      backbone: The bound backbone; each view's network is a copy of it
        (bind half the widening factor for the papers' half-width halves).
      num_examples: n, the number of training images (rows of each bank).
        Required with the banks: bind `cmc.num_examples` to the training
        split's size.
      num_negatives: N noise rows per image and direction (16,384 in the paper).
      temperature: tau (0.07).
      bank_momentum: b of the banks' moving average (0.5).
      projection_dim: Width of the features and the banks (128).
      num_classes: Train an online linear probe on the concatenated pre-logits.
      augmentation: The stack drawing the one RGB view both halves see.
      noise_seed: Seed of the noise draws (with the optimizer step).
      negatives: `"memory_bank"` (the paper: N noise rows of the other view's
        bank) or `"batch"` (the other view of every other image of the global
        batch, no banks; `cross_view_info_nce`).
      **kwargs: Passed to `keras_ssl.Method`.

    Example:

    >>> from keras_ssl.backbones import build_backbone
    >>> net = build_backbone("resnet_v2", depth=10, widening_factor=1,
    ...                      small_image_stem=True)
    >>> cmc = CMC(net, num_examples=100, num_negatives=16)
    >>> out = cmc(tf.zeros((2, 32, 32, 3)))
    >>> out["pre_logits"].shape, out["l_pre_logits"].shape
    (TensorShape([2, 256]), TensorShape([2, 128]))
    """

    setting_prefix = "cmc"

    @classmethod
    def tiny_settings(cls):
        return dict(num_examples=TINY_NUM_EXAMPLES, num_negatives=8, projection_dim=16)

    def __init__(
        self,
        backbone,
        num_examples: int | None = None,
        num_negatives: int = 16384,
        temperature: float = 0.07,
        bank_momentum: float = 0.5,
        projection_dim: int = 128,
        num_classes: int | None = None,
        augmentation="crop_flip",
        noise_seed: int = 0,
        negatives: str = "memory_bank",
        **kwargs,
    ):
        super().__init__(backbone, num_classes=num_classes, augmentation=augmentation, **kwargs)
        if negatives not in NEGATIVES:
            raise ValueError(f"cmc: negatives must be one of {NEGATIVES}, got {negatives!r}.")
        self.negatives = negatives
        if num_negatives < 1:
            raise ValueError(f"cmc: num_negatives must be >= 1, got {num_negatives}.")
        self.num_negatives = int(num_negatives)
        self.temperature = float(temperature)
        self.bank_momentum = float(bank_momentum)
        self.noise_seed = int(noise_seed)
        half_dim = int(self.backbone.output["l_pre_logits"].shape[-1])
        self.l_head, self.ab_head = (
            projection_head(half_dim, projection_dim, projection_dim, num_layers=1,
                            batch_norm=False, name=f"cmc_{prefix}_projection")
            for prefix, _ in HALVES)
        self.num_examples = None
        if negatives == "memory_bank":
            self.num_examples = required_num_examples(num_examples, self.setting_prefix, "memory banks")
            self.l_memory_bank, self.ab_memory_bank = (
                add_memory_bank(self, self.num_examples, projection_dim, f"{prefix}_memory_bank")
                for prefix, _ in HALVES)

    def preprocess(self, example):
        inputs = {"image": self.augment(example["image"]),
                  "label": tf.cast(example["label"], tf.int32)}
        if self.num_examples:
            inputs["index"] = checked_index(example, self.num_examples, self.setting_prefix)
        return inputs

    def compute_pretext_loss(self, batch, training):
        outputs = self.halves(batch["image"], training)
        z_l = tf.math.l2_normalize(tf.cast(self.l_head(outputs["l_pre_logits"]), tf.float32), -1)
        z_ab = tf.math.l2_normalize(tf.cast(self.ab_head(outputs["ab_pre_logits"]), tf.float32), -1)
        if self.negatives == "batch":
            l_to_ab, l_positive = cross_view_info_nce(z_l, z_ab, self.temperature)
            ab_to_l, ab_positive = cross_view_info_nce(z_ab, z_l, self.temperature)
        else:
            index = tf.cast(batch["index"], tf.int32)
            noise = noise_index(self, tf.shape(index)[0], self.num_negatives, self.num_examples,
                                self.noise_seed)

            def rows(bank):
                return bank_rows(bank, index), bank_rows(bank, noise)

            l_to_ab, l_positive = memory_bank_info_nce(z_l, *rows(self.ab_memory_bank),
                                                       self.temperature)
            ab_to_l, ab_positive = memory_bank_info_nce(z_ab, *rows(self.l_memory_bank),
                                                        self.temperature)
            self.save_for_update(index=index, l_features=z_l, ab_features=z_ab)
        probe, probe_metrics = self.probe_loss(outputs["pre_logits"], batch["label"])
        metrics = {
            "l_to_ab_loss": l_to_ab,
            "ab_to_l_loss": ab_to_l,
            "positive_similarity": tf.reduce_mean(tf.concat([l_positive, ab_positive], 0)),
            "embedding_std": normalized_embedding_std(z_l),
            **probe_metrics,
        }
        return l_to_ab + ab_to_l + probe, metrics

    def after_update(self, saved):
        """Moves both banks' rows of this step's images towards their new features."""
        if "index" not in saved:
            return
        for bank, features in ((self.l_memory_bank, saved["l_features"]),
                               (self.ab_memory_bank, saved["ab_features"])):
            move_bank_rows(bank, saved["index"], features, self.bank_momentum)
