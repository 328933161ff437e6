"""Augmentation stacks as per-image parameter draws plus one batched application.

Every registered stack except `randaugment` is a `Stack`: `draw(shape)` draws
one image's parameters (crop box, flip, jitter factors, grayscale,
blur sigma) through `keras_ssl.random`, and `apply(images, params)` applies a
batch of images their own parameters at once with the ops of
`keras_ssl.augment.ops` (a transform that is not drawn runs with identity
parameters instead of behind a branch).

Called by hand, the stacks of `keras_ssl.augment` are `apply_now(stack,
image)`: `apply(image[None], draw(...))[0]`. In training, `Method.make_dataset`
defers the application (`keras_ssl.augment.deferred`) to groups of images in
tf.data or to the training step on the accelerator. Every path runs the same
code, so a view is the same whichever path makes it.

Example:

>>> stack = SimCLRStack()
>>> params = stack.draw((32, 32, 3))
>>> sorted(params)
['blur_sigma', 'box', 'grayscale', 'jitter']
>>> stack.apply(tf.zeros([1, 32, 32, 3]), {k: v[None] for k, v in params.items()}).shape
TensorShape([1, 32, 32, 3])
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_ssl import random
from keras_ssl.augment import ops
from keras_ssl.config import ConfigError


# How a crop box is drawn: `tensorflow` is `tf.image.sample_distorted_bounding_box`
# (SimCLR's and MoCo's TensorFlow code), `torchvision` is `RandomResizedCrop`'s
# draw (the PyTorch libraries'). With area_range (0.08, 1) and aspect ratio
# (3/4, 4/3) the first's crops are smaller: mean area 0.41 of the image against
# 0.49 (docs/contrastive.md, "Crop samplers").
CROP_SAMPLERS = ("tensorflow", "torchvision")
# Draws before the fallback when `max_attempts` is None, per sampler.
_DEFAULT_ATTEMPTS = {"tensorflow": 100, "torchvision": 10}


def check_crop_sampler(sampler: str, setting: str = "crop_sampler") -> str:
    """Returns `sampler` if it is one of `CROP_SAMPLERS`.

    Raises:
      ConfigError: naming `setting` and the choices (a ValueError; the
        binaries print it as one line, as any refused binding).
    """
    if sampler not in CROP_SAMPLERS:
        raise ConfigError(
            f"{setting}={sampler!r} is not a crop sampler; use one of {', '.join(CROP_SAMPLERS)}")
    return sampler


def draw_crop_box(shape, area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3),
                  max_attempts: int | None = None, flip=None, seed=None,
                  sampler: str = "tensorflow") -> tf.Tensor:
    """One Inception-crop box, for `ops.crop_resize`.

    Two samplers, both in whole pixels:

    - `tensorflow`: `tf.image.stateless_sample_distorted_bounding_box`, the
      draw of SimCLR's TensorFlow code. The aspect ratio is uniform and the
      crop's height uniform between the heights of the smallest and the
      largest area, so small crops are likelier than their share of the area
      range; the whole image when no box fits after `max_attempts` (100).
    - `torchvision`: `RandomResizedCrop`'s draw: area uniform in `area_range`,
      log aspect ratio uniform, the first of `max_attempts` (10) draws that
      fits; else the central crop of the whole height or width, its aspect
      ratio clamped to the range.

    Args:
      shape: The image's static `(H, W, C)`.
      area_range: Fraction of the image area the crop covers.
      aspect_ratio_range: Width / height of the crop.
      max_attempts: Draws before the fallback; None: the sampler's own number.
      flip: Optional bool scalar: swap x1 and x2, which mirrors the crop.
      seed: The `[2]` seed of the draw; default `keras_ssl.random.next_seed()`.
      sampler: One of `CROP_SAMPLERS`.

    Returns:
      float32 `[4]`: `(y1, x1, y2, x2)`, the centres of the crop's corner pixels.

    Example:

    >>> box = draw_crop_box((32, 32, 3), sampler="torchvision", seed=tf.constant([0, 1]))
    >>> box.shape
    TensorShape([4])
    """
    check_crop_sampler(sampler)
    height, width = int(shape[0]), int(shape[1])
    attempts = _DEFAULT_ATTEMPTS[sampler] if max_attempts is None else int(max_attempts)
    seed = random.next_seed() if seed is None else seed
    if sampler == "torchvision":
        corners = _torchvision_crop(height, width, area_range, aspect_ratio_range, attempts, seed)
        return _box(corners, (height, width), flip)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.constant([height, width, int(shape[2])], tf.int32),
        seed=seed,
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
        min_object_covered=float(area_range[0]),
        aspect_ratio_range=tuple(float(a) for a in aspect_ratio_range),
        area_range=tuple(float(a) for a in area_range),
        max_attempts=attempts,
        use_image_if_no_bounding_boxes=True,
    )
    return _box(tf.concat([begin, begin + size - 1], 0), (height, width), flip)


def _torchvision_crop(height, width, area_range, aspect_ratio_range, attempts, seed):
    """`RandomResizedCrop`'s box as `[y0, x0, _, y1, x1, _]` pixel corners (see `draw_crop_box`).

    All attempts are drawn at once and the first that fits is taken, which
    is the same box as drawing them one by one.
    """
    u = tf.random.stateless_uniform([4, attempts], seed, dtype=tf.float64)
    area = height * width * (area_range[0] + (area_range[1] - area_range[0]) * u[0])
    log_low, log_high = np.log(aspect_ratio_range[0]), np.log(aspect_ratio_range[1])
    ratio = tf.exp(log_low + (log_high - log_low) * u[1])
    # Round half to even, as Python's round() in torchvision.
    w = tf.cast(tf.round(tf.sqrt(area * ratio)), tf.int32)
    h = tf.cast(tf.round(tf.sqrt(area / ratio)), tf.int32)
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    fallback = _central_crop_size(height, width, aspect_ratio_range)
    found = tf.reduce_any(fits)
    crop_h = tf.where(found, h[first], fallback[0])
    crop_w = tf.where(found, w[first], fallback[1])
    # torch.randint(0, n + 1): uniform over the offsets; the central one on fallback.
    top = tf.where(found, tf.cast(u[2, first] * tf.cast(height - crop_h + 1, tf.float64), tf.int32),
                   (height - crop_h) // 2)
    left = tf.where(found, tf.cast(u[3, first] * tf.cast(width - crop_w + 1, tf.float64), tf.int32),
                    (width - crop_w) // 2)
    zero = tf.zeros([], tf.int32)
    return tf.stack([top, left, zero, top + crop_h - 1, left + crop_w - 1, zero])


def _central_crop_size(height, width, aspect_ratio_range):
    """torchvision's fallback `(h, w)`: the whole image, its aspect ratio clamped to the range."""
    ratio = width / height
    if ratio < min(aspect_ratio_range):
        return int(round(width / min(aspect_ratio_range))), width
    if ratio > max(aspect_ratio_range):
        return height, int(round(height * max(aspect_ratio_range)))
    return height, width


