"""Augmentation as per-image parameter draws plus one batched application.

Every registered stack except `randaugment` is a `Stack`: `draw(shape)` draws
one image's parameters (crop box, flip, jitter factors, grayscale,
blur sigma) through `keras_ssl.random`, and `apply(images, params)` applies a
batch of images their own parameters at once, without `tf.cond` or
`tf.switch_case` (a branch costs a function call per image in tf.data; here a
transform that is not drawn runs with identity parameters instead).

Called by hand, the stacks of `keras_ssl.augment` are `apply(image[None],
draw(...))[0]`. In training, `Method.make_dataset` goes through
`DeferredViews`: tf.data draws each view's parameters per example, carries
them next to the un-augmented view, and applies them to groups of images
(`tf_data_group_size`: each op's fixed cost, which dominates at small image
sizes, is then paid once per group; the cheap `flip` and `crop_flip` stay per
image), or, with `keras_ssl.train.augment_on_device =
True`, leaves them to `Method.train_step`, which applies them to each
replica's whole batch on the accelerator. Every path runs the same code, so a
view is the same whichever path makes it.

Example:

>>> stack = SimCLRStack()
>>> params = stack.draw((32, 32, 3))
>>> sorted(params)
['blur_sigma', 'box', 'grayscale', 'jitter']
>>> stack.apply(tf.zeros([1, 32, 32, 3]), {k: v[None] for k, v in params.items()}).shape
TensorShape([1, 32, 32, 3])
"""

from __future__ import annotations

import contextlib
import math
import threading

import numpy as np
import tensorflow as tf

from keras_ssl import random

# Luma weights of tf.image.rgb_to_grayscale (ITU-R BT.601).
LUMA = (0.2989, 0.587, 0.114)
# RGB -> YIQ; the hue shift is a rotation of the (I, Q) chroma plane.
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_INV = np.linalg.inv(_YIQ)
PARAM_SEPARATOR = "/augment/"
# The width axis of one `[H, W, C]` image, as `tf.reverse` takes it.
_WIDTH_AXIS = np.array([1], np.int32)


class AugmentOnDeviceError(ValueError):
    """A method's inputs cannot be augmented on the device."""


# ------------------------------------------------------------- batched ops
def _shape(images: tf.Tensor) -> list:
    """Each dimension static where known (fewer ops per image in tf.data), else dynamic."""
    static = images.shape.as_list()
    if None not in static:
        return static
    dynamic = tf.shape(images)
    return [d if d is not None else dynamic[i] for i, d in enumerate(static)]


def crop_resize(images: tf.Tensor, boxes: tf.Tensor, flips: tf.Tensor | None = None,
                size=None) -> tf.Tensor:
    """Crops box i of image i and resizes it (bilinear) to `size`.

    Args:
      images: float32 `[B, H, W, C]`.
      boxes: float32 `[B, 4]`, `(y1, x1, y2, x2)` in `tf.image.crop_and_resize`'s
        normalised coordinates (1 is the last pixel's centre).
      flips: Optional bool `[B]`: mirror image i left-right.
      size: `(height, width)` of the output; default the images' own.

    Returns:
      float32 `[B, height, width, C]`.
    """
    if flips is not None:
        # crop_and_resize samples a box with x1 > x2 mirrored: the flip is free.
        boxes = tf.where(flips[:, None], tf.gather(boxes, [0, 3, 2, 1], axis=1), boxes)
    shape = _shape(images)
    size = shape[1:3] if size is None else size
    return tf.image.crop_and_resize(images, boxes, tf.range(shape[0]), size)


def flip(images: tf.Tensor, flips: tf.Tensor) -> tf.Tensor:
    """Mirrors image i left-right where `flips[i]`.

    Args:
      images: `[B, H, W, C]`.
      flips: bool `[B]`.
    """
    return tf.where(flips[:, None, None, None], tf.reverse(images, [2]), images)


def _row_form(matrix) -> np.ndarray:
    """The 3x3 matrix that maps pixel rows `x` (`[N, 3]`) as `matrix` maps columns."""
    return np.asarray(matrix, np.float64).T


