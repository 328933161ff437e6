"""iBOT (Zhou et al. 2022): DINO on the class token plus masked-patch self-distillation.

DINO's student and momentum teacher (`keras_ssl_methods.dino`), on a ViT
with a learned mask token. Each global view v gets a block-wise mask m_v
(BEiT's blocks, drawn per image in `preprocess`); the student encodes the
global views with the masked patches replaced by the mask token, the local
views unmasked; the teacher encodes the global views unmasked. Two heads
(DINO's MLP -> l2-normalised bottleneck -> weight-normalised layer), one for
the class token and one for the patch tokens, each with its own centre:

    L_cls   = mean over pairs (t, s), t != s, of CE(P_t^cls, softmax(h(x_s^cls) / tau_s))
    L_patch = mean over global views v of mean_b [sum_n m_bn CE(P_vbn^patch,
              softmax(h'(x_vbn^patch) / tau_s)) / max(sum_n m_bn, 1)]
    L       = lambda_1 L_cls + lambda_2 L_patch      (lambda 1 each)

with P = softmax((teacher output - centre) / tau_t) (softmax centring) or
DINOv2's Sinkhorn-Knopp targets (`centering = "sinkhorn_knopp"`). Local
views enter the class-token loss only; a patch is distilled from the
teacher's token at the same position of the same, unmasked, view. tau_s =
0.1; tau_t = 0.04 (class; iBOT's recipe warms it up to 0.07) and 0.07
(patches); the teacher's momentum rises from 0.996 to 1.

Masking: an image's global view is masked with probability
`mask_probability`, at a ratio uniform in `mask_ratio_range`; the defaults
(0.5, (0.1, 0.5)) are iBOT's published recipe (`--pred_ratio 0 0.3
--pred_ratio_var 0 0.2`: a ratio of 0 or of 0.3 +- 0.2, chosen at random).
`mask_probability = 1.0, mask_ratio_range = (0.0, 0.3)` masks every view at
a ratio uniform in [0, 0.3].
"""

from __future__ import annotations

import tensorflow as tf

import keras_ssl.random
from keras_ssl.backbones import backbone_spec, output_dim
from keras_ssl.backbones.vit import encode_tokens
from keras_ssl.heads import uses_synchronized_bn
from keras_ssl.losses.masked_distillation import (
    CENTERINGS, cross_view_loss, masked_patch_loss, teacher_targets,
)
from keras_ssl.schedules import linear_warmup
from keras_ssl.toolkit.masking import block_mask, check_block_mask
from keras_ssl.augment.view_specs import multi_crop
from keras_ssl.testing.tiny import TINY_IMAGE_SIZE
from keras_ssl_methods.dino import DINO, dino_head


