"""The ViT family's specifics: sizes, tokens, position embeddings, token subsets, masking.

The generic contract (end-points, gradients, checkpoint, export, weight decay,
k^2 growth) runs over `vit` in test_families.py with every other family.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.backbones import build_backbone
from keras_ssl.backbones.vit import encode_tokens
from keras_ssl.testing import TINY_VIT


def _vit(**overrides):
    keras.utils.set_random_seed(0)
    return build_backbone("vit", **{**TINY_VIT, **overrides})


def _images(size=16, batch=2, seed=0):
    return tf.random.stateless_uniform((batch, size, size, 3), seed=[seed, 1])


@pytest.mark.parametrize("k, expected", [(6, 21_665_664), (12, 85_798_656)])
def test_vit_small_and_base_at_16_px_patches_have_the_papers_parameter_counts(k, expected):
    # ViT-S/16 21.7M and ViT-B/16 85.8M without a head (Touvron et al. 2021):
    # patch embedding, class token and its position, 14 x 14 positions, 12
    # blocks and the final norm.
    width = 64 * k
    block = 4 * width + (3 * width * width + 3 * width) + (width * width + width) \
        + 2 * (4 * width * width) + 4 * width + width
    by_hand = (16 * 16 * 3 * width + width) + 2 * width + 14 * 14 * width + 12 * block \
        + 2 * width
    net = build_backbone("vit", widening_factor=k, depth=12, patch_size=16, image_size=224)
    assert net.count_params() == by_hand == expected


def test_blocks_are_patch_token_maps_and_pre_logits_the_normed_class_token():
    net = _vit(depth=3, num_registers=2)
    outputs = net(_images())
    assert net.endpoint_names == ("block1", "block2", "block3", "pre_logits")
    assert all(tuple(outputs[f"block{i}"].shape) == (2, 4, 4, 64) for i in (1, 2, 3))
    tokens = encode_tokens(net, _images())
    np.testing.assert_allclose(outputs["pre_logits"], tokens["class_token"], atol=1e-6)
    assert tuple(tokens["registers"].shape) == (2, 2, 64)
    # The last block's map is its patch tokens before the final norm.
    norm = net.get_layer("encoder_norm")
    np.testing.assert_allclose(
        norm(tf.reshape(outputs["block3"], (2, 16, 64))), tokens["patch_tokens"], atol=1e-5)


def test_mean_pooling_averages_the_normed_patch_tokens():
    net = _vit(pooling="mean", num_registers=1)
    tokens = encode_tokens(net, _images())
    np.testing.assert_allclose(net(_images())["pre_logits"],
                               tf.reduce_mean(tokens["patch_tokens"], axis=1), atol=1e-6)


def test_layer_scale_starts_at_its_value_and_scales_both_branches():
    net = _vit(layer_scale=1e-5)
    scales = [w for w in net.weights if "layer_scale" in w.path]
    assert len(scales) == 2 * TINY_VIT["depth"]
    assert all(np.allclose(w.numpy(), 1e-5) for w in scales)
    # With both branches scaled by 1e-5 each block is nearly the identity.
    embedded = net.get_layer("tokens")(net.get_layer("patch_embedding")(_images()))
    block = net.get_layer("block1_transformer")
    assert float(tf.reduce_max(tf.abs(block(embedded) - embedded))) < 1e-3


def _keys_cubic(x, a=-0.75):
    x = abs(x)
    if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a if x < 2 else 0.0


def _numpy_bicubic(grid, size):
    """1-d bicubic resize of `grid` [n, C] to `size` rows, sample by sample (PyTorch's rule)."""
    n = len(grid)
    out = np.zeros((size, grid.shape[1]))
    for i in range(size):
        source = (i + 0.5) * n / size - 0.5
        base = int(np.floor(source))
        for k in range(base - 1, base + 3):
            out[i] += _keys_cubic(source - k) * grid[min(max(k, 0), n - 1)]
    return out


@pytest.mark.parametrize("grid, height, width", [(4, 6, 2), (4, 2, 7), (3, 8, 8), (5, 5, 3)])
def test_position_embeddings_resize_bicubically_as_the_formula_says(grid, height, width):
    from keras_ssl.backbones.vit import bicubic_matrix

    rng = np.random.default_rng(grid)
    position = rng.normal(size=(grid, grid, 3))
    rows = np.stack([_numpy_bicubic(position[:, j], height) for j in range(grid)], axis=1)
    expected = np.stack([_numpy_bicubic(rows[i], width) for i in range(height)])
    got = tf.einsum("hi,ijc,wj->hwc", bicubic_matrix(height, grid),
                    tf.constant(position, tf.float32), bicubic_matrix(width, grid))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(bicubic_matrix(grid, grid), np.eye(grid), atol=1e-6)


def test_other_image_sizes_use_resized_position_embeddings():
    net = _vit(image_size=16)  # positions learned on a 4 x 4 grid
    embedding = net.get_layer("tokens")
    np.testing.assert_array_equal(embedding.positions(4, 4),
                                  tf.reshape(embedding.position, (1, 16, 64)))
    # A constant grid stays constant at any size (bicubic weights sum to 1).
    embedding.position.assign(tf.fill(embedding.position.shape, 0.25))
    np.testing.assert_allclose(embedding.positions(6, 2), tf.fill((1, 12, 64), 0.25), atol=1e-6)
    # DINO's local crops and larger views go through the same network.
    for size, grid in ((8, 2), (24, 6), (32, 8)):
        outputs = net(_images(size))
        assert tuple(outputs["block1"].shape) == (2, grid, grid, 64)
        assert np.isfinite(outputs["pre_logits"]).all()


def test_a_token_subset_encodes_the_kept_tokens_with_their_own_positions():
    net = _vit(num_registers=1)
    images = _images()
    keep = tf.constant([[3, 0, 9, 15, 6], [14, 2, 2, 7, 1]], tf.int32)
    subset = encode_tokens(net, images, keep=keep)
    # The reference: the full embedded sequence (positions added), its kept
    # patch tokens gathered after the class token and the register, then the blocks.
    full = net.get_layer("tokens")(net.get_layer("patch_embedding")(images))
    patches = tf.gather(full[:, 2:], keep, batch_dims=1)
    x = tf.concat([full[:, :2], patches], axis=1)
    for i in range(TINY_VIT["depth"]):
        x = net.get_layer(f"block{i + 1}_transformer")(x)
    x = net.get_layer("encoder_norm")(x)
    np.testing.assert_allclose(subset["patch_tokens"], x[:, 2:], atol=1e-5)
    np.testing.assert_allclose(subset["class_token"], x[:, 0], atol=1e-5)


def test_all_tokens_in_any_order_give_the_full_encoder_permuted():
    net = _vit()
    images = _images()
    order = tf.constant(np.stack([np.random.default_rng(s).permutation(16) for s in (0, 1)]),
                        tf.int32)
    permuted = encode_tokens(net, images, keep=order)
    full = encode_tokens(net, images)
    np.testing.assert_allclose(permuted["class_token"], full["class_token"], atol=1e-5)
    np.testing.assert_allclose(permuted["patch_tokens"],
                               tf.gather(full["patch_tokens"], order, batch_dims=1), atol=1e-5)
    assert float(tf.reduce_max(tf.abs(permuted["patch_tokens"] - full["patch_tokens"]))) > 1e-2


def test_hidden_tokens_change_nothing_the_visible_ones_encode():
    # I-JEPA's context at a static length: the visible tokens encode as if alone.
    net = _vit(num_registers=1)
    images = _images()
    context = np.zeros((2, 16), bool)
    context[0, [0, 3, 5, 9, 10]] = context[1, [1, 2, 7, 8, 15]] = True
    padded = encode_tokens(net, images, visible=context)
    alone = encode_tokens(net, images, keep=tf.constant(np.nonzero(context)[1].reshape(2, 5),
                                                        tf.int32))
    np.testing.assert_allclose(tf.boolean_mask(padded["patch_tokens"], context),
                               tf.reshape(alone["patch_tokens"], (10, -1)), atol=1e-5)
    np.testing.assert_allclose(padded["class_token"], alone["class_token"], atol=1e-5)
    everything = encode_tokens(net, images, visible=np.ones((2, 16), bool))
    np.testing.assert_allclose(everything["patch_tokens"], encode_tokens(net, images)["patch_tokens"],
                               atol=1e-6)


def test_masked_patches_become_the_mask_token_at_their_position():
    net = _vit(mask_token=True)
    embedding = net.get_layer("tokens")
    embedding.mask_token.assign(tf.fill(embedding.mask_token.shape, 3.0))
    patch_map = net.get_layer("patch_embedding")(_images())
    mask = tf.constant(np.arange(32).reshape(2, 16) % 3 == 0)
    masked = embedding(patch_map, masked=mask)[:, 1:]
    plain = embedding(patch_map)[:, 1:]
    positions = embedding.positions(4, 4)
    expected = tf.where(mask[..., None], 3.0 + positions, plain)
    np.testing.assert_allclose(masked, expected, atol=1e-6)
    # Nothing masked is the plain encoder.
    np.testing.assert_allclose(encode_tokens(net, _images(), masked=tf.zeros((2, 16), bool))
                               ["class_token"], net(_images())["pre_logits"], atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(image_size=30), "input side of 30 px is not a multiple of the patch size 4"),
    (dict(pooling="max"), "unknown pooling 'max'"),
    (dict(depth=0), "depth must be a positive integer"),
    (dict(num_registers=-1), "num_registers must be >= 0"),
])
def test_bad_arguments_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _vit(**kwargs)


def test_an_image_the_patch_does_not_divide_is_refused_with_the_fix():
    from keras_ssl.backbones import BackboneInputError

    with pytest.raises(BackboneInputError, match=r"side of 18 px .* keras_ssl.train.image_size, e.g. 16"):
        _vit()(_images(18))


def test_masking_without_the_mask_token_says_how_to_add_it():
    with pytest.raises(ValueError, match="bind `vit.mask_token = True`"):
        encode_tokens(_vit(), _images(), masked=tf.ones((2, 16), bool))


def test_token_access_needs_a_vit():
    from keras_ssl.testing import tiny_backbone

    with pytest.raises(ValueError, match="encode_tokens needs a vit backbone"):
        encode_tokens(tiny_backbone(), _images())
