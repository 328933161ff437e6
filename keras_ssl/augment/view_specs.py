"""View specs for method authors: per-view augmentation settings and multi-crop.

A `ViewSpec` says how one view of an image is drawn: crop size and area,
flip, colour jitter, grayscale, blur and solarisation, each with its own
probability. Methods with asymmetric views (BYOL: blur always in view 1,
solarise only in view 2) take one spec per view; multi-crop methods (DINO,
SwAV) take global and local specs of different sizes (`multi_crop`). Every
image draws its own parameters, from `keras_ssl.random`, so views are
reproducible per (seed, epoch, example) like every other stack.

In gin, a spec is built with a scope per view:

    byol.views = (@view_1/ViewSpec(), @view_2/ViewSpec())
    view_1/ViewSpec.blur_probability = 1.0
    view_2/ViewSpec.blur_probability = 0.1
    view_2/ViewSpec.solarize_probability = 0.2

`keras-ssl-show-views --method=NAME` draws a method's views side by side.

`keras_ssl.views` re-exports this module (its former home), and the gin
names keep that module: `keras_ssl.views.ViewSpec`, `keras_ssl.views.multi_crop`.
"""

from __future__ import annotations

import dataclasses

import gin
import tensorflow as tf

from keras_ssl import random
from keras_ssl.augment import (
    color_jitter, gaussian_blur, inception_crop, random_flip, solarize, stacks, to_grayscale,
)

# BYOL's colour jitter ranges (brightness, contrast, saturation, hue), also DINO's.
BYOL_JITTER = (0.4, 0.4, 0.2, 0.1)


@dataclasses.dataclass(frozen=True)
class ViewSpec:
    """How one view is drawn from an image.

    Args:
      size: Side of the square view; None keeps the image's size.
      area_range: Fraction of the image area the random crop covers
        (Inception crop; `(1, 1)` with `aspect_ratio_range=(1, 1)` is no crop).
      aspect_ratio_range: Width / height of the crop.
      flip: Random left-right flip.
      jitter: `(brightness, contrast, saturation, hue)` ranges of the colour
        jitter (`keras_ssl.augment.color_jitter`); None for no jitter.
      jitter_probability: Chance of jittering.
      grayscale_probability: Chance of converting to grayscale.
      blur_probability: Chance of a Gaussian blur.
      blur_sigma: `(min, max)` of the blur's sigma in pixels (of the view).
      solarize_probability: Chance of solarising (threshold 0.5).
      crop_sampler: How the crop box is drawn: `tensorflow` or `torchvision`
        (`keras_ssl.augment.stacks.draw_crop_box`).

    Example:

    >>> spec = ViewSpec(size=16, area_range=(0.05, 0.4))
    >>> draw_view(tf.zeros([32, 32, 3]), spec).shape
    TensorShape([16, 16, 3])
    """

    size: int | None = None
    area_range: tuple = (0.08, 1.0)
    aspect_ratio_range: tuple = (3 / 4, 4 / 3)
    flip: bool = True
    jitter: tuple | None = BYOL_JITTER
    jitter_probability: float = 0.8
    grayscale_probability: float = 0.2
    blur_probability: float = 0.0
    blur_sigma: tuple = (0.1, 2.0)
    solarize_probability: float = 0.0
    crop_sampler: str = "tensorflow"

    def __post_init__(self):
        stacks.check_crop_sampler(self.crop_sampler, "ViewSpec.crop_sampler")


# The gin module of the former home, which gin configs name.
_GIN_MODULE = "keras_ssl.views"
gin.external_configurable(ViewSpec, module=_GIN_MODULE)


def _with_probability(probability: float, transformed, image):
    # One draw per view whatever the outcome, so later draws keep their place
    # in the example's seed sequence.
    if probability >= 1.0:
        return transformed
    if probability <= 0.0:
        return image
    return tf.where(random.uniform() < probability, transformed, image)


