"""NPID, instance discrimination with a memory bank (Wu et al. 2018).

Every training image is its own class. Features `f = l2norm(W h)` (a linear
128-d projection of the pre-logits) are compared with a memory bank holding
one l2-normalised feature per training instance; the non-parametric softmax
`P(i | f) = exp(v_i . f / tau) / Z` over all n instances is approximated by
NCE with K uniformly drawn noise instances (`keras_ssl.losses.nce_loss`).
After each optimizer step the bank rows of the batch move by a moving
average towards the new features: `v_i <- l2norm(m v_i + (1 - m) f_i)`.

The bank needs the number of training instances n and the `index` field of
each example (0 .. n-1; keras-ssl's datasets provide it). n is a
constructor argument bound by gin (`npid.num_examples = 50000`), because the
method is built before the dataset is read and the bank's shape must be
known to create it (and to restore it from a checkpoint). An index >= n
stops the input pipeline with a message naming the binding.

The noise instances are drawn for the whole global batch from a stateless
generator keyed by the optimizer step (`noise_seed`), and each replica takes
its own rows: a step on R replicas draws exactly the noise of the same step
on one device with the concatenated batch, so the two give the same update
(tested on two logical CPUs).
"""

from __future__ import annotations

import tensorflow as tf

from keras_ssl import cross_replica
from keras_ssl.backbones import output_dim
from keras_ssl.heads import projection_head
from keras_ssl.losses import nce_loss
from keras_ssl.toolkit import (
    ContrastiveMethod, add_memory_bank, bank_rows, bank_scores, checked_index, move_bank_rows,
    noise_index, required_num_examples,
)
from keras_ssl.testing.tiny import TINY_NUM_EXAMPLES


class NPID(ContrastiveMethod):
    """Non-parametric instance discrimination with NCE and a memory bank.

    Args:
      backbone: The backbone.
      num_examples: n, the number of training instances (rows of the bank).
        Required: bind `npid.num_examples` to the training split's size.
      num_negatives: K noise samples per example (4096 in the paper).
      temperature: tau (0.07 in the paper).
      bank_momentum: m of the bank's moving average.
      fix_normalization: Estimate Z once, on the first step, and keep it
        (the NPID reference code), or re-estimate it on every batch (False;
        steadier on tiny datasets, where features and bank align fast and a
        Z from random features is soon far too small).
      projection_dim: Feature width (128).
      num_classes: Train an online linear probe (see `ContrastiveMethod`).
      augmentation: The stack drawing the one view.
      noise_seed: Seed of the noise draws (with the optimizer step).
      **kwargs: Passed to `keras_ssl.Method`.

    Example:
      >>> npid = NPID(backbone, num_examples=50000, num_negatives=4096)
    """

    #: The gin name its errors tell the user to bind (`npid.num_examples`).
    setting_prefix = "npid"

    @classmethod
    def tiny_settings(cls):
        return dict(num_examples=TINY_NUM_EXAMPLES, num_negatives=8, fix_normalization=False,
                    projection_dim=16)

    def __init__(
        self,
        backbone,
        num_examples: int | None = None,
        num_negatives: int = 4096,
        temperature: float = 0.07,
        bank_momentum: float = 0.5,
        fix_normalization: bool = True,
        projection_dim: int = 128,
        num_classes: int | None = None,
        augmentation="crop_flip",
        noise_seed: int = 0,
        **kwargs,
    ):
        super().__init__(backbone, num_classes=num_classes, augmentation=augmentation, **kwargs)
        self.num_examples = required_num_examples(num_examples, self.setting_prefix, "memory bank")
        self.num_negatives = num_negatives
        self.temperature = temperature
        self.bank_momentum = bank_momentum
        self.fix_normalization = fix_normalization
        self.noise_seed = int(noise_seed)
        self.head = projection_head(
            output_dim(backbone), projection_dim, projection_dim, num_layers=1,
            batch_norm=False, name="npid_projection",
        )
        self.memory_bank = add_memory_bank(self, self.num_examples, projection_dim)
        # Z of the NCE approximation: estimated on the first step, then fixed.
        self.normalization_constant = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="normalization_constant"
        )

    def bank_index(self, example) -> tf.Tensor:
        """The example's bank row (int32); stops the pipeline if it is >= `num_examples`."""
        return checked_index(example, self.num_examples, self.setting_prefix)

    def preprocess(self, example):
        return {
            "image": self.augment(example["image"]),
            "index": self.bank_index(example),
            "label": tf.cast(example["label"], tf.int32),
        }

    def compute_pretext_loss(self, batch, training):
        pre_logits = self.backbone(batch["image"], training=training)["pre_logits"]
        features = tf.math.l2_normalize(tf.cast(self.head(pre_logits), tf.float32), axis=-1)
        index = tf.cast(batch["index"], tf.int32)
        positive_scores, noise_scores = bank_scores(features, *self.bank_rows(index))
        z = self.normalization(noise_scores)
        loss, _ = nce_loss(positive_scores, noise_scores, self.num_examples, self.temperature, z)
        self.save_for_update(index=index, features=features, z=z)
        probe, probe_metrics = self.probe_loss(pre_logits, batch["label"])
        metrics = {
            "nce_loss": loss,
            "positive_similarity": tf.reduce_mean(positive_scores),
            **probe_metrics,
        }
        return loss + probe, metrics

    def bank_rows(self, index):
        """`(positives [B, D], noise [B, K, D])`: the bank rows of `index` and this step's noise."""
        noise = noise_index(self, tf.shape(index)[0], self.num_negatives, self.num_examples,
                            self.noise_seed)
        return bank_rows(self.memory_bank, index), bank_rows(self.memory_bank, noise)

    def normalization(self, noise_scores):
        """Z of this step: the stored one, or this global batch's estimate (see `fix_normalization`)."""
        z = tf.convert_to_tensor(self.normalization_constant)
        estimate = tf.stop_gradient(tf.reduce_mean(tf.exp(noise_scores / self.temperature)))
        estimate = estimate * self.num_examples
        # The mean of the replicas' estimates, each over an equal share of the global batch:
        # the estimate of the whole batch, the same on every replica.
        estimate = tf.reduce_mean(cross_replica.gather(estimate[None]))
        return tf.where(z > 0, z, estimate) if self.fix_normalization else estimate

    def after_update(self, saved):
        """Moves the bank rows of this step's examples towards their new features."""
        if "features" not in saved:
            return
        move_bank_rows(self.memory_bank, saved["index"], saved["features"], self.bank_momentum)
        cross_replica.assign([(self.normalization_constant, saved["z"])])
