"""Augmentation stacks: per-image random transforms applied inside tf.data.

Each stack maps one float32 image `[H, W, 3]` in [0, 1] to an image of the
same shape and range. They run before batching (in `Dataset.map`), so every
image draws its own random parameters -- unlike Keras' preprocessing layers,
some of which draw one set per batch. Stacks are registered in the
`keras_ssl.augmentations` entry-point group and their parameters are
gin-bindable (`crop_flip.padding = 4`, `simclr_imagenet.color_jitter_strength = 0.5`).

Stacks: `none`, `flip`, `crop_flip`, `simclr_imagenet` (Chen et al. 2020: Inception
crop, flip, colour jitter, grayscale, Gaussian blur), `simclr_cifar` (SimCLR's
CIFAR stack: jitter strength 0.5, no blur), `moco_v2` (the SimCLR-style stack of MoCo v2, crop
area from 0.2), `randaugment` (Model Garden's RandAugment + crop + flip).
`keras-ssl-show-views` draws a contact sheet of a stack's views.

Every draw is stateless and comes from `keras_ssl.random`: inside
`keras_ssl.random.seeded(seed)` (which `Method.make_dataset` sets up per
example) a stack gives the same view for the same seed, eagerly or in
tf.data. `randaugment` is the exception: it runs Model Garden's RandAugment,
whose draws are stateful, so training with `keras_ssl.train.deterministic =
True` refuses it.

The other stacks are `keras_ssl.augment.stacks.Stack`s: an image draws all
its parameters first (two seeds: the crop box's, and one vector of uniform
numbers for the rest, whatever is applied), then one branch-free batched
function applies them -- to this one image here, or, with
`keras_ssl.train.augment_on_device = True`, to the whole batch in the
training step (docs/scaling.md). A transform an image does not draw runs
with identity parameters rather than behind a `tf.cond`, which in tf.data
costs more than the transform itself at small sizes. The per-image mirror of
`flip` and `crop_flip` is the exception: there a branch costs less than a
select broadcast over the image (benchmarks/augmentation.py).

The modules of the package:

- `ops`: the batched image ops, each image of a batch its own parameters;
- `stacks`: the `Stack`s, their per-image draws and batched application;
- `deferred`: the views drawn in tf.data and applied per group or on the
  device (`DeferredViews`, what `Method.make_dataset` uses);
- `view_specs`: `ViewSpec`, one view's settings, and multi-crop, for
  methods with several differently drawn views (also importable as
  `keras_ssl.views`);
- `contact_sheet`: the views drawn side by side (`keras-ssl-show-views`).
"""

from __future__ import annotations

import tensorflow as tf

from keras_ssl import random
from keras_ssl.augment import deferred, ops, stacks


def identity(image: tf.Tensor) -> tf.Tensor:
    """Returns the image unchanged (the `none` stack)."""
    return image


def random_flip(image: tf.Tensor) -> tf.Tensor:
    """Flips left-right with probability 0.5 (the `flip` stack).

    Args:
      image: float32 `[H, W, 3]` with a static shape.

    Returns:
      The image, possibly mirrored.
    """
    return deferred.run(stacks.FlipStack(), image)


def random_crop_flip(image: tf.Tensor, padding: int = 4) -> tf.Tensor:
    """Pads by reflection, crops back to size at a random offset, flips.

    The standard CIFAR-style augmentation (the `crop_flip` stack).

    Args:
      image: float32 `[H, W, 3]` with a static shape.
      padding: Pixels of reflection padding on each side.

    Returns:
      The augmented image, same shape.

    Example:

    >>> out = random_crop_flip(tf.zeros((32, 32, 3)), padding=4)
    >>> out.shape
    TensorShape([32, 32, 3])
    """
    return deferred.run(stacks.CropFlipStack(padding), image)


