"""Patches and masks for masked-image and predictive methods (MAE, SimMIM, iBOT, DINOv2, I-JEPA).

- `patchify` / `unpatchify`: images <-> rows of patch pixels, in the
  row-major order of a ViT's patch tokens.
- `normalized_pixel_target`: MAE's per-patch normalised pixels.
- The mask samplers draw ONE image's mask from `keras_ssl.random`, so call
  them in `preprocess`: an example's mask then depends on the run seed, the
  epoch and its index only, whatever the replicas or the tf.data
  parallelism. Each returns a fixed number of elements per image (a static
  shape, which XLA needs); what varies is which are set.
  - `random_patch_mask`: MAE's uniform masking, K visible patches.
  - `block_mask`: BEiT's block-wise masking (iBOT, DINOv2).
  - `multi_block_masks`: I-JEPA's context and target blocks.
- `sincos_position_embedding`: MAE's fixed 2-d sine-cosine embedding, for
  decoders and predictors.

Example:

>>> import numpy as np
>>> images = np.arange(2 * 4 * 4 * 3, dtype="float32").reshape(2, 4, 4, 3)
>>> patches = patchify(images, 2)
>>> tuple(patches.shape)
(2, 4, 12)
>>> bool(np.all(unpatchify(patches, 2, 2, 2).numpy() == images))
True
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from keras_ssl import random as ssl_random

__all__ = [
    "block_mask", "check_block_mask", "check_mask_ratio", "check_multi_block", "multi_block_masks",
    "normalized_pixel_target", "patch_statistics", "patchify", "random_patch_mask", "sincos_position_embedding",
    "unpatchify", "visible_count",
]


def patchify(images, patch_size: int) -> tf.Tensor:
    """`[B, H, W, C]` -> `[B, (H/p)(W/p), p*p*C]`: patches row-major, pixels (row, column, channel) inside."""
    images = tf.convert_to_tensor(images)
    shape = tf.shape(images)
    p, channels = int(patch_size), images.shape[-1]
    rows, columns = shape[1] // p, shape[2] // p
    x = tf.reshape(images, (shape[0], rows, p, columns, p, channels))
    x = tf.transpose(x, (0, 1, 3, 2, 4, 5))
    return tf.reshape(x, (shape[0], rows * columns, p * p * channels))


def unpatchify(patches, patch_size: int, grid_height: int, grid_width: int) -> tf.Tensor:
    """The inverse of `patchify`: `[B, h*w, p*p*C]` -> `[B, h*p, w*p, C]`."""
    patches = tf.convert_to_tensor(patches)
    p = int(patch_size)
    channels = patches.shape[-1] // (p * p)
    batch = tf.shape(patches)[0]
    x = tf.reshape(patches, (batch, grid_height, grid_width, p, p, channels))
    x = tf.transpose(x, (0, 1, 3, 2, 4, 5))
    return tf.reshape(x, (batch, grid_height * p, grid_width * p, channels))


def patch_statistics(patches, epsilon: float = 1e-6):
    """`(mean, sqrt(unbiased variance + epsilon))` of each patch, `[B, N, 1]` each.

    The variance is divided by D - 1 (D the pixels of a patch times its
    channels), as MAE's code computes it.
    """
    patches = tf.cast(patches, tf.float32)
    count = patches.shape[-1]
    mean = tf.reduce_mean(patches, axis=-1, keepdims=True)
    variance = tf.reduce_sum(tf.square(patches - mean), axis=-1, keepdims=True) / (count - 1)
    return mean, tf.sqrt(variance + epsilon)


def normalized_pixel_target(patches, epsilon: float = 1e-6) -> tf.Tensor:
    """Each patch's pixels minus their mean, over `sqrt(variance + epsilon)` (MAE's `norm_pix_loss`).

    The statistics are `patch_statistics`'; `reconstruct`-style code maps a
    prediction back to pixels with the same mean and deviation.
    """
    mean, deviation = patch_statistics(patches, epsilon)
    return (tf.cast(patches, tf.float32) - mean) / deviation


def visible_count(num_patches: int, mask_ratio: float) -> int:
    """K = int(N (1 - ratio)), the patches `random_patch_mask` leaves visible (MAE's rule)."""
    return int(num_patches * (1.0 - mask_ratio))


def check_mask_ratio(mask_ratio: float, setting: str, num_patches: int | None = None) -> float:
    """`mask_ratio` as a float, refused in one line naming `setting` outside [0, 1).

    With `num_patches`, also refused when it would leave no patch visible.
    """
    ratio = float(mask_ratio)
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"{setting} must be in [0, 1) (the fraction of patches masked), got "
                         f"{mask_ratio}; bind e.g. {setting} = 0.75.")
    if num_patches is not None and visible_count(num_patches, ratio) < 1:
        raise ValueError(f"{setting} = {mask_ratio} leaves no visible patch of {num_patches}; "
                         f"lower it below {1 - 1 / num_patches:.3f} or use more patches.")
    return ratio


