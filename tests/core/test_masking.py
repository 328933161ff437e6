"""`keras_ssl.toolkit.masking` against numpy: patches, targets, and the mask samplers over many draws."""

import math

import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.random import example_seed, seeded
from keras_ssl.toolkit import masking

DRAWS = 400


def _draw(sampler, count=DRAWS, **kwargs):
    """`sampler(**kwargs)` for examples 0..count-1 of run seed 0, as numpy."""
    out = []
    for i in range(count):
        with seeded(example_seed(0, i)):
            out.append(tf.nest.map_structure(lambda t: t.numpy(), sampler(**kwargs)))
    return out


def test_patchify_orders_patches_row_major_and_pixels_row_column_channel():
    images = np.random.default_rng(0).random((2, 6, 4, 3)).astype(np.float32)
    patches = masking.patchify(images, 2).numpy()
    assert patches.shape == (2, 6, 12)
    for b in range(2):
        for row in range(3):
            for column in range(2):
                expected = images[b, 2 * row:2 * row + 2, 2 * column:2 * column + 2].reshape(-1)
                np.testing.assert_array_equal(patches[b, row * 2 + column], expected)
    np.testing.assert_array_equal(masking.unpatchify(patches, 2, 3, 2), images)


def test_normalized_pixel_target_is_each_patch_standardised_with_the_unbiased_variance():
    patches = np.random.default_rng(1).random((2, 5, 12)).astype(np.float32) * 3
    mean = patches.mean(-1, keepdims=True)
    expected = (patches - mean) / np.sqrt(patches.var(-1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(masking.normalized_pixel_target(patches), expected, rtol=1e-5,
                               atol=1e-5)


def test_random_patch_mask_keeps_k_patches_each_equally_likely():
    draws = _draw(masking.random_patch_mask, num_patches=16, mask_ratio=0.75)
    masked = np.stack([m for _, m in draws])
    for keep, mask in draws:
        assert keep.shape == (4,) and np.all(np.diff(keep) > 0)
        np.testing.assert_array_equal(np.nonzero(~mask)[0], keep)
    # Each patch is masked with probability 0.75: 400 draws put the rate
    # within 0.75 +- 4.5 standard deviations (0.022 each).
    assert np.all(np.abs(masked.mean(0) - 0.75) < 0.1), masked.mean(0)
    again = _draw(masking.random_patch_mask, 3, num_patches=16, mask_ratio=0.75)
    np.testing.assert_array_equal(np.stack([k for k, _ in again]),
                                  np.stack([k for k, _ in draws[:3]]))


@pytest.mark.parametrize("ratio, message", [
    (1.0, r"mask_ratio must be in \[0, 1\)"), (-0.1, r"must be in \[0, 1\)"),
    (0.97, "leaves no visible patch of 16")])
def test_a_mask_ratio_outside_the_range_is_refused(ratio, message):
    with pytest.raises(ValueError, match=message):
        masking.random_patch_mask(16, ratio)


def _beit_blocks(draws, target, largest, height, width, min_block, aspect):
    """BEiT's block placement in numpy, one attempt per row of `draws`."""
    mask = np.zeros((height, width), bool)
    log_low, log_high = math.log(aspect[0]), math.log(aspect[1])
    for u in draws.astype(np.float64):
        remaining = target - mask.sum()
        most = min(remaining, largest)
        area = min_block + u[0] * (most - min_block)
        ratio = math.exp(log_low + u[1] * (log_high - log_low))
        h, w = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
        if not (1 <= h < height and 1 <= w < width) or remaining <= 0:
            continue
        top, left = int(u[2] * (height - h + 1)), int(u[3] * (width - w + 1))
        new = (~mask[top:top + h, left:left + w]).sum()
        if 0 < new <= most:
            mask[top:top + h, left:left + w] = True
    return mask


@pytest.mark.parametrize("grid, ratio, min_block", [((8, 8), 0.3, 4), ((6, 5), 0.5, 2)])
def test_block_mask_places_beit_blocks_as_numpy_does(grid, ratio, min_block):
    rng = np.random.default_rng(2)
    aspect = (0.3, 1 / 0.3)
    target = round(ratio * grid[0] * grid[1])
    for _ in range(20):
        draws = rng.random((40, 4)).astype(np.float32)
        got = masking._place_blocks(tf.constant(draws), tf.constant(target), tf.constant(1000),
                                    *grid, min_block, aspect).numpy()
        np.testing.assert_array_equal(got, _beit_blocks(draws, target, 1000, *grid, min_block,
                                                        aspect))


def test_block_mask_reaches_its_ratio_and_never_more():
    counts = np.array([m.sum() for m in _draw(masking.block_mask, 100, grid_height=14,
                                              grid_width=14, mask_ratio=0.4)])
    assert counts.max() <= round(0.4 * 196)
    assert np.mean(counts == round(0.4 * 196)) > 0.9, counts
    ratios = tf.constant(np.linspace(0.0, 0.5, 6), tf.float32)
    for ratio in ratios:
        with seeded(example_seed(1, 0)):
            assert masking.block_mask(8, 8, ratio).numpy().sum() <= round(float(ratio) * 64)


@pytest.mark.parametrize("grid, min_block, message", [
    ((1, 8), 1, "blocks of at least 1 patches cannot be placed on a 1 x 8"),
    ((4, 4), 10, r"at most 3 x 3\); lower the minimum block to 1..9")])
def test_a_block_mask_the_grid_cannot_hold_is_refused(grid, min_block, message):
    with pytest.raises(ValueError, match=message):
        masking.block_mask(*grid, 0.3, min_block_patches=min_block)


def _box(mask_2d):
    """`(top, left, height, width)` of a mask that must be one filled rectangle."""
    rows, columns = np.nonzero(mask_2d)
    top, left = rows.min(), columns.min()
    height, width = rows.max() - top + 1, columns.max() - left + 1
    assert mask_2d.sum() == height * width, "not a filled rectangle"
    return top, left, height, width


def test_multi_block_targets_and_context_follow_i_jepa():
    grid = 14
    for context, targets in _draw(masking.multi_block_masks, 200, grid_height=grid,
                                  grid_width=grid):
        boxes = [_box(t.reshape(grid, grid)) for t in targets]
        assert len(boxes) == 4 and len({b[2:] for b in boxes}) == 1, "targets share one size"
        top, left, height, width = boxes[0]
        # Area int(N s) with s in [0.15, 0.2]; aspect in [0.75, 1.5] before rounding the sides.
        assert 0.15 * 196 - 2 * max(height, width) <= height * width <= 0.2 * 196 + 2 * max(
            height, width)
        assert 0.75 - 1.0 / width <= height / width <= 1.5 + 1.0 / width
        for t, l, h, w in boxes:
            assert t + h < grid and l + w < grid, "a block never touches the last row or column"
        assert not np.any(context & targets.any(0)), "the context holds no target patch"
        assert context.sum() >= 4


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_targets=0), "num_targets must be >= 1"),
    (dict(target_scale=(0.001, 0.002)), "hold no patch; raise target_scale"),
    (dict(context_scale=(0.9, 1.2)), r"context_scale must satisfy 0 < low <= high <= 1")])