# ----------------------------------------------------------------- single ops
def inception_crop(
    image: tf.Tensor,
    area_range=(0.08, 1.0),
    aspect_ratio_range=(3 / 4, 4 / 3),
    max_attempts: int | None = None,
    size: int | None = None,
    crop_sampler: str = "tensorflow",
) -> tf.Tensor:
    """Random crop of a random area and aspect ratio, resized to `size` (or back to the input's).

    The "Inception" crop (`RandomResizedCrop`): the box is drawn per image by
    `crop_sampler` (`stacks.draw_crop_box`: TensorFlow's
    `sample_distorted_bounding_box`, or torchvision's draw). The crop is resized
    bilinearly (`tf.image.crop_and_resize`, which a batch of images with
    their own boxes shares on an accelerator).

    Args:
      image: float32 `[H, W, 3]` with a static shape.
      area_range: Fraction of the image area the crop covers.
      aspect_ratio_range: Width / height of the crop.
      max_attempts: Draws before the sampler's fallback; None: its own number.
      size: Side of the square output (multi-crop's global and local views);
        None keeps the input's height and width.
      crop_sampler: `tensorflow` or `torchvision` (`stacks.CROP_SAMPLERS`).

    Returns:
      float32 `[H, W, 3]` (or `[size, size, 3]`) in the input's range.
    """
    image = tf.convert_to_tensor(image, tf.float32)
    box = stacks.draw_crop_box(image.shape, area_range, aspect_ratio_range, max_attempts,
                               sampler=crop_sampler)
    output = None if size is None else (size, size)
    view = ops.crop_resize(image[None], box[None], size=output)[0]
    return tf.ensure_shape(view, image.shape if size is None else [size, size, image.shape[-1]])


def color_jitter(
    image: tf.Tensor, strength: float = 1.0, random_order: bool = True, factors=None
) -> tf.Tensor:
    """SimCLR's colour distortion with strength s, clipped to [0, 1] after each transform.

    Brightness, contrast and saturation factors are drawn from
    `[max(0, 1 - 0.8 s), 1 + 0.8 s]` and the hue shift from `[-0.2 s, 0.2 s]`
    (torchvision's `ColorJitter(0.8s, 0.8s, 0.8s, 0.2s)`). The four are
    linear maps of the colour, applied as one matrix and clipped once
    (`keras_ssl.augment.ops.color_jitter`), so they commute. `factors`
    sets the four ranges directly (BYOL's and DINO's `(0.4, 0.4, 0.2, 0.1)`).

    Args:
      image: float32 `[H, W, 3]` in [0, 1].
      strength: s.
      random_order: Kept for compatibility; it changes nothing, since the
        transforms commute when clipped once (torchvision shuffles them
        because it clips after each).
      factors: `(brightness, contrast, saturation, hue)` ranges replacing
        those of `strength`.

    Returns:
      The jittered image.
    """
    del random_order
    if factors is not None:
        b, c, s, h = (float(f) for f in factors)
        low = tf.constant([max(0.0, 1.0 - b), max(0.0, 1.0 - c), max(0.0, 1.0 - s), -h])
        high = tf.constant([1.0 + b, 1.0 + c, 1.0 + s, h])
        drawn = low + (high - low) * random.uniform([4])
        image = tf.convert_to_tensor(image, tf.float32)
        return ops.color_jitter(image[None], drawn[None])[0]
    stack = stacks.SimCLRStack(
        crop=False, flip=False, color_jitter_strength=strength, color_jitter_probability=1.0,
        grayscale_probability=0.0, blur_probability=0.0,
    )
    return stacks.apply_now(stack, image)


def to_grayscale(image: tf.Tensor) -> tf.Tensor:
    """Luma (ITU-R BT.601) replicated to three channels, for `[..., H, W, 3]`."""
    gray = tf.image.rgb_to_grayscale(image)
    return tf.concat([gray, gray, gray], axis=-1)