def random_patch_mask(num_patches: int, mask_ratio: float):
    """MAE's masking of one image: a uniformly random `mask_ratio` of the patches.

    Args:
      num_patches: N, the patch tokens of the image.
      mask_ratio: The fraction masked, in [0, 1) (refused otherwise).

    Returns:
      `(keep [K] int32 ascending, masked [N] bool)`, K = `visible_count(N,
      mask_ratio)`; `masked` is False exactly at `keep`.
    """
    ratio = check_mask_ratio(mask_ratio, "mask_ratio", num_patches)
    visible = visible_count(num_patches, ratio)
    order = tf.argsort(ssl_random.uniform([num_patches]))
    keep = tf.sort(tf.cast(order[:visible], tf.int32))
    masked = tf.tensor_scatter_nd_update(tf.ones([num_patches], tf.bool), keep[:, None],
                                         tf.zeros([visible], tf.bool))
    return keep, masked


def _grid_box(grid_height: int, grid_width: int, top, left, height, width) -> tf.Tensor:
    """`[grid_height, grid_width]` bool, True on rows [top, top+height) and columns [left, left+width)."""
    rows = tf.range(grid_height)[:, None]
    columns = tf.range(grid_width)[None, :]
    return ((rows >= top) & (rows < top + height)) & ((columns >= left) & (columns < left + width))


def check_block_mask(grid_height: int, grid_width: int, min_block_patches: int,
                     aspect_ratio=(0.3, 1 / 0.3), setting: str = "block_mask") -> None:
    """Refuses, in one line naming `setting`, a block mask that cannot place a block on the grid.

    BEiT's blocks are strictly smaller than the grid on each side, so the
    grid needs at least 2 x 2 patches and room for `min_block_patches`.
    """
    low, high = (float(a) for a in aspect_ratio)
    if not 0 < low <= high:
        raise ValueError(f"{setting}: the aspect ratio range must be 0 < low <= high, got "
                         f"{tuple(aspect_ratio)}.")
    room = (grid_height - 1) * (grid_width - 1)
    if min_block_patches < 1 or min_block_patches > room:
        raise ValueError(
            f"{setting}: blocks of at least {min_block_patches} patches cannot be placed on a "
            f"{grid_height} x {grid_width} patch grid (a block is at most {grid_height - 1} x "
            f"{grid_width - 1}); lower the minimum block to 1..{max(room, 1)} or use larger images "
            f"or smaller patches.")


def block_mask(grid_height: int, grid_width: int, mask_ratio, min_block_patches: int = 4,
               aspect_ratio=(0.3, 1 / 0.3), max_block_patches: int | None = None,
               attempts: int | None = None) -> tf.Tensor:
    """BEiT's block-wise mask of one image (iBOT, DINOv2): `[N]` bool, N = height x width.

    Rectangles are added until about `round(mask_ratio * N)` patches are
    masked, never more: each attempt draws an area uniform between
    `min_block_patches` and what is left to mask (or `max_block_patches`),
    an aspect ratio log-uniform in `aspect_ratio`, sides `round(sqrt(area *
    ratio))` x `round(sqrt(area / ratio))` strictly inside the grid, and a
    uniform position; it is kept when it masks at least one new patch and
    no more than are left. BEiT stops after ten failed attempts in a row;
    here a fixed number of attempts run (`attempts`, default 4 N), their
    draws taken up front, so the graph has no data-dependent length and the
    masked count gets closer to the target; the loop ends early once it is
    reached (at once for a ratio of 0).

    Args:
      grid_height, grid_width: The patch grid.
      mask_ratio: The fraction to mask, a float or a scalar tensor (drawn
        per image by the caller, e.g. `keras_ssl.random.uniform([], 0.1, 0.5)`).
      min_block_patches: The smallest block's area (BEiT: 4; 16 at 224 px with
        a larger grid in some recipes).
      aspect_ratio: `(low, high)` of the blocks' height / width.
      max_block_patches: The largest block's area (None: no limit but the target).
      attempts: Rectangles tried.

    Returns:
      `[grid_height * grid_width]` bool, row-major.
    """
    check_block_mask(grid_height, grid_width, min_block_patches, aspect_ratio)
    n = grid_height * grid_width
    draws = ssl_random.uniform([int(attempts or 4 * n), 4])
    target = tf.cast(tf.round(tf.cast(mask_ratio, tf.float32) * n), tf.int32)
    mask = _place_blocks(draws, target, tf.constant(max_block_patches or n, tf.int32),
                         grid_height, grid_width, int(min_block_patches),
                         tuple(float(a) for a in aspect_ratio))
    return tf.reshape(mask, [n])