def test_a_multi_block_layout_the_grid_cannot_hold_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        masking.multi_block_masks(8, 8, **kwargs)


def test_sincos_position_embedding_is_sin_cos_of_column_then_row():
    embedding = masking.sincos_position_embedding(3, 4, 8)
    frequencies = 1.0 / 10000 ** (np.arange(2) / 2)
    for row in range(3):
        for column in range(4):
            expected = np.concatenate([np.sin(column * frequencies), np.cos(column * frequencies),
                                       np.sin(row * frequencies), np.cos(row * frequencies)])
            np.testing.assert_allclose(embedding[row * 4 + column], expected, atol=1e-6)
    with pytest.raises(ValueError, match="multiple of 4"):
        masking.sincos_position_embedding(2, 2, 6)


def test_a_method_that_needs_a_vit_refuses_another_backbone_naming_the_binding():
    from keras_ssl import Method
    from keras_ssl.method import BackboneMismatchError
    from keras_ssl.testing import tiny_backbone, tiny_backbone_for

    class NeedsMaskToken(Method):
        required_backbone = {"family": "vit", "mask_token": True}

    with pytest.raises(BackboneMismatchError, match=(
            r"NeedsMaskToken needs a backbone with family='vit', mask_token=True; 'resnet10_v2' has "
            r"family='resnet_v2', mask_token=None. Bind keras_ssl.build_method.backbone = 'vit' "
            r"and vit.mask_token = True.$")):
        NeedsMaskToken(tiny_backbone())
    with pytest.raises(BackboneMismatchError, match=r"Bind vit.mask_token = True.$"):
        NeedsMaskToken(tiny_backbone("vit"))
    NeedsMaskToken(tiny_backbone_for(NeedsMaskToken))
