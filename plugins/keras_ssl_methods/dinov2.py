"""DINOv2 (Oquab et al. 2024): DINO + iBOT + a KoLeo regulariser, Sinkhorn-Knopp centring.

iBOT's losses (`keras_ssl_methods.ibot`) with DINOv2's choices: separate
class-token (DINO) and patch (iBOT) heads of 65,536 outputs; the teacher's
targets by Sinkhorn-Knopp centring (SwAV's equipartition, 3 iterations at
tau_t, over the global batch: the class tokens of both global views
together, and the masked patch tokens only) instead of softmax centring;
and the KoLeo regulariser on the student's class tokens (after the final
norm, before the head) of each global view:

    L_koleo(view) = -1/n sum_i log(min_{j != i} ||x_i - x_j|| + eps),  x l2-normalised
    L = L_DINO + L_iBOT + 0.1 sum over global views of L_koleo(view)

n is the global batch: the rows of every replica are gathered, so the
value does not depend on how the batch is split (DINOv2's code computes it
over each GPU's rows). tau_s = 0.1, tau_t warms up from 0.04 to 0.07 (both
heads); the teacher's momentum rises from 0.992 to 1; half of the global
views are masked, each at a ratio uniform in [0.1, 0.5] (per view: the
count of masked views varies from batch to batch, where DINOv2's collate
masks exactly half of them). Registers and LayerScale are backbone options
(`vit.num_registers = 4`, `vit.layer_scale = 1e-5`); multi-crop is 2 global
crops (area 0.32-1) and 8 local ones (0.05-0.32).
"""

from __future__ import annotations

import tensorflow as tf

from keras_ssl.augment.view_specs import multi_crop
from keras_ssl.losses.masked_distillation import koleo_loss
from keras_ssl_methods.ibot import IBOT


def dinov2_views():
    """DINOv2's multi-crop: 2 global crops (area 0.32-1) and 8 local crops (0.05-0.32)."""
    return multi_crop(num_local_views=8, global_area_range=(0.32, 1.0),
                      local_area_range=(0.05, 0.32))


class DINOv2(IBOT):
    """DINOv2's self-supervised objective (see `IBOT` for the arguments they share).

    Args:
      backbone: The student `vit` (`mask_token=True`; registers and LayerScale
        as bound on it); exported.
      num_outputs: K of the DINO head (65,536).
      num_patch_outputs: K of the iBOT head (65,536).
      koleo_weight: Weight of the KoLeo term (0.1); 0 leaves it out.
      koleo_epsilon: eps of the KoLeo term (1e-8).
      centering: `"sinkhorn_knopp"` (DINOv2) or `"softmax"` (DINO's centring).
      teacher_temperature, warmup_teacher_temperature: tau_t of the class
        token after and at the start of the warm-up (0.07, 0.04).
      patch_teacher_temperature, warmup_patch_teacher_temperature: The same
        for the patch tokens (0.07, 0.04).
      base_momentum: The teacher's momentum at step 0 (0.992), rising to 1.
      views: `dinov2_views()` by default.
      **kwargs: Passed to `IBOT` (mask_ratio_range (0.1, 0.5), mask_probability
        0.5, shared_head False, ...).

    Example:

    >>> from keras_ssl.backbones import build_backbone
    >>> net = build_backbone("vit", widening_factor=1, depth=2, patch_size=4, image_size=16,
    ...                      mask_token=True, num_registers=2, layer_scale=1e-5)
    >>> method = DINOv2(net, **DINOv2.tiny_settings())
    >>> method.centering, len(method.views)
    ('sinkhorn_knopp', 4)
    """

    def __init__(
        self,
        backbone,
        num_outputs: int = 65536,
        num_patch_outputs: int = 65536,
        koleo_weight: float = 0.1,
        koleo_epsilon: float = 1e-8,
        centering: str = "sinkhorn_knopp",
        teacher_temperature: float = 0.07,
        warmup_teacher_temperature: float = 0.04,
        patch_teacher_temperature: float = 0.07,
        warmup_patch_teacher_temperature: float = 0.04,
        base_momentum: float = 0.992,
        views=None,
        **kwargs,
    ):
        if float(koleo_weight) < 0:
            raise ValueError(f"dinov2.koleo_weight must be >= 0, got {koleo_weight}.")
        if float(koleo_epsilon) <= 0:
            raise ValueError(f"dinov2.koleo_epsilon must be > 0, got {koleo_epsilon}.")
        super().__init__(
            backbone, num_outputs=num_outputs, num_patch_outputs=num_patch_outputs,
            centering=centering, teacher_temperature=teacher_temperature,
            warmup_teacher_temperature=warmup_teacher_temperature,
            patch_teacher_temperature=patch_teacher_temperature,
            warmup_patch_teacher_temperature=warmup_patch_teacher_temperature,
            base_momentum=base_momentum, views=dinov2_views() if views is None else views,
            **kwargs)
        self.koleo_weight = float(koleo_weight)
        self.koleo_epsilon = float(koleo_epsilon)

    def class_token_regularizer(self, class_tokens):
        """`koleo_weight * sum over global views of KoLeo(class tokens)` over the global batch."""
        if not self.koleo_weight:
            return tf.zeros(()), {}
        koleo = tf.add_n([koleo_loss(tokens, self.koleo_epsilon) for tokens in class_tokens])
        return self.koleo_weight * koleo, {"koleo_loss": koleo}