@tf.function(reduce_retracing=True)
def _place_blocks(draws, target, largest, grid_height, grid_width, min_block_patches, aspect_ratio):
    """`block_mask`'s attempts, one per row of `draws`; a graph even when called eagerly."""
    log_low, log_high = math.log(aspect_ratio[0]), math.log(aspect_ratio[1])

    def attempt(i, mask):
        u = draws[i]
        remaining = target - tf.reduce_sum(tf.cast(mask, tf.int32))
        most = tf.minimum(remaining, largest)
        area = min_block_patches + u[0] * tf.cast(most - min_block_patches, tf.float32)
        ratio = tf.exp(log_low + u[1] * (log_high - log_low))
        height = tf.cast(tf.round(tf.sqrt(area * ratio)), tf.int32)
        width = tf.cast(tf.round(tf.sqrt(area / ratio)), tf.int32)
        fits = (height >= 1) & (width >= 1) & (height < grid_height) & (width < grid_width)
        top = tf.cast(u[2] * tf.cast(grid_height - height + 1, tf.float32), tf.int32)
        left = tf.cast(u[3] * tf.cast(grid_width - width + 1, tf.float32), tf.int32)
        box = _grid_box(grid_height, grid_width, top, left, height, width)
        new = tf.reduce_sum(tf.cast(box & ~mask, tf.int32))
        accept = fits & (remaining > 0) & (new > 0) & (new <= most)
        return i + 1, mask | (box & accept)

    def more(i, mask):
        # Once the target is reached every further attempt is refused: stop there.
        return (i < tf.shape(draws)[0]) & (tf.reduce_sum(tf.cast(mask, tf.int32)) < target)

    _, mask = tf.while_loop(more, attempt,
                            (tf.constant(0), tf.zeros([grid_height, grid_width], tf.bool)))
    return mask


def _block_side(num_patches: int, scale, aspect, grid_height: int, grid_width: int):
    """I-JEPA's block size: area int(N scale), sides round(sqrt(area a)) x round(sqrt(area / a)), inside the grid."""
    area = tf.floor(num_patches * scale)
    height = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
    width = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
    return (tf.clip_by_value(height, 1, grid_height - 1), tf.clip_by_value(width, 1, grid_width - 1))


def _uniform_in(u, bounds):
    low, high = (float(b) for b in bounds)
    return low + u * (high - low)


def check_multi_block(grid_height: int, grid_width: int, num_targets: int, target_scale,
                      target_aspect, context_scale, setting: str = "multi_block_masks") -> None:
    """Refuses, in one line naming `setting`, an I-JEPA block layout the grid cannot hold."""
    if int(num_targets) < 1:
        raise ValueError(f"{setting}: num_targets must be >= 1, got {num_targets}.")
    if grid_height < 2 or grid_width < 2:
        raise ValueError(f"{setting}: a {grid_height} x {grid_width} patch grid has no room for "
                         f"blocks smaller than the image; use larger images or smaller patches.")
    for name, bounds in (("target_scale", target_scale), ("context_scale", context_scale)):
        low, high = (float(b) for b in bounds)
        if not 0 < low <= high <= 1:
            raise ValueError(f"{setting}: {name} must satisfy 0 < low <= high <= 1, got "
                             f"{tuple(bounds)}.")
    low, high = (float(a) for a in target_aspect)
    if not 0 < low <= high:
        raise ValueError(f"{setting}: target_aspect must satisfy 0 < low <= high, got "
                         f"{tuple(target_aspect)}.")
    n = grid_height * grid_width
    if int(n * float(target_scale[0])) < 1:
        raise ValueError(
            f"{setting}: target blocks of {target_scale[0]} of a {grid_height} x {grid_width} "
            f"grid ({n} patches) hold no patch; raise target_scale to >= {1 / n:.3f} or use more "
            f"patches.")