def _box(corners, size, flip):
    """`[y0, x0, _, y1, x1, _]` pixel corners -> a normalised box, mirrored where `flip`."""
    index = tf.constant([0, 1, 3, 4])
    if flip is not None:
        index = tf.where(flip, tf.constant([0, 4, 3, 1]), index)
    scale = 1.0 / np.array([max(size[0] - 1, 1), max(size[1] - 1, 1)] * 2, np.float32)
    return tf.cast(tf.gather(corners, index), tf.float32) * scale


def crop_area_and_aspect(boxes: tf.Tensor, shape) -> tuple[tf.Tensor, tf.Tensor]:
    """The area fraction and aspect ratio (width / height) of `draw_crop_box` boxes `[N, 4]`."""
    height, width = int(shape[0]), int(shape[1])
    rows = (boxes[:, 2] - boxes[:, 0]) * max(height - 1, 1) + 1.0
    cols = tf.abs(boxes[:, 3] - boxes[:, 1]) * max(width - 1, 1) + 1.0
    return rows * cols / float(height * width), cols / rows


class Stack:
    """An augmentation stack: per-image `draw` and batched `apply`.

    Attributes:
      batch_in_tf_data: Whether tf.data applies it in batches (see
        `keras_ssl.augment.deferred.DeferredViews`). Stacks of a few cheap
        ops run faster per image: batching, unbatching and the batched
        kernels cost them more than the per-op overhead they save.
    """

    batch_in_tf_data = True

    def draw(self, shape) -> dict:
        """One image's parameters, drawn through `keras_ssl.random`.

        Args:
          shape: The image's static `(H, W, C)`.

        Returns:
          A dict of tensors (batched by tf.data like any input).
        """
        raise NotImplementedError

    def apply(self, images: tf.Tensor, params: dict) -> tf.Tensor:
        """Applies `params` (each with a leading batch dimension) to `images` `[B, H, W, 3]`."""
        raise NotImplementedError

    def apply_image(self, image: tf.Tensor, params: dict) -> tf.Tensor:
        """Applies one image's `params` to `image` `[H, W, 3]`: `apply` on a batch of one.

        Stacks applied per image in tf.data (`batch_in_tf_data` False) override
        it with fewer ops; the view must equal `apply`'s.
        """
        batch = {name: value[None] for name, value in params.items()}
        return self.apply(image[None], batch)[0]