# A colour transform acting on YIQ as `diag(1, 0, 0)`, `diag(0, 1, 1)` and a
# quarter turn of the (I, Q) plane, written for pixel rows; brightness b,
# saturation s and hue h combine them as `b * (E0 + s cos(2 pi h) E1 + s sin(2 pi h) E2)`.
_JITTER_BASIS = np.stack([
    _row_form(_YIQ_INV @ np.diag([1.0, 0.0, 0.0]) @ _YIQ),
    _row_form(_YIQ_INV @ np.diag([0.0, 1.0, 1.0]) @ _YIQ),
    _row_form(_YIQ_INV @ np.array([[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]) @ _YIQ),
]).reshape(3, 9).astype(np.float32)


def color_jitter(images: tf.Tensor, factors: tf.Tensor) -> tf.Tensor:
    """Brightness, contrast, saturation and hue, each image its own factors.

    With factors `(b, c, s, h)` per image:

    - brightness: `b * x`;
    - contrast: `c * x + (1 - c) * mean(x)`, the mean per channel over the
      image (as `tf.image.adjust_contrast`);
    - saturation: scales the chroma (I, Q) of YIQ by `s`, keeping luma (a
      blend with the grayscale image, as torchvision's `adjust_saturation`);
    - hue: rotates the chroma plane by `2 pi h` (a linear stand-in for HSV's
      hue shift), `h` in [-0.5, 0.5].

    All four are linear maps of the colour (contrast too: the mean of a
    linearly mapped image is the mapped mean), so they commute, and the
    image is clipped to [0, 1] once, after their product: one 3x3 matrix and
    one offset per image, the same for any order. (torchvision and SimCLR's
    code clip after each transform, which is why they shuffle the order;
    here no order is privileged.) Factors `(1, 1, 1, 0)` leave an image in
    [0, 1] unchanged.

    Args:
      images: float32 `[B, H, W, 3]` in [0, 1].
      factors: float32 `[B, 4]`: `(b, c, s, h)` per image.

    Returns:
      float32 `[B, H, W, 3]` in [0, 1].
    """
    shape = _shape(images)
    pixels = tf.reshape(images, [shape[0], -1, 3])
    b, c, s, h = tf.unstack(factors, axis=1)
    theta = 2.0 * math.pi * h
    weights = b[:, None] * tf.stack([tf.ones_like(s), s * tf.cos(theta), s * tf.sin(theta)], 1)
    colour = tf.reshape(weights @ tf.constant(_JITTER_BASIS), [-1, 3, 3])  # [B, 3, 3]
    mean = tf.reduce_mean(pixels, axis=1, keepdims=True)  # [B, 1, 3]
    offset = (1.0 - c)[:, None, None] * (mean @ colour)
    jittered = pixels @ (c[:, None, None] * colour) + offset
    return tf.reshape(tf.clip_by_value(jittered, 0.0, 1.0), shape)


def grayscale(images: tf.Tensor, flags: tf.Tensor) -> tf.Tensor:
    """Luma in three channels where `flags[i]` (bool `[B]`), else the image.

    One matrix product per image (the luma matrix or the identity), not a
    conversion of every image and a selection.
    """
    luma = tf.constant(np.repeat(np.array(LUMA, np.float32)[:, None], 3, axis=1))
    matrices = tf.where(flags[:, None, None], luma[None], tf.eye(3)[None])
    shape = _shape(images)
    return tf.reshape(tf.reshape(images, [shape[0], -1, 3]) @ matrices, shape)


def solarize(images: tf.Tensor, flags: tf.Tensor, threshold: float = 0.5) -> tf.Tensor:
    """Inverts values at or above `threshold` where `flags[i]` (bool `[B]`)."""
    solarized = tf.where(images < threshold, images, 1.0 - images)
    return tf.where(flags[:, None, None, None], solarized, images)


def blur_kernel_size(height: int) -> int:
    """The default odd kernel size: about 10% of the height (`2 * (H // 20) + 1`)."""
    return 2 * (int(height) // 20) + 1


def gaussian_blur(images: tf.Tensor, sigmas: tf.Tensor, kernel_size: int | None = None) -> tf.Tensor:
    """Separable Gaussian blur with reflection padding, a sigma per image.

    A sigma <= 0 leaves that image unchanged (its kernel is a unit impulse).
    The images are laid side by side as channels of one image, so one
    depthwise convolution gives each its own kernel.

    Args:
      images: float32 `[B, H, W, C]` with static H, W and C.
      sigmas: float32 `[B]`, in pixels.
      kernel_size: Odd kernel size; default `blur_kernel_size(H)`. A size of
        1 leaves the images as they are.

    Returns:
      float32 `[B, H, W, C]`.
    """
    _, height, width, channels = _shape(images)
    if kernel_size is None:
        kernel_size = blur_kernel_size(height)
    radius = kernel_size // 2
    if radius < 1:
        return images
    x = tf.cast(tf.range(-radius, radius + 1), tf.float32)
    safe = tf.maximum(sigmas, 1e-3)[:, None]
    kernels = tf.exp(-tf.square(x)[None] / (2.0 * tf.square(safe)))
    kernels = kernels / tf.reduce_sum(kernels, axis=1, keepdims=True)
    impulse = tf.one_hot(radius, kernel_size)[None]
    kernels = tf.where((sigmas > 0)[:, None], kernels, impulse)  # [B, K]
    batch = _shape(images)[0]
    # [B, K] -> one kernel per (image, channel), in the order of the stacked channels.
    per_channel = tf.reshape(tf.repeat(kernels, channels, axis=0), [-1, kernel_size])
    # One image is already laid out so (the per-image path in tf.data).
    single = images.shape[0] == 1
    stacked = images if single else tf.reshape(
        tf.transpose(images, [1, 2, 0, 3]), [1, height, width, -1])
    padded = tf.pad(stacked, [[0, 0], [radius, radius], [radius, radius], [0, 0]], "REFLECT")
    horizontal = tf.transpose(per_channel)[None, :, :, None]
    vertical = tf.transpose(per_channel)[:, None, :, None]
    blurred = tf.nn.depthwise_conv2d(padded, horizontal, [1, 1, 1, 1], "VALID")
    blurred = tf.nn.depthwise_conv2d(blurred, vertical, [1, 1, 1, 1], "VALID")
    if single:
        return blurred
    blurred = tf.reshape(blurred, [height, width, batch, channels])
    return tf.transpose(blurred, [2, 0, 1, 3])


# --------------------------------------------------------- per-image draws
def draw_crop_box(shape, area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3),
                  max_attempts: int = 100, flip=None, seed=None) -> tf.Tensor:
    """One Inception-crop box, for `crop_resize`.

    Drawn by `tf.image.stateless_sample_distorted_bounding_box` (area and
    aspect ratio uniform, whole pixels, the whole image when no box fits
    after `max_attempts`).

    Args:
      shape: The image's static `(H, W, C)`.
      area_range: Fraction of the image area the crop covers.
      aspect_ratio_range: Width / height of the crop.
      max_attempts: Draws before falling back to the whole image.
      flip: Optional bool scalar: swap x1 and x2, which mirrors the crop.
      seed: The `[2]` seed of the draw; default `keras_ssl.random.next_seed()`.

    Returns:
      float32 `[4]`: `(y1, x1, y2, x2)`, the centres of the crop's corner pixels.
    """
    height, width = int(shape[0]), int(shape[1])
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.constant([height, width, int(shape[2])], tf.int32),
        seed=random.next_seed() if seed is None else seed,
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
        min_object_covered=float(area_range[0]),
        aspect_ratio_range=tuple(float(a) for a in aspect_ratio_range),
        area_range=tuple(float(a) for a in area_range),
        max_attempts=max_attempts,
        use_image_if_no_bounding_boxes=True,
    )
    return _box(tf.concat([begin, begin + size - 1], 0), (height, width), flip)


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