def multi_block_masks(grid_height: int, grid_width: int, num_targets: int = 4,
                      target_scale=(0.15, 0.2), target_aspect=(0.75, 1.5),
                      context_scale=(0.85, 1.0), min_context: int = 4, context_attempts: int = 8):
    """I-JEPA's blocks for one image: a context block and `num_targets` target blocks.

    The targets share one size (area `int(N s)`, s uniform in
    `target_scale`, aspect ratio uniform in `target_aspect`) at independent
    uniform positions and may overlap each other. The context is a square
    block (scale uniform in `context_scale`) with every target patch removed;
    of `context_attempts` positions, the first leaving at least
    `min_context` patches is used (the one leaving most if none does), as
    I-JEPA retries a context that would be too small. As in I-JEPA's code,
    sides are clipped to one patch less than the grid and a block never
    touches the last row or column. I-JEPA draws the sizes once per batch;
    here they are drawn per image, so a batch mixes sizes.

    Returns:
      `(context [N] bool, targets [num_targets, N] bool)`, row-major.
    """
    check_multi_block(grid_height, grid_width, num_targets, target_scale, target_aspect,
                      context_scale)
    n = grid_height * grid_width
    u = ssl_random.uniform([4 + 2 * num_targets + 2 * context_attempts])
    height, width = _block_side(n, _uniform_in(u[0], target_scale),
                                _uniform_in(u[1], target_aspect), grid_height, grid_width)
    targets = []
    for t in range(num_targets):
        top = tf.cast(u[4 + 2 * t] * tf.cast(grid_height - height, tf.float32), tf.int32)
        left = tf.cast(u[5 + 2 * t] * tf.cast(grid_width - width, tf.float32), tf.int32)
        targets.append(tf.reshape(_grid_box(grid_height, grid_width, top, left, height, width), [n]))
    targets = tf.stack(targets)
    covered = tf.reduce_any(targets, axis=0)
    context_height, context_width = _block_side(n, _uniform_in(u[2], context_scale), 1.0,
                                                grid_height, grid_width)
    offset = 4 + 2 * num_targets
    candidates = []
    for a in range(context_attempts):
        top = tf.cast(u[offset + 2 * a] * tf.cast(grid_height - context_height, tf.float32), tf.int32)
        left = tf.cast(u[offset + 2 * a + 1] * tf.cast(grid_width - context_width, tf.float32),
                       tf.int32)
        box = tf.reshape(_grid_box(grid_height, grid_width, top, left, context_height,
                                   context_width), [n])
        candidates.append(box & ~covered)
    candidates = tf.stack(candidates)
    counts = tf.reduce_sum(tf.cast(candidates, tf.int32), axis=1)
    enough = counts >= min_context
    chosen = tf.where(tf.reduce_any(enough), tf.argmax(tf.cast(enough, tf.int32)),
                      tf.argmax(counts))
    return tf.gather(candidates, chosen), targets


def sincos_position_embedding(grid_height: int, grid_width: int, width: int) -> np.ndarray:
    """MAE's fixed 2-d sine-cosine position embedding: `[grid_height * grid_width, width]` float32.

    The first half of the channels encodes the column, the second the row,
    each as `[sin(x w_k), cos(x w_k)]` with `w_k = 10000^(-k / (width / 4))`,
    k < width / 4 (so `width` must be a multiple of 4).
    """
    if width % 4:
        raise ValueError(f"sincos_position_embedding: width must be a multiple of 4, got {width}.")
    quarter = width // 4
    frequencies = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows, columns = np.meshgrid(np.arange(grid_height), np.arange(grid_width), indexing="ij")

    def encode(positions):
        angles = positions.reshape(-1)[:, None] * frequencies[None, :]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([encode(columns), encode(rows)], axis=1).astype(np.float32)