class IBOT(DINO):
    """Image BERT pre-training with an online tokenizer.

    Args:
      backbone: The student `vit` (built with `mask_token=True`; exported).
      num_outputs: K of the class-token head (8192 in iBOT).
      num_patch_outputs: K of the patch head (8192; with `shared_head` it must
        equal `num_outputs`).
      shared_head: One head for class and patch tokens (iBOT's ViT recipes);
        the default, separate heads, is DINOv2's.
      hidden_dim, bottleneck_dim, num_head_layers, head_batch_norm: Of both
        heads (see `DINO`).
      base_momentum: The teacher's momentum at the first step (0.996), rising to 1.
      student_temperature: tau_s (0.1).
      teacher_temperature: tau_t of the class token after the warm-up (0.04).
      warmup_teacher_temperature: tau_t of the class token at step 0 (0.04).
      patch_teacher_temperature: tau_t of the patch tokens after the warm-up (0.07).
      warmup_patch_teacher_temperature: Its value at step 0 (0.04; used only
        with `teacher_temperature_warmup_steps > 0`).
      teacher_temperature_warmup_steps: Length of both tau_t ramps (30 epochs in iBOT).
      center_momentum: Of both running centres (0.9).
      centering: `"softmax"` (DINO's centring, iBOT) or `"sinkhorn_knopp"`
        (DINOv2's, over the global batch; the centres are then unused).
      mask_ratio_range: `(low, high)`, the masked fraction of a masked view,
        uniform per view; 0 <= low <= high < 1.
      mask_probability: Chance that a global view is masked at all (0.5).
      min_block_patches: The smallest block of the block-wise mask (4).
      class_loss_weight: lambda_1 (1).
      patch_loss_weight: lambda_2 (1).
      views: `ViewSpec`s, the global views first (`multi_crop()` by default).
      num_global_views: How many of `views` are global (2): masked for the
        student, seen by the teacher.
      num_classes: Train an online linear probe (see `ContrastiveMethod`).
      **kwargs: Passed to `keras_ssl.Method`.

    Example:

    >>> from keras_ssl.backbones import build_backbone
    >>> net = build_backbone("vit", widening_factor=1, depth=2, patch_size=4, image_size=16,
    ...                      mask_token=True)
    >>> method = IBOT(net, **IBOT.tiny_settings())
    >>> example = {"image": tf.zeros([16, 16, 3]), "label": 0, "index": 0}
    >>> inputs = method.preprocess(example)
    >>> tuple(inputs["mask_0"].shape), inputs["mask_0"].dtype.name
    ((16,), 'bool')
    """

    required_backbone = {"family": "vit", "mask_token": True}

    @classmethod
    def tiny_settings(cls):
        # Multi-crop with two local views of half the tiny image (a 4 x 4 patch grid
        # for the global views, 2 x 2 for the local ones). Every global view masked
        # and a slower teacher and centres: with iBOT's 0.996 / 0.9 the few masked
        # patches and the moving targets let the tiny SGD run's loss rise.
        return dict(num_outputs=32, num_patch_outputs=32, hidden_dim=32, bottleneck_dim=16,
                    mask_probability=1.0, base_momentum=0.99, center_momentum=0.99,
                    views=multi_crop(num_local_views=2, local_size=TINY_IMAGE_SIZE // 2))

    def __init__(
        self,
        backbone,
        num_outputs: int = 8192,
        num_patch_outputs: int = 8192,
        shared_head: bool = False,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_head_layers: int = 3,
        head_batch_norm: bool = False,
        base_momentum: float = 0.996,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.04,
        warmup_teacher_temperature: float = 0.04,
        patch_teacher_temperature: float = 0.07,
        warmup_patch_teacher_temperature: float = 0.04,
        teacher_temperature_warmup_steps: int = 0,
        center_momentum: float = 0.9,
        centering: str = "softmax",
        mask_ratio_range=(0.1, 0.5),
        mask_probability: float = 0.5,
        min_block_patches: int = 4,
        class_loss_weight: float = 1.0,
        patch_loss_weight: float = 1.0,
        views=None,
        num_global_views: int = 2,
        num_classes: int | None = None,
        **kwargs,
    ):
        name = type(self).__name__.lower()
        self._check_settings(name, num_outputs, num_patch_outputs, shared_head, centering,
                             mask_ratio_range, mask_probability, min_block_patches,
                             class_loss_weight, patch_loss_weight)
        super().__init__(
            backbone, num_outputs=num_outputs, hidden_dim=hidden_dim,
            bottleneck_dim=bottleneck_dim, num_head_layers=num_head_layers,
            head_batch_norm=head_batch_norm, base_momentum=base_momentum,
            student_temperature=student_temperature, teacher_temperature=teacher_temperature,
            warmup_teacher_temperature=warmup_teacher_temperature,
            teacher_temperature_warmup_steps=teacher_temperature_warmup_steps,
            center_momentum=center_momentum, views=views, num_global_views=num_global_views,
            num_classes=num_classes, **kwargs)
        self.patch_teacher_temperature = patch_teacher_temperature
        self.warmup_patch_teacher_temperature = warmup_patch_teacher_temperature
        self.centering = centering
        self.mask_ratio_range = tuple(float(r) for r in mask_ratio_range)
        self.mask_probability = float(mask_probability)
        self.min_block_patches = int(min_block_patches)
        self.class_loss_weight = float(class_loss_weight)
        self.patch_loss_weight = float(patch_loss_weight)
        self.shared_head = bool(shared_head)
        self.patch_size = backbone_spec(backbone)["patch_size"]
        for i, spec in enumerate(self.views[:num_global_views]):
            if spec.size is not None:
                self._check_grid(spec.size, f"views[{i}]")
        if self.shared_head:
            self.patch_head, self.teacher_patch_head = self.head, self.teacher_head
        else:
            self.patch_head = dino_head(
                output_dim(backbone), hidden_dim, bottleneck_dim, num_patch_outputs,
                num_head_layers, uses_synchronized_bn(backbone), head_batch_norm,
                name="patch_head")
            self.teacher_patch_head = self.momentum_copy(self.patch_head)
        self.patch_center = self.add_weight(
            shape=(num_patch_outputs,), initializer="zeros", trainable=False, name="patch_center")

    @staticmethod
    def _check_settings(name, num_outputs, num_patch_outputs, shared_head, centering,
                        mask_ratio_range, mask_probability, min_block_patches,
                        class_loss_weight, patch_loss_weight):
        if centering not in CENTERINGS:
            raise ValueError(f"{name}.centering: unknown centering {centering!r}; choose one of "
                             f"{list(CENTERINGS)}.")
        ratios = tuple(mask_ratio_range) if isinstance(mask_ratio_range, (tuple, list)) else ()
        if len(ratios) != 2 or not 0.0 <= float(ratios[0]) <= float(ratios[1]) < 1.0:
            raise ValueError(f"{name}.mask_ratio_range must be (low, high) with 0 <= low <= high "
                             f"< 1, got {mask_ratio_range!r}; bind e.g. "
                             f"{name}.mask_ratio_range = (0.1, 0.5).")
        if not 0.0 <= float(mask_probability) <= 1.0:
            raise ValueError(f"{name}.mask_probability must be in [0, 1], got {mask_probability}.")
        if int(min_block_patches) < 1:
            raise ValueError(f"{name}.min_block_patches must be >= 1, got {min_block_patches}.")
        if shared_head and num_patch_outputs != num_outputs:
            raise ValueError(f"{name}.shared_head: one head has one width; set "
                             f"{name}.num_patch_outputs = {num_outputs} (num_outputs) or "
                             f"{name}.shared_head = False.")
        for setting, weight in (("class_loss_weight", class_loss_weight),
                                ("patch_loss_weight", patch_loss_weight)):
            if float(weight) < 0:
                raise ValueError(f"{name}.{setting} must be >= 0, got {weight}.")

    def _check_grid(self, size: int, what: str) -> None:
        grid = size // self.patch_size
        check_block_mask(grid, grid, self.min_block_patches,
                         setting=f"{type(self).__name__.lower()}.min_block_patches ({what}: "
                                 f"{size} px, {self.patch_size}-px patches)")

    def check_training_setup(self, global_batch_size, image_size):
        super().check_training_setup(global_batch_size, image_size)
        if image_size is not None and any(s.size is None for s in self.views[:self.num_global_views]):
            self._check_grid(image_size, "the global views at keras_ssl.train.image_size")

    # ------------------------------------------------------------- inputs
    def draw_mask(self, grid: int) -> tf.Tensor:
        """One global view's `[grid * grid]` bool block mask (none with 1 - `mask_probability`)."""
        masked = keras_ssl.random.uniform() < self.mask_probability
        low, high = self.mask_ratio_range
        ratio = keras_ssl.random.uniform([], low, high) if high > low else tf.constant(low)
        return block_mask(grid, grid, tf.where(masked, ratio, 0.0), self.min_block_patches)

    def preprocess(self, example):
        inputs = super().preprocess(example)
        for i in range(self.num_global_views):
            size = inputs[f"view_{i}"].shape[0]
            if size is None:
                raise ValueError(f"{type(self).__name__.lower()}: the global view {i} has no static "
                                 f"size; bind keras_ssl.train.image_size or the view's size.")
            inputs[f"mask_{i}"] = self.draw_mask(size // self.patch_size)
        return inputs

    # --------------------------------------------------------------- loss
    def patch_teacher_temperature_now(self) -> tf.Tensor:
        """The patch tokens' tau_t at the current step."""
        step = self.optimizer.iterations if getattr(self, "optimizer", None) is not None else 0
        return linear_warmup(self.warmup_patch_teacher_temperature, self.patch_teacher_temperature,
                             step, self.teacher_temperature_warmup_steps)

    def encode_global_views(self, network, views, masks, training):
        """`(class tokens, patch tokens)` per global view, one `encode_tokens` call per size.

        Args:
          network: The student or the teacher backbone.
          views: The global views.
          masks: Their `[B, N]` masks, or None (the teacher: nothing masked).
          training: Passed to the layers.
        """
        groups = {}
        for i, view in enumerate(views):
            groups.setdefault(tuple(view.shape[1:3]), []).append(i)
        class_tokens, patch_tokens = [None] * len(views), [None] * len(views)
        for members in groups.values():
            joined = tf.concat([views[i] for i in members], axis=0)
            masked = None if masks is None else tf.concat([masks[i] for i in members], axis=0)
            tokens = encode_tokens(network, joined, masked=masked, training=training)
            parts = zip(tf.split(tokens["class_token"], len(members)),
                        tf.split(tokens["patch_tokens"], len(members)))
            for i, (cls, patches) in zip(members, parts):
                class_tokens[i], patch_tokens[i] = cls, patches
        return class_tokens, patch_tokens

    @staticmethod
    def _per_token(head, tokens, training):
        """`head` on every token of `[B, N, C]` -> `[B, N, K]`."""
        shape = tf.shape(tokens)
        flat = head(tf.reshape(tokens, [-1, tokens.shape[-1]]), training=training)
        return tf.reshape(flat, tf.concat([shape[:2], [flat.shape[-1]]], 0))

    def class_token_regularizer(self, class_tokens):
        """An extra loss on the student's class tokens of the global views (none; DINOv2: KoLeo)."""
        del class_tokens
        return tf.zeros(()), {}

    def compute_pretext_loss(self, batch, training):
        views = self.view_batches(batch)
        g = self.num_global_views
        masks = [tf.cast(batch[f"mask_{i}"], tf.bool) for i in range(g)]
        student_class, student_patches = self.encode_global_views(
            self.backbone, views[:g], masks, training)
        class_features = student_class + self.encode_views(self.backbone, views[g:], training)
        student_logits = [self.head(f, training=training) for f in class_features]
        student_patch_logits = [self._per_token(self.patch_head, p, training)
                                for p in student_patches]
        # The teacher sees every global view whole.
        teacher_class, teacher_patches = self.encode_global_views(
            self.teacher_backbone, views[:g], None, training)
        teacher_logits = tf.stop_gradient(tf.concat(
            [self.teacher_head(f, training=training) for f in teacher_class], 0))
        teacher_patch_logits = tf.stop_gradient(tf.concat(
            [self._per_token(self.teacher_patch_head, p, training) for p in teacher_patches], 0))

        temperature = self.teacher_temperature_now()
        class_targets = tf.split(
            teacher_targets(teacher_logits, self.centering, self.center, temperature), g)
        patch_shape = tf.shape(teacher_patch_logits)
        flat_patches = tf.reshape(teacher_patch_logits, [-1, teacher_patch_logits.shape[-1]])
        patch_targets = tf.reshape(
            teacher_targets(flat_patches, self.centering, self.patch_center,
                            self.patch_teacher_temperature_now(),
                            weights=tf.reshape(tf.concat(masks, 0), [-1])),
            patch_shape)
        patch_targets = tf.split(patch_targets, g)

        class_loss = cross_view_loss(student_logits, class_targets, self.student_temperature)
        patch_loss = tf.add_n([
            masked_patch_loss(s, t, m, self.student_temperature)
            for s, t, m in zip(student_patch_logits, patch_targets, masks)]) / g
        regularizer, regularizer_metrics = self.class_token_regularizer(student_class)
        loss = (self.class_loss_weight * class_loss + self.patch_loss_weight * patch_loss
                + regularizer)
        if self.centering == "softmax":
            self.save_for_update(teacher=teacher_logits, patch_teacher=flat_patches)
        return self.with_probe_and_metrics(loss, batch, class_features[0], class_targets[0], {
            "class_loss": class_loss,
            "patch_loss": patch_loss,
            "masked_fraction": tf.reduce_mean(tf.cast(tf.stack(masks), tf.float32)),
            **regularizer_metrics,
        })

    def after_update(self, saved):
        """Moves the teacher, and with softmax centring both centres."""
        super().after_update(saved)
        if "patch_teacher" in saved:
            self.move_center(self.patch_center, saved["patch_teacher"])