class FlipStack(Stack):
    """Left-right flip with probability 0.5 (the `flip` stack)."""

    batch_in_tf_data = False

    def draw(self, shape):
        return {"flip": random.uniform() < 0.5}

    def apply(self, images, params):
        return ops.flip(images, params["flip"])

    def apply_image(self, image, params):
        return ops.flip_image(image, params["flip"])


class CropFlipStack(Stack):
    """Reflection padding, a crop back to size at a random offset, a flip (`crop_flip`).

    Its parameters are the crop's begin in the padded image and the flip, so
    that the per-image path of tf.data is a slice and a reverse; the batched
    path turns them into boxes for one `crop_and_resize`.
    """

    batch_in_tf_data = False

    def __init__(self, padding: int = 4):
        self.padding = int(padding)
        offsets = 2 * self.padding + 1
        # u -> the slice's [y, x, channel] begin: offsets 0..2p, and channel 0
        # (its u is the flip's, multiplied by 0), so the begin is one vector op.
        # u < 1 in float32, and u * n rounds below n for any integer n < 2**24,
        # so the truncation never reaches n and needs no clip.
        self._begin_scale = np.array([offsets, offsets, 0], np.float32)

    def draw(self, shape):
        u = random.uniform([3])
        return {"begin": tf.cast(u * self._begin_scale, tf.int32), "flip": u[2] < 0.5}

    def apply(self, images, params):
        p = self.padding
        height, width = ops.shape_list(images)[1:3]
        padded = tf.pad(images, [[0, 0], [p, p], [p, p], [0, 0]], "REFLECT")
        # Corners at pixel centres and the image's size: a copy, not a resampling.
        start = tf.cast(params["begin"][:, :2], tf.float32)
        end = start + tf.cast(tf.stack([height - 1, width - 1]), tf.float32)
        scale = tf.cast(tf.stack([height + 2 * p - 1, width + 2 * p - 1]), tf.float32)
        boxes = tf.concat([start / scale, end / scale], 1)
        return ops.crop_resize(padded, boxes, params["flip"], size=(height, width))

    def apply_image(self, image, params):
        # The same copy as `apply`, as a slice: crop_and_resize costs a batch
        # of one more than the copy itself.
        p = self.padding
        padded = tf.pad(image, [[p, p], [p, p], [0, 0]], "REFLECT")
        view = tf.slice(padded, params["begin"], ops.shape_list(image))
        return ops.flip_image(view, params["flip"])


