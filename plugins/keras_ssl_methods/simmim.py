"""SimMIM (Xie et al. 2022): predict the raw pixels of masked patches with a linear head.

A random 60% of the image is masked in square units of `mask_patch_size`
pixels (32 px at 224 px: 2 x 2 ViT patches of 16 px), drawn per image on the
coarse grid of those units and upsampled to the patch grid. Inside the
encoder each masked patch's embedding is replaced by a learned mask token
(the ViT's, `vit.mask_token = True`); the encoder runs on all N tokens. A
linear head (a Dense from the encoder's width to p * p * 3, SimMIM's 1 x 1
convolution and pixel shuffle) predicts every patch's pixels from its
encoded token, and the loss is the L1 distance on the masked pixels only, as
the paper's code computes it:

    loss = sum_{b, h, w, c} m_bhw |y_bhwc - t_bhwc| / (sum_{b, h, w} m_bhw + 1e-5) / 3.

The paper feeds the encoder images standardised by the ImageNet mean and
standard deviation and regresses those standardised pixels. keras-ssl's
encoder takes [0, 1] RGB (the export contract), so here the target alone is
standardised (`normalized_target`, default True): the loss weighs each
channel's error by 1 / std_c as the paper's does and has its scale. Only the
encoder is exported, with a `reconstruct` signature (`keras-ssl-reconstruct`).

The paper's recipe for ViT-B/16: 100 epochs at 224 px, AdamW at 8e-4 x
batch / 512 (betas 0.9, 0.999, weight decay 0.05), 10 warm-up epochs, random
resized crops of area 0.67-1 (aspect 3/4-4/3) and flips.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_ssl import Method
from keras_ssl.backbones import backbone_spec
from keras_ssl.backbones.vit import encode_tokens
from keras_ssl.toolkit.masking import check_mask_ratio, random_patch_mask, unpatchify
from keras_ssl_methods.mae import check_area_range, crop_and_flip, fixed_masks, mask_images

# ImageNet's per-channel mean and standard deviation of [0, 1] RGB (SimMIM's normalisation).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def masked_l1(predictions, targets, masked_pixels):
    """SimMIM's loss: `sum(|y - t| m) / (sum(m) + 1e-5) / C`, m counted once per pixel.

    Args:
      predictions, targets: `[B, H, W, C]` pixels.
      masked_pixels: `[B, H, W, 1]` 0/1, 1 where the pixel was masked.

    Returns:
      A float32 scalar.
    """
    error = tf.abs(tf.cast(predictions, tf.float32) - tf.cast(targets, tf.float32))
    masked_pixels = tf.cast(masked_pixels, tf.float32)
    channels = float(predictions.shape[-1])
    return tf.reduce_sum(error * masked_pixels) / (tf.reduce_sum(masked_pixels) + 1e-5) / channels


def upsample_mask(coarse, coarse_height: int, coarse_width: int, scale: int):
    """A mask `[h_c * w_c]` on the coarse grid as `[h_c s * w_c s]` on the patch grid (row-major)."""
    grid = tf.reshape(coarse, [coarse_height, 1, coarse_width, 1])
    grid = tf.tile(grid, [1, scale, 1, scale])
    return tf.reshape(grid, [coarse_height * scale * coarse_width * scale])


class SimMIM(Method):
    """Masked image modelling with a linear pixel head and an L1 loss on the masked pixels.

    Args:
      backbone: A `vit` backbone with a mask token (`vit.mask_token = True`),
        the encoder (the one exported).
      mask_ratio: Fraction of the mask units masked per image, in (0, 1)
        (0.6); ceil(units x ratio) are.
      mask_patch_size: Side of a mask unit in pixels (32), a multiple of the
        ViT's patch size; the images' side must be a multiple of it.
      normalized_target: Regress pixels standardised by ImageNet's mean and
        standard deviation (the paper's target; True), else [0, 1] pixels.
      area_range: Area of the random resized crop (0.67-1).
      flip: Random left-right flip.
      augmentation: An augmentation stack applied after crop and flip ("none").
      **kwargs: Passed to `keras_ssl.Method`.

    Example:

    >>> from keras_ssl.backbones import build_backbone
    >>> net = build_backbone("vit", widening_factor=1, depth=2, patch_size=4, image_size=16,
    ...                      mask_token=True)
    >>> simmim = SimMIM(net, mask_patch_size=8)
    >>> simmim.reconstruct(tf.zeros([2, 16, 16, 3]))["mask"].shape
    TensorShape([2, 16, 16, 1])
    """

    required_backbone = {"family": "vit", "mask_token": True}

    @classmethod
    def tiny_settings(cls):
        return dict(mask_patch_size=8)  # 2 x 2 units of 4-px patches on 16-px images

    def __init__(self, backbone, mask_ratio: float = 0.6, mask_patch_size: int = 32,
                 normalized_target: bool = True, area_range=(0.67, 1.0), flip: bool = True,
                 augmentation="none", **kwargs):
        super().__init__(backbone, augmentation=augmentation, **kwargs)
        if not 0.0 < float(mask_ratio) < 1.0:
            raise ValueError(f"simmim.mask_ratio must be in (0, 1), got {mask_ratio}; the "
                             f"paper masks 0.6.")
        spec = backbone_spec(backbone)
        self.patch_size = int(spec["patch_size"])
        self.image_size = int(spec["image_size"])
        if int(mask_patch_size) != mask_patch_size or mask_patch_size < 1 or (
                mask_patch_size % self.patch_size):
            raise ValueError(
                f"simmim.mask_patch_size ({mask_patch_size}) must be a multiple of the ViT's "
                f"patch size {self.patch_size}; bind it to e.g. {2 * self.patch_size}.")
        self.mask_ratio = float(mask_ratio)
        self.mask_patch_size = int(mask_patch_size)
        self.normalized_target = bool(normalized_target)
        self.area_range = check_area_range("simmim.area_range", area_range)
        self.flip = bool(flip)
        self.head = keras.layers.Dense(self.patch_size * self.patch_size * 3,
                                       name="simmim_pixel_head")

    # ------------------------------------------------------------- masks
    def _check_image_size(self, size: int) -> None:
        if size % self.mask_patch_size:
            raise ValueError(
                f"simmim.mask_patch_size ({self.mask_patch_size}) must divide the image side "
                f"{size}; bind keras_ssl.train.image_size to a multiple of it or change "
                f"simmim.mask_patch_size.")

    def check_training_setup(self, global_batch_size, image_size):
        del global_batch_size
        if image_size is not None:
            self._check_image_size(image_size)
            check_mask_ratio(self.mask_ratio, "simmim.mask_ratio",
                             (image_size // self.mask_patch_size) ** 2)

    def draw_mask(self, height: int, width: int) -> tf.Tensor:
        """One image's mask on its patch grid, `[h * w]` bool (inside `keras_ssl.random.seeded`)."""
        self._check_image_size(height)
        self._check_image_size(width)
        coarse_height, coarse_width = height // self.mask_patch_size, width // self.mask_patch_size
        check_mask_ratio(self.mask_ratio, "simmim.mask_ratio", coarse_height * coarse_width)
        # random_patch_mask keeps int(n (1 - r)), so it masks ceil(n r): SimMIM's count.
        _, coarse = random_patch_mask(coarse_height * coarse_width, self.mask_ratio)
        return upsample_mask(coarse, coarse_height, coarse_width,
                             self.mask_patch_size // self.patch_size)

    def preprocess(self, example):
        image = self.augment(crop_and_flip(example["image"], self.area_range, self.flip))
        return {"image": image, "masked": self.draw_mask(*image.shape[:2])}

    # ------------------------------------------------------------ the task
    def targets(self, images):
        """The pixels regressed, `[B, H, W, 3]`: standardised by ImageNet's statistics or not."""
        images = tf.cast(images, tf.float32)
        if self.normalized_target:
            return (images - IMAGENET_MEAN) / IMAGENET_STD
        return images

    def predict_patches(self, images, masked, training):
        """The head's `[B, N, p * p * 3]` for `images` with the `masked` patches replaced."""
        encoded = encode_tokens(self.backbone, images, masked=tf.cast(masked, tf.bool),
                                training=training)
        return tf.cast(self.head(encoded["patch_tokens"]), tf.float32)

    def predict_pixels(self, images, masked, training):
        """The head's prediction as images, `[B, H, W, 3]` (float32)."""
        height, width = images.shape[1] // self.patch_size, images.shape[2] // self.patch_size
        return unpatchify(self.predict_patches(images, masked, training), self.patch_size,
                          height, width)

    def pixel_mask(self, masked, height: int, width: int):
        """`[B, h * w]` patch flags as a `[B, h p, w p, 1]` float mask of pixels."""
        flags = tf.tile(tf.cast(masked, tf.float32)[:, :, None], [1, 1, self.patch_size ** 2])
        return unpatchify(flags, self.patch_size, height, width)

    def compute_pretext_loss(self, batch, training):
        images, masked = batch["image"], batch["masked"]
        predictions = self.predict_pixels(images, masked, training)
        mask = self.pixel_mask(masked, images.shape[1] // self.patch_size,
                               images.shape[2] // self.patch_size)
        loss = masked_l1(predictions, self.targets(images), mask)
        return loss, {"masked_l1": loss}

    # -------------------------------------------------------- the export
    def reconstruct(self, images):
        """Masked input, reconstruction and mask of `images` (`[B, H, W, 3]` in [0, 1]).

        As `keras_ssl_methods.mae.MAE.reconstruct`: images resized to the ViT's
        `image_size`, masks fixed by the images' pixels, the input's pixels
        at visible patches; predictions of a standardised target are mapped
        back with ImageNet's mean and standard deviation.
        """
        size = self.image_size
        images = tf.image.resize(tf.cast(images, tf.float32), [size, size], antialias=True)
        images = tf.clip_by_value(images, 0.0, 1.0)
        height, width = size // self.patch_size, size // self.patch_size
        masked = fixed_masks(images, lambda: self.draw_mask(size, size),
                             tf.TensorSpec([height * width], tf.bool))
        predictions = self.predict_pixels(images, masked, training=False)
        if self.normalized_target:
            predictions = predictions * IMAGENET_STD + IMAGENET_MEAN
        mask = self.pixel_mask(masked, height, width)
        reconstruction = images * (1.0 - mask) + predictions * mask
        return {"masked": mask_images(images, mask),
                "reconstruction": tf.clip_by_value(reconstruction, 0.0, 1.0), "mask": mask}

    def export_signatures(self):
        if not self.head.built:  # e.g. rebuilt from a checkpoint for keras-ssl-export
            self.reconstruct(tf.zeros([1, self.image_size, self.image_size, 3]))
        return {"reconstruct": self.reconstruct}, {"simmim_pixel_head": self.head}

    def export_metadata(self):
        return {"simmim": {"mask_ratio": self.mask_ratio, "mask_patch_size": self.mask_patch_size,
                           "patch_size": self.patch_size, "image_size": self.image_size,
                           "normalized_target": self.normalized_target}}