def draw_view(image: tf.Tensor, spec: ViewSpec) -> tf.Tensor:
    """Draws one view of `image` as `spec` says (inside `Method.preprocess`).

    Args:
      image: float32 `[H, W, 3]` in [0, 1] with a static shape.
      spec: The view's settings.

    Returns:
      float32 `[size, size, 3]` (or `[H, W, 3]`) in [0, 1].
    """
    image = tf.convert_to_tensor(image, tf.float32)
    view = inception_crop(image, spec.area_range, spec.aspect_ratio_range, size=spec.size,
                          crop_sampler=spec.crop_sampler)
    if spec.flip:
        view = random_flip(view)
    if spec.jitter is not None and spec.jitter_probability > 0:
        view = _with_probability(
            spec.jitter_probability, color_jitter(view, factors=spec.jitter), view
        )
    if spec.grayscale_probability > 0:
        view = _with_probability(spec.grayscale_probability, to_grayscale(view), view)
    if spec.blur_probability > 0:
        sigma = random.uniform([], float(spec.blur_sigma[0]), float(spec.blur_sigma[1]))
        view = _with_probability(spec.blur_probability, gaussian_blur(view, sigma), view)
    if spec.solarize_probability > 0:
        view = _with_probability(spec.solarize_probability, solarize(view), view)
    return tf.clip_by_value(view, 0.0, 1.0)


def draw_views(image: tf.Tensor, specs) -> list:
    """One view per spec, in order (each with its own draws)."""
    return [draw_view(image, spec) for spec in specs]


# BYOL's two views (Grill et al. 2020, Table 6): blur always in the first, rarely
# in the second; solarisation only in the second.
BYOL_VIEWS = (
    ViewSpec(blur_probability=1.0, solarize_probability=0.0),
    ViewSpec(blur_probability=0.1, solarize_probability=0.2),
)


def multi_crop(
    global_views=BYOL_VIEWS,
    num_local_views: int = 6,
    local_size: int = 96,
    local_area_range=(0.05, 0.4),
    global_area_range=(0.4, 1.0),
    local_blur_probability: float = 0.5,
    local_jitter: tuple | None = BYOL_JITTER,
) -> tuple:
    """The specs of multi-crop (SwAV, DINO): global views, then small local ones.

    Args:
      global_views: Specs of the global views (their `area_range` is replaced
        by `global_area_range`); DINO's are BYOL's pair.
      num_local_views: Local views (6 in SwAV, 6-10 in DINO).
      local_size: Side of the local views (96 px for 224-px global views).
      local_area_range: Crop area of the local views.
      global_area_range: Crop area of the global views.
      local_blur_probability: Blur chance of the local views.
      local_jitter: Colour-jitter ranges of the local views (`ViewSpec.jitter`).

    Returns:
      A tuple of `ViewSpec`s, the global views first.
    """
    globals_ = tuple(dataclasses.replace(v, area_range=tuple(global_area_range)) for v in global_views)
    local = ViewSpec(size=local_size, area_range=tuple(local_area_range),
                     blur_probability=local_blur_probability,
                     jitter=None if local_jitter is None else tuple(local_jitter))
    return globals_ + (local,) * num_local_views


def check_views_fit(specs, image_size: int | None, setting: str) -> None:
    """Refuses views larger than the images, or local views not smaller than global ones.

    Args:
      specs: The method's view specs, global views first (`size` None = the image's).
      image_size: Side of the training images (None: unknown, not checked).
      setting: The gin setting the specs come from, named in the error.

    Raises:
      ValueError: naming the setting, the sizes and the fix.
    """
    sizes = [spec.size for spec in specs]
    if image_size is not None:
        too_big = sorted({s for s in sizes if s is not None and s > image_size})
        if too_big:
            raise ValueError(
                f"{setting}: view size {too_big[0]} does not fit {image_size}-px images; set the "
                f"views' size to at most {image_size} (or keras_ssl.train.image_size to at least "
                f"{too_big[0]})."
            )
    resolved = [image_size if s is None else s for s in sizes]
    first = resolved[0] if resolved else None
    for size in resolved[1:]:
        if first is not None and size is not None and size > first:
            raise ValueError(
                f"{setting}: a local view of {size} px is larger than the first (global) view "
                f"of {first} px; multi-crop's local views must be smaller than the global ones."
            )


gin.external_configurable(multi_crop, module=_GIN_MODULE)
