"""CIE Lab (D65) in TensorFlow and the quantised ab colour space of Colorization (private).

sRGB in [0, 1] -> linear RGB (the sRGB transfer curve) -> XYZ (sRGB primaries,
D65 white) -> L*a*b* relative to the D65 white point (0.95047, 1, 1.08883).
`lab_to_rgb` inverts it and clips to [0, 1].

The ab plane is quantised on a grid of step 10 (bin centres at multiples of
10). `in_gamut_bins()` computes, with numpy, the bins that sRGB colours reach
when every colour of a 64-level-per-channel sRGB cube (262,144 colours) is
assigned to its nearest bin; it gives about 260 bins (Zhang et al. keep 313
with their own gamut test; pass your own bin set to the method to use those).
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

WHITE_D65 = (0.95047, 1.0, 1.08883)
RGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)
XYZ_TO_RGB = np.linalg.inv(RGB_TO_XYZ)
_DELTA = 6.0 / 29.0


def _srgb_to_linear(c):
    return tf.where(c <= 0.04045, c / 12.92, tf.pow((tf.maximum(c, 0.04045) + 0.055) / 1.055, 2.4))


def _linear_to_srgb(c):
    c = tf.clip_by_value(c, 0.0, 1.0)
    return tf.where(c <= 0.0031308, 12.92 * c, 1.055 * tf.pow(tf.maximum(c, 0.0031308), 1 / 2.4) - 0.055)


def _f(t):
    return tf.where(t > _DELTA**3, tf.pow(tf.maximum(t, _DELTA**3), 1.0 / 3.0),
                    t / (3 * _DELTA**2) + 4.0 / 29.0)


def _f_inverse(t):
    return tf.where(t > _DELTA, t**3, 3 * _DELTA**2 * (t - 4.0 / 29.0))


def rgb_to_lab(rgb: tf.Tensor) -> tf.Tensor:
    """sRGB `[..., 3]` in [0, 1] -> CIE Lab (D65): L in [0, 100], a and b about [-128, 128]."""
    rgb = tf.cast(rgb, tf.float32)
    linear = _srgb_to_linear(tf.clip_by_value(rgb, 0.0, 1.0))
    xyz = tf.tensordot(linear, tf.constant(RGB_TO_XYZ.T, tf.float32), axes=1)
    fx, fy, fz = tf.unstack(_f(xyz / tf.constant(WHITE_D65, tf.float32)), axis=-1)
    return tf.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def lab_to_rgb(lab: tf.Tensor) -> tf.Tensor:
    """CIE Lab (D65) `[..., 3]` -> sRGB in [0, 1] (out-of-gamut colours clipped)."""
    lab = tf.cast(lab, tf.float32)
    l, a, b = tf.unstack(lab, axis=-1)
    fy = (l + 16.0) / 116.0
    f = tf.stack([fy + a / 500.0, fy, fy - b / 200.0], axis=-1)
    xyz = _f_inverse(f) * tf.constant(WHITE_D65, tf.float32)
    linear = tf.tensordot(xyz, tf.constant(XYZ_TO_RGB.T, tf.float32), axes=1)
    return _linear_to_srgb(linear)


def luminance_image(rgb: tf.Tensor) -> tf.Tensor:
    """The L channel as a gray image `[..., 3]` in [0, 1] (L / 100 in every channel)."""
    l = rgb_to_lab(rgb)[..., :1] / 100.0
    return tf.concat([l, l, l], axis=-1)


def _rgb_to_lab_numpy(rgb: np.ndarray) -> np.ndarray:
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ RGB_TO_XYZ.T / np.array(WHITE_D65)
    f = np.where(xyz > _DELTA**3, np.cbrt(xyz), xyz / (3 * _DELTA**2) + 4.0 / 29.0)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                     200 * (f[..., 1] - f[..., 2])], axis=-1)


@functools.lru_cache(maxsize=8)
def _in_gamut_bins(step: int, levels: int) -> tuple:
    values = np.linspace(0.0, 1.0, levels)
    rgb = np.stack(np.meshgrid(values, values, values, indexing="ij"), -1).reshape(-1, 3)
    ab = _rgb_to_lab_numpy(rgb)[:, 1:]
    centres = np.unique(np.round(ab / step).astype(np.int64), axis=0) * step
    return tuple(map(tuple, centres.astype(np.float32).tolist()))


def in_gamut_bins(step: int = 10, levels: int = 64) -> np.ndarray:
    """ab bin centres `[Q, 2]` (float32) reached by sRGB colours under nearest-bin quantisation.

    Args:
      step: Grid step of the ab plane (10).
      levels: Levels per sRGB channel of the colour cube that is quantised.
    """
    return np.array(_in_gamut_bins(int(step), int(levels)), np.float32)


def annealed_mean(probabilities: tf.Tensor, bins: tf.Tensor, temperature: float = 0.38) -> tf.Tensor:
    """Zhang et al.'s decoding: ab = sum_q softmax(log p / T)_q * bin_q. `[..., Q]` -> `[..., 2]`."""
    logits = tf.math.log(tf.maximum(tf.cast(probabilities, tf.float32), 1e-12)) / temperature
    return tf.tensordot(tf.nn.softmax(logits, axis=-1), tf.cast(bins, tf.float32), axes=1)


def soft_encode(ab: tf.Tensor, bins: tf.Tensor, k: int = 5, sigma: float = 5.0) -> tf.Tensor:
    """Soft targets `[..., Q]`: the `k` nearest bins weighted by a Gaussian (sigma), summing to 1."""
    ab = tf.cast(ab, tf.float32)
    bins = tf.cast(bins, tf.float32)
    squared = tf.reduce_sum(tf.square(ab[..., None, :] - bins), axis=-1)
    neg, index = tf.math.top_k(-squared, k=k)
    weights = tf.nn.softmax(neg / (2.0 * sigma**2), axis=-1)  # exp(-d^2 / 2 sigma^2), normalised
    return tf.reduce_sum(weights[..., None] * tf.one_hot(index, tf.shape(bins)[0]), axis=-2)


def nearest_bin(ab: tf.Tensor, bins: tf.Tensor) -> tf.Tensor:
    """Index of the nearest bin of every ab pair `[..., 2]` -> `[...]` int32."""
    squared = tf.reduce_sum(tf.square(tf.cast(ab, tf.float32)[..., None, :] - tf.cast(bins, tf.float32)), -1)
    return tf.argmin(squared, axis=-1, output_type=tf.int32)


def rebalancing_weights(prior: np.ndarray, bins: np.ndarray, sigma: float = 5.0, lam: float = 0.5):
    """Zhang et al.'s class rebalancing: w ~ ((1 - lam) * smooth(p) + lam / Q)^-1, E_smooth(p)[w] = 1."""
    prior = np.asarray(prior, np.float64)
    prior = prior / max(prior.sum(), 1e-12)
    bins = np.asarray(bins, np.float64)
    kernel = np.exp(-((bins[:, None] - bins[None]) ** 2).sum(-1) / (2 * sigma**2))
    smooth = kernel @ prior
    smooth /= smooth.sum()
    weights = 1.0 / ((1 - lam) * smooth + lam / len(bins))
    return (weights / (smooth * weights).sum()).astype(np.float32)
