"""Adaptive max pooling of feature maps to a bounded size (Kolesnikov et al.).

Intermediate end-points are too large for a linear probe (ResNet-50 block1 at
224 px is 56x56x256 = 802,816 values). Following Kolesnikov et al. 2019, a map
with more than 9000 values is max-pooled to a smaller spatial grid before it is
flattened, so every layer is probed with features of comparable size.
"""

from __future__ import annotations

import logging
import math

import numpy as np

__all__ = ["MAX_FEATURE_VALUES", "POOLING_MODES", "VISSL_POOLS", "pooled_grid",
           "adaptive_max_pool", "avg_pool", "flatten_features"]

MAX_FEATURE_VALUES = 9000
POOLING_MODES = ("adaptive", "vissl")

# Goyal et al. / VISSL fixed average pools for ResNet-50 at 224 px, keyed by the
# map shape (H, W, C): (kernel, stride, padding) -> flattened size.
VISSL_POOLS = {
    (112, 112, 64): (10, 10, 4),   # conv1 -> 12x12x64 = 9216
    (56, 56, 256): (16, 8, 0),     # res2 -> 6x6x256 = 9216
    (28, 28, 512): (13, 5, 0),     # res3 -> 4x4x512 = 8192
    (14, 14, 1024): (8, 3, 0),     # res4 -> 3x3x1024 = 9216
    (7, 7, 2048): (6, 1, 0),       # res5 -> 2x2x2048 = 8192
}

_log = logging.getLogger(__name__)
_warned_shapes = set()