def gaussian_blur(image: tf.Tensor, sigma, kernel_size: int | None = None) -> tf.Tensor:
    """Separable Gaussian blur with reflection padding.

    Args:
      image: float32 `[H, W, 3]` with a static height.
      sigma: Standard deviation in pixels (a scalar tensor or float).
      kernel_size: Odd kernel size; default about 10% of the height
        (`2 * (H // 20) + 1`). A size of 1 leaves the image as is.

    Returns:
      The blurred image.
    """
    if kernel_size is None:
        kernel_size = 2 * (int(image.shape[0]) // 20) + 1
    radius = kernel_size // 2
    if radius < 1:
        return image
    x = tf.cast(tf.range(-radius, radius + 1), tf.float32)
    sigma = tf.cast(sigma, tf.float32)
    kernel = tf.exp(-tf.square(x) / (2.0 * tf.square(sigma)))
    kernel = kernel / tf.reduce_sum(kernel)
    channels = 3
    horizontal = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, channels, 1])
    vertical = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])
    padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], "REFLECT")
    blurred = tf.nn.depthwise_conv2d(padded, horizontal, [1, 1, 1, 1], "VALID")
    blurred = tf.nn.depthwise_conv2d(blurred, vertical, [1, 1, 1, 1], "VALID")
    return tf.ensure_shape(blurred[0], image.shape)


def solarize(image: tf.Tensor, threshold: float = 0.5) -> tf.Tensor:
    """Inverts the values at or above `threshold` (`x -> 1 - x`).

    Args:
      image: float32 `[H, W, 3]` in [0, 1].
      threshold: Values below it are kept.

    Returns:
      The solarized image.
    """
    image = tf.convert_to_tensor(image, tf.float32)
    return tf.where(image < threshold, image, 1.0 - image)


# --------------------------------------------------------------------- stacks
def simclr_augment(
    image: tf.Tensor,
    crop: bool = True,
    area_range=(0.08, 1.0),
    aspect_ratio_range=(3 / 4, 4 / 3),
    flip: bool = True,
    color_jitter_strength: float = 1.0,
    color_jitter_probability: float = 0.8,
    grayscale_probability: float = 0.2,
    blur_probability: float = 0.5,
    blur_sigma=(0.1, 2.0),
    crop_sampler: str = "tensorflow",
) -> tf.Tensor:
    """The SimCLR view (the `simclr_imagenet` stack), drawn independently per image.

    Inception crop resized back to size, left-right flip, colour jitter with
    probability `color_jitter_probability` (see `color_jitter`), grayscale with
    probability `grayscale_probability`, Gaussian blur with probability
    `blur_probability` and sigma uniform in `blur_sigma` (kernel ~10% of the
    image size).

    Args:
      image: float32 `[H, W, 3]` in [0, 1] with a static shape.
      crop: Apply the Inception crop.
      area_range: Crop area fraction range.
      aspect_ratio_range: Crop aspect ratio range.
      flip: Random left-right flip.
      color_jitter_strength: s of `color_jitter`.
      color_jitter_probability: Chance of jittering.
      grayscale_probability: Chance of grayscale.
      blur_probability: Chance of blurring (0 disables blur).
      blur_sigma: (min, max) blur sigma in pixels.
      crop_sampler: How the crop box is drawn: `tensorflow` (SimCLR's code,
        the default) or `torchvision` (the PyTorch libraries'); see
        `stacks.draw_crop_box`.

    Returns:
      float32 `[H, W, 3]` in [0, 1].
    """
    stack = stacks.SimCLRStack(
        crop=crop, area_range=area_range, aspect_ratio_range=aspect_ratio_range, flip=flip,
        color_jitter_strength=color_jitter_strength,
        color_jitter_probability=color_jitter_probability,
        grayscale_probability=grayscale_probability, blur_probability=blur_probability,
        blur_sigma=blur_sigma, crop_sampler=crop_sampler,
    )
    return deferred.run(stack, image)