class SimCLRStack(Stack):
    """Inception crop, flip, colour jitter, grayscale, blur, each with its probability.

    Args:
      crop: Apply the Inception crop.
      area_range: Crop area fraction range.
      aspect_ratio_range: Crop aspect ratio range.
      flip: Random left-right flip.
      color_jitter_strength: s: brightness, contrast and saturation factors
        in `[max(0, 1 - 0.8 s), 1 + 0.8 s]`, hue in `[-0.2 s, 0.2 s]`.
      color_jitter_probability: Chance of jittering.
      grayscale_probability: Chance of grayscale.
      blur_probability: Chance of blurring (0 disables blur).
      blur_sigma: (min, max) blur sigma in pixels.
      crop_sampler: How the crop box is drawn, one of `CROP_SAMPLERS` (see
        `draw_crop_box`).
    """

    # How many uniform numbers one image draws: flip, jitter (keep, 4
    # factors), grayscale, blur (keep, sigma).
    _DRAWS = 9

    def __init__(self, crop=True, area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3),
                 flip=True, color_jitter_strength=1.0, color_jitter_probability=0.8,
                 grayscale_probability=0.2, blur_probability=0.5,
                 blur_sigma=(0.1, 2.0), crop_sampler="tensorflow"):
        self.crop = crop
        self.crop_sampler = check_crop_sampler(crop_sampler)
        self.area_range = tuple(float(a) for a in area_range)
        self.aspect_ratio_range = tuple(float(a) for a in aspect_ratio_range)
        self.flip = flip
        self.strength = float(color_jitter_strength)
        self.jitter_probability = float(color_jitter_probability)
        self.grayscale_probability = float(grayscale_probability)
        self.blur_probability = float(blur_probability)
        self.blur_sigma = tuple(float(s) for s in blur_sigma)

    def draw(self, shape):
        # Two seeds whatever is applied: the box's, then one vector of uniform
        # numbers for the rest (each seed costs a fold-in; few ops per image
        # is what keeps tf.data fast at small image sizes).
        seed = random.next_seed() if self.crop else None
        u = random.uniform([self._DRAWS])
        # u -> [flip, keep jitter, b, c, s, h, grayscale, blur, sigma]: thresholds
        # for the coin flips, ranges for the factors.
        s, lo, hi = 0.8 * self.strength, self.blur_sigma[0], self.blur_sigma[1]
        low = np.array([0, 0, max(0.0, 1.0 - s), max(0.0, 1.0 - s), max(0.0, 1.0 - s),
                        -0.2 * self.strength, 0, 0, lo], np.float32)
        high = np.array([1, 1, 1.0 + s, 1.0 + s, 1.0 + s, 0.2 * self.strength, 1, 1, hi],
                        np.float32)
        values = tf.unstack(low + (high - low) * u)
        flip = values[0] < 0.5 if self.flip else None
        if self.crop:
            box = draw_crop_box(shape, self.area_range, self.aspect_ratio_range, flip=flip,
                                seed=seed, sampler=self.crop_sampler)
        else:
            box = _box(tf.constant([0, 0, 0, shape[0] - 1, shape[1] - 1, 0]), shape, flip)
        keep = values[1] < self.jitter_probability
        return {
            "box": box,
            "jitter": tf.where(keep, tf.stack(values[2:6]), tf.constant([1.0, 1.0, 1.0, 0.0])),
            "grayscale": values[6] < self.grayscale_probability,
            "blur_sigma": tf.where(values[7] < self.blur_probability, values[8], 0.0),
        }

    def apply(self, images, params):
        images = ops.crop_resize(images, params["box"])
        if self.strength > 0:
            images = ops.color_jitter(images, params["jitter"])
        if self.grayscale_probability > 0:
            images = ops.grayscale(images, params["grayscale"])
        if self.blur_probability > 0:
            images = ops.gaussian_blur(images, params["blur_sigma"])
        # Bilinear, luma and blur are weighted averages, but their float sums can
        # overshoot 1 by an ulp (a test saw 1.0000002): one clip keeps [0, 1] exact.
        return tf.clip_by_value(images, 0.0, 1.0)


def apply_now(stack: Stack, image: tf.Tensor) -> tf.Tensor:
    """Draws one image's parameters and applies them to it.

    Args:
      stack: The `Stack`.
      image: float32 `[H, W, 3]` with a static shape.

    Returns:
      The view, float32 `[H, W, 3]`.
    """
    image = tf.convert_to_tensor(image, tf.float32)
    view = stack.apply_image(image, stack.draw(image.shape))
    # A check only where the static shape was lost (an op per view in tf.data otherwise).
    return view if view.shape == image.shape else tf.ensure_shape(view, image.shape)
