"""Losses of self-supervised methods, one family per module, each tested against numpy.

- `contrastive`: NT-Xent (SimCLR), InfoNCE (MoCo), NCE (NPID).
- `metric_learning`: triplet (Exemplar), N-pair.
- `negative_cosine`: BYOL's and SimSiam's regression onto a stop-gradient target.
- `barlow_twins`: the cross-correlation loss over the global batch.
- `vicreg`: variance, invariance, covariance over the global batch.
- `dino`: self-distillation with a centred, sharpened teacher.
- `swav`: Sinkhorn-Knopp codes and the swapped prediction.
- `masked_distillation`: iBOT's masked patch loss, DINOv2's KoLeo and Sinkhorn-Knopp centring.

Every function returns what `keras_ssl.Method.compute_pretext_loss` needs:
a scalar that is either the mean over this replica's rows or, for losses
of global-batch statistics, the same value on every replica. Either way one
step on N replicas equals one step on the concatenated batch on one device
(`keras_ssl.cross_replica` explains why).
"""

from keras_ssl.losses.barlow_twins import barlow_twins_loss, cross_correlation
from keras_ssl.losses.contrastive import info_nce_loss, nce_loss, nt_xent_loss
from keras_ssl.losses.dino import dino_loss
from keras_ssl.losses.masked_distillation import (
    CENTERINGS, cross_view_loss, koleo_loss, masked_patch_loss, sinkhorn_knopp_centering,
    teacher_targets,
)
from keras_ssl.losses.metric_learning import TRIPLET_MINING, npair_loss, pairwise_distances, triplet_loss
from keras_ssl.losses.negative_cosine import negative_cosine_similarity
from keras_ssl.losses.swav import sinkhorn_knopp, swapped_prediction_loss
from keras_ssl.losses.vicreg import vicreg_loss

__all__ = [
    "barlow_twins_loss",
    "CENTERINGS",
    "cross_correlation",
    "cross_view_loss",
    "dino_loss",
    "info_nce_loss",
    "koleo_loss",
    "masked_patch_loss",
    "nce_loss",
    "negative_cosine_similarity",
    "npair_loss",
    "nt_xent_loss",
    "pairwise_distances",
    "sinkhorn_knopp",
    "sinkhorn_knopp_centering",
    "swapped_prediction_loss",
    "teacher_targets",
    "triplet_loss",
    "TRIPLET_MINING",
    "vicreg_loss",
]