# ------------------------------------------------------------------- stacks
class Stack:
    """An augmentation stack: per-image `draw` and batched `apply`.

    Attributes:
      batch_in_tf_data: Whether tf.data applies it in batches (see
        `DeferredViews`). Stacks of a few cheap ops run faster per image:
        batching, unbatching and the batched kernels cost them more than the
        per-op overhead they save.
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


def _flip_image(image: tf.Tensor, flipped: tf.Tensor) -> tf.Tensor:
    """Mirrors one image where `flipped` (a scalar bool) is true.

    A reverse over the axes `[1][:flipped]`: reversing over no axis leaves
    the image as it is. Neither a `tf.where` (a scalar condition broadcast
    over the image ran the `flip` stack at half the speed of plain tf.data)
    nor a `tf.cond` (a function call per image in tf.data), which measured
    0.92x and 0.87x plain in benchmarks/augmentation.py's setting.
    """
    axes = tf.slice(_WIDTH_AXIS, [0], tf.reshape(tf.cast(flipped, tf.int32), [1]))
    return tf.reverse(image, axes)


class FlipStack(Stack):
    """Left-right flip with probability 0.5 (the `flip` stack)."""

    batch_in_tf_data = False

    def draw(self, shape):
        return {"flip": random.uniform() < 0.5}

    def apply(self, images, params):
        return flip(images, params["flip"])

    def apply_image(self, image, params):
        return _flip_image(image, params["flip"])


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
        height, width = _shape(images)[1:3]
        padded = tf.pad(images, [[0, 0], [p, p], [p, p], [0, 0]], "REFLECT")
        # Corners at pixel centres and the image's size: a copy, not a resampling.
        start = tf.cast(params["begin"][:, :2], tf.float32)
        end = start + tf.cast(tf.stack([height - 1, width - 1]), tf.float32)
        scale = tf.cast(tf.stack([height + 2 * p - 1, width + 2 * p - 1]), tf.float32)
        boxes = tf.concat([start / scale, end / scale], 1)
        return crop_resize(padded, boxes, params["flip"], size=(height, width))

    def apply_image(self, image, params):
        # The same copy as `apply`, as a slice: crop_and_resize costs a batch
        # of one more than the copy itself.
        p = self.padding
        padded = tf.pad(image, [[p, p], [p, p], [0, 0]], "REFLECT")
        view = tf.slice(padded, params["begin"], _shape(image))
        return _flip_image(view, params["flip"])


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
    """

    # How many uniform numbers one image draws: flip, jitter (keep, 4
    # factors), grayscale, blur (keep, sigma).
    _DRAWS = 9

    def __init__(self, crop=True, area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3),
                 flip=True, color_jitter_strength=1.0, color_jitter_probability=0.8,
                 grayscale_probability=0.2, blur_probability=0.5,
                 blur_sigma=(0.1, 2.0)):
        self.crop = crop
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
            box = draw_crop_box(
                shape, self.area_range, self.aspect_ratio_range, flip=flip, seed=seed)
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
        images = crop_resize(images, params["box"])
        if self.strength > 0:
            images = color_jitter(images, params["jitter"])
        if self.grayscale_probability > 0:
            images = grayscale(images, params["grayscale"])
        if self.blur_probability > 0:
            images = gaussian_blur(images, params["blur_sigma"])
        # Bilinear, luma and blur are weighted averages, but their float sums can
        # overshoot 1 by an ulp (a test saw 1.0000002): one clip keeps [0, 1] exact.
        return tf.clip_by_value(images, 0.0, 1.0)