def pooled_grid(height: int, width: int, channels: int,
                max_values: int = MAX_FEATURE_VALUES) -> tuple[int, int]:
    """Returns the output grid ``(h', w')`` that pools a map to at most `max_values`.

    The grid keeps as many cells as possible (the least pooling) while
    ``h' * w' * channels <= max_values`` and the grid keeps the map's aspect
    ratio to within one cell: both sides are scaled by the same factor, floored,
    and then each may grow by one cell if the bound still holds (a side already
    at one cell leaves the other to shrink further). A map already
    within the bound keeps its grid; when ``channels`` alone exceeds the bound
    the grid is 1x1 (global max pooling), the most pooling can do.

    Args:
        height: Height of the feature map.
        width: Width of the feature map.
        channels: Number of channels.
        max_values: Bound on ``h' * w' * channels``.

    Returns:
        ``(h', w')`` with ``1 <= h' <= height`` and ``1 <= w' <= width``.

    Example:
        >>> pooled_grid(56, 56, 256)   # 6 * 5 * 256 = 7680 <= 9000
        (6, 5)
    """
    if min(height, width, channels) < 1:
        raise ValueError(f"Feature map sizes must be positive, got {height}x{width}x{channels}.")
    if height * width * channels <= max_values:
        return height, width
    scale = math.sqrt(max_values / (height * width * channels))
    base_h = min(height, max(1, math.floor(height * scale)))
    base_w = min(width, max(1, math.floor(width * scale)))
    if base_h * base_w * channels > max_values:
        # A side clamped at one cell (e.g. a 1 x W map) leaves the other to shrink.
        if base_h == 1:
            base_w = max(1, min(width, max_values // channels))
        else:
            base_h = max(1, min(height, max_values // (channels * base_w)))
    best = (base_h, base_w)
    for h in (base_h, base_h + 1):
        for w in (base_w, base_w + 1):
            fits = h <= height and w <= width and h * w * channels <= max_values
            # Ties go to the taller grid, deterministically.
            if fits and (h * w, h) > (best[0] * best[1], best[0]):
                best = (h, w)
    return best


def _bins(size: int, out: int) -> list[tuple[int, int]]:
    """Near-equal bins [start, end) covering 0..size-1 with `out` bins.

    Bin i spans floor(i * size / out) to ceil((i + 1) * size / out); neighbours
    overlap by one element when `out` does not divide `size`.
    """
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def adaptive_max_pool(features: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Max-pools ``[batch, H, W, C]`` features to ``[batch, h', w', C]``.

    Args:
        features: A 4-D array.
        grid: Output ``(h', w')``, each no larger than the input's side.

    Returns:
        The pooled array, same dtype.

    Example:
        >>> adaptive_max_pool(np.arange(16.).reshape(1, 4, 4, 1), (2, 2))[0, ..., 0]
        array([[ 5.,  7.],
                      [13., 15.]])
    """
    _, height, width, _ = features.shape
    out_h, out_w = grid
    if not (1 <= out_h <= height and 1 <= out_w <= width):
        raise ValueError(f"Cannot pool a {height}x{width} map to {out_h}x{out_w}.")
    if (out_h, out_w) == (height, width):
        return features
    # The max over a rectangle is separable: pool rows, then columns.
    rows = np.stack([features[:, a:b].max(axis=1) for a, b in _bins(height, out_h)], axis=1)
    return np.stack([rows[:, :, a:b].max(axis=2) for a, b in _bins(width, out_w)], axis=2)


def avg_pool(features: np.ndarray, kernel: int, stride: int, padding: int = 0) -> np.ndarray:
    """Square average pooling of ``[batch, H, W, C]`` with zero padding counted.

    Matches PyTorch's ``AvgPool2d(kernel, stride, padding)`` (``count_include_pad``,
    floor mode), which VISSL uses for its fixed pools.

    Args:
        features: A 4-D array.
        kernel: Window side.
        stride: Step between windows.
        padding: Zeros added on every side (counted in the average).

    Returns:
        ``[batch, (H + 2p - k) // s + 1, (W + 2p - k) // s + 1, C]`` float32.
    """
    x = np.pad(features, [(0, 0), (padding, padding), (padding, padding), (0, 0)])
    _, height, width, _ = x.shape
    out_h, out_w = (height - kernel) // stride + 1, (width - kernel) // stride + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(f"Kernel {kernel} does not fit a {height}x{width} (padded) map.")
    rows = np.stack([x[:, i * stride:i * stride + kernel].mean(axis=1) for i in range(out_h)],
                    axis=1)
    return np.stack([rows[:, :, j * stride:j * stride + kernel].mean(axis=2)
                     for j in range(out_w)], axis=2).astype(np.float32)


def flatten_features(features: np.ndarray, max_values: int = MAX_FEATURE_VALUES,
                     mode: str = "adaptive") -> np.ndarray:
    """Pools a batch of end-point outputs if needed and flattens them to [batch, D].

    With ``mode="vissl"`` a map whose shape is in `VISSL_POOLS` (ResNet-50 at
    224 px) is average-pooled with VISSL's fixed kernel/stride; any other map
    falls back to adaptive max pooling with one warning per shape.

    Args:
        features: ``[batch, D]`` vectors (returned as they are) or
            ``[batch, H, W, C]`` maps (pooled with `adaptive_max_pool` to the
            `pooled_grid` when larger than `max_values`, then flattened row-major).
        max_values: The bound on values per example.
        mode: ``"adaptive"`` (Kolesnikov, default) or ``"vissl"`` (Goyal/VISSL).

    Returns:
        A 2-D array ``[batch, D']``.

    Example:
        >>> flatten_features(np.zeros([2, 56, 56, 256], np.float32)).shape
        (2, 7680)
    """
    if mode not in POOLING_MODES:
        raise ValueError(f"Unknown pooling mode {mode!r}; use one of {POOLING_MODES}.")
    if features.ndim == 4 and mode == "vissl":
        shape = tuple(features.shape[1:])
        if shape in VISSL_POOLS:
            return avg_pool(features, *VISSL_POOLS[shape]).reshape(features.shape[0], -1)
        if shape not in _warned_shapes and np.prod(shape) > max_values:
            _warned_shapes.add(shape)
            _log.warning("No VISSL pool for a %s map (VISSL's table is for ResNet-50 at "
                         "224 px); using adaptive max pooling.", "x".join(map(str, shape)))
    if features.ndim == 4:
        grid = pooled_grid(*features.shape[1:], max_values=max_values)
        features = adaptive_max_pool(features, grid)
    return features.reshape(features.shape[0], -1)