def simclr_cifar_augment(
    image: tf.Tensor,
    area_range=(0.08, 1.0),
    color_jitter_strength: float = 0.5,
    color_jitter_probability: float = 0.8,
    grayscale_probability: float = 0.2,
    crop_sampler: str = "tensorflow",
) -> tf.Tensor:
    """SimCLR's CIFAR view (the `simclr_cifar` stack): s = 0.5, no blur.

    The arguments are `simclr_augment`'s.
    """
    return simclr_augment(
        image,
        area_range=area_range,
        color_jitter_strength=color_jitter_strength,
        color_jitter_probability=color_jitter_probability,
        grayscale_probability=grayscale_probability,
        blur_probability=0.0,
        crop_sampler=crop_sampler,
    )


def moco_v2_augment(
    image: tf.Tensor,
    area_range=(0.2, 1.0),
    color_jitter_strength: float = 1.0,
    color_jitter_probability: float = 0.8,
    grayscale_probability: float = 0.2,
    blur_probability: float = 0.5,
    blur_sigma=(0.1, 2.0),
    crop_sampler: str = "tensorflow",
) -> tf.Tensor:
    """MoCo v2's view (the `moco_v2` stack): the SimCLR stack, crop area from 0.2.

    As in the MoCo v2 code shown in the CVPR 2020 tutorial:
    `RandomResizedCrop(scale=(0.2, 1.))`, `ColorJitter(0.8, 0.8, 0.8, 0.2)`
    with p=0.8, grayscale p=0.2, blur sigma 0.1-2 with p=0.5, flip. The crop
    box is TensorFlow's draw unless `crop_sampler='torchvision'` (the MoCo
    code's own); the other arguments are `simclr_augment`'s.
    """
    return simclr_augment(
        image,
        area_range=area_range,
        color_jitter_strength=color_jitter_strength,
        color_jitter_probability=color_jitter_probability,
        grayscale_probability=grayscale_probability,
        blur_probability=blur_probability,
        blur_sigma=blur_sigma,
        crop_sampler=crop_sampler,
    )


def randaugment(
    image: tf.Tensor,
    num_layers: int = 2,
    magnitude: float = 10.0,
    crop: bool = True,
    area_range=(0.08, 1.0),
    exclude_ops=None,
) -> tf.Tensor:
    """Inception crop, flip, then Model Garden's RandAugment (the `randaugment` stack).

    Model Garden's cutout (a square of side `2 * 40` px) and translation (up
    to 100 px) are sized for 224-px ImageNet images; here both scale with the
    image (`40 * H / 224`, `100 * H / 224`), or a 64-px image would be wholly
    cut out to grey.

    Uses `official.vision.ops.augment.RandAugment` (it imports and runs with
    Keras 3 / TF 2.20), which works on uint8 images: the image is quantised
    to 8 bits around it.

    Args:
      image: float32 `[H, W, 3]` in [0, 1].
      num_layers: Operations applied per image.
      magnitude: Their strength (0-30, 10 is the paper's ImageNet setting).
      crop: Apply the Inception crop first.
      area_range: Crop area fraction range.
      exclude_ops: RandAugment op names to leave out (e.g. `["Cutout"]`).

    Returns:
      float32 `[H, W, 3]` in [0, 1].
    """
    from official.vision.ops.augment import RandAugment

    image = tf.convert_to_tensor(image, tf.float32)
    shape = image.shape
    if crop:
        image = inception_crop(image, area_range)
    # Applied here even when views are augmented on the device: RandAugment is not batched.
    image = stacks.apply_now(stacks.FlipStack(), image)
    quantised = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0), tf.uint8)
    scale = float(shape[0] or 224) / 224.0
    distorted = RandAugment(
        num_layers=num_layers,
        magnitude=magnitude,
        cutout_const=max(1.0, round(40.0 * scale)),
        translate_const=100.0 * scale,
        exclude_ops=list(exclude_ops) if exclude_ops else None,
    ).distort(quantised)
    return tf.ensure_shape(tf.cast(distorted, tf.float32) / 255.0, shape)


def build_augmentation(name_or_fn):
    """Returns the stack registered as `name_or_fn`, or the callable itself."""
    if callable(name_or_fn):
        return name_or_fn
    from keras_ssl.registry import AUGMENTATIONS

    return AUGMENTATIONS.get(name_or_fn)