# ------------------------------------------- per image, or deferred to the step
_local = threading.local()


@contextlib.contextmanager
def recording():
    """Inside the block, `run` draws parameters but leaves the views as they are.

    Yields:
      The list it appends `(view, stack, params)` to.
    """
    previous = getattr(_local, "views", None)
    _local.views = []
    try:
        yield _local.views
    finally:
        _local.views = previous


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


def run(stack: Stack, image: tf.Tensor) -> tf.Tensor:
    """`apply_now`, or inside `recording()` the draw alone (the view is applied later)."""
    views = getattr(_local, "views", None)
    if views is None:
        return apply_now(stack, image)
    image = tf.convert_to_tensor(image, tf.float32)
    params = stack.draw(image.shape)
    view = tf.identity(image)  # a tensor of its own: two views of one image stay apart
    views.append((view, stack, params))
    return view


def apply_deferred(batch: dict, stacks: dict) -> dict:
    """Applies the parameters carried in `batch` to its views, on the whole batch.

    Args:
      batch: A batch of a deferred `preprocess` (views plus their
        `<key>/augment/<name>` parameters).
      stacks: `{view key: Stack}`.

    Returns:
      The batch with augmented views and without the parameters.
    """
    batch = dict(batch)
    for key, stack in stacks.items():
        prefix = key + PARAM_SEPARATOR
        names = [name for name in batch if name.startswith(prefix)]
        if not names:
            continue
        params = {name[len(prefix):]: batch.pop(name) for name in names}
        batch[key] = stack.apply(tf.cast(batch[key], tf.float32), params)
    return batch


# Bytes of one view tensor (float32 pixels) per group applied in tf.data:
# enough images to share each op's fixed cost, few enough that a group's
# tensors stay in the CPU's cache. In benchmarks/augmentation.py's setting
# the fastest groups held 1.5-3 MiB: the whole batch of 256 at 32 px, 32
# images at 64 px and 16-32 at 96 px (there the whole batch ran 7-15% slower).
TF_DATA_GROUP_BYTES = 3 << 20
MIN_TF_DATA_GROUP = 8


def tf_data_group_size(view_shape, batch_size: int) -> int:
    """Images per group in which tf.data applies deferred views.

    Args:
      view_shape: The static `(H, W, C)` of the largest view.
      batch_size: The batch size; a group is never larger.

    Returns:
      `TF_DATA_GROUP_BYTES` of float32 views, at least `MIN_TF_DATA_GROUP`
      images and at most `batch_size`.
    """
    view_bytes = 4 * int(np.prod([int(d) for d in view_shape]))
    return int(min(batch_size, max(MIN_TF_DATA_GROUP, TF_DATA_GROUP_BYTES // view_bytes)))


class DeferredViews:
    """A `preprocess` whose augmentation stacks draw per example and apply per batch.

    Calling it runs `preprocess` with `recording()` on: every view a `Stack`
    makes comes back un-augmented, with its parameters next to it as
    `<key>/augment/<name>`. That works when `preprocess` returns the views
    themselves (SimCLR, MoCo, NPID); when it transforms them further
    (rotations, patches, stacks of copies) the call runs `preprocess` again
    as it is, per image, and `deferred` is False.

    In tf.data (not `on_device`), stacks whose `batch_in_tf_data` is False
    are applied per image too.

    Args:
      preprocess: `example -> dict`, seeded per example (`Method.seeded_preprocess`).
      name: The method's name, for errors.
      on_device: The views will be applied in the training step.

    Attributes:
      deferred: After the first call (tf.data traces the map at once):
        whether views were deferred.
      stacks: `{view key: Stack}` of the deferred views.
    """

    def __init__(self, preprocess, name: str = "method", on_device: bool = False):
        self.preprocess = preprocess
        self.name = name
        self.on_device = on_device
        self.deferred = False
        self.stacks = {}

    def __call__(self, example):
        with recording() as views:
            outputs = dict(self.preprocess(example))
        found = {}
        for view, stack, params in views:
            keys = [key for key, value in outputs.items() if value is view]
            if len(keys) != 1:
                # A view transformed after augmentation: augment per image after all
                # (the draws above are unused, and pruned from the traced function).
                self.deferred, self.stacks = False, {}
                return self.preprocess(example)
            if not (self.on_device or stack.batch_in_tf_data):
                self.deferred, self.stacks = False, {}
                return self.preprocess(example)
            found[keys[0]] = (stack, params)
        self.deferred = bool(found)
        self.stacks = {key: stack for key, (stack, _) in found.items()}
        for key, (_, params) in found.items():
            outputs.update({f"{key}{PARAM_SEPARATOR}{k}": v for k, v in params.items()})
        return outputs

    def apply(self, batch: dict) -> dict:
        """`apply_deferred(batch, self.stacks)`."""
        return apply_deferred(batch, self.stacks)

    def apply_in_tf_data(self, dataset: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
        """Batches the examples and applies the deferred views in tf.data.

        The views are applied to groups of `tf_data_group_size` images: the
        batches themselves where a batch fits, else groups that are unbatched
        and batched again.

        Args:
          dataset: Examples of this preprocess (one per element, in order).
          batch_size: Examples per batch; the last partial batch is dropped.

        Returns:
          Batches of augmented examples, in the same order.
        """
        spec = dataset.element_spec
        group = tf_data_group_size(
            max((spec[key].shape for key in self.stacks), key=lambda shape: shape.num_elements()),
            batch_size)
        if group < batch_size:
            dataset = dataset.batch(group).map(
                self.apply, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()
            return dataset.batch(batch_size, drop_remainder=True)
        return dataset.batch(batch_size, drop_remainder=True).map(
            self.apply, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def check_on_device(self) -> None:
        """Raises `AugmentOnDeviceError` unless the views were deferred."""
        if not self.deferred:
            raise AugmentOnDeviceError(
                f"keras_ssl.train.augment_on_device = True, but method {self.name!r} has no "
                f"views to augment on the device: its preprocess transforms the augmented "
                f"views further (rotations, patches, stacks of copies) or its stack is not "
                f"batched (randaugment). Augment on the device only methods whose inputs "
                f"are the views themselves (simclr, moco, npid), or set it to False."
            )
