"""The backbone zoo: every registered family, built tiny, plus each family's specifics.

The generic tests are parametrised over `registry.BACKBONES.names()`, so a
newly registered family is checked as soon as it is installed (a family not
listed in `TINY` is built with `widening_factor=1` only).
"""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl import registry
from keras_ssl.backbones import backbone_spec, build_backbone, output_dim
from keras_ssl.backbones.common import Layers
from keras_ssl.backbones.revnet import ReversibleUnit
from tests.helpers import REPO
from keras_ssl.testing import TINY_BACKBONE, TINY_KERAS_HUB, check_backbone
from tests.helpers.tiny_run import tiny_run_bindings, tiny_shapes_name

RESIDUAL = ("after_root", "block1", "block2", "block3", "block4", "pre_logits")
# Tiny arguments and the end-point shapes they give for a 32-px batch of 2.
TINY = {
    "resnet_v1": TINY_BACKBONE,
    "resnet_v2": TINY_BACKBONE,
    "revnet": TINY_BACKBONE,
    "vgg19_bn": dict(widening_factor=1, fc6_kernel=1),
    "alexnet": dict(widening_factor=1, fc6_kernel=1),
    "resnet9": dict(widening_factor=1),
    "vit": dict(widening_factor=1, depth=2, patch_size=4, image_size=32),
    "keras_hub": dict(TINY_KERAS_HUB, image_size=32),
}
_RESIDUAL_SHAPES = {
    "after_root": (2, 32, 32, 16),
    "block1": (2, 32, 32, 16),
    "block2": (2, 16, 16, 32),
    "block3": (2, 8, 8, 64),
    "block4": (2, 4, 4, 128),
    "pre_logits": (2, 128),
}
SHAPES = {
    "resnet_v1": _RESIDUAL_SHAPES,
    "resnet_v2": _RESIDUAL_SHAPES,
    "revnet": _RESIDUAL_SHAPES,
    "vgg19_bn": {
        "block1": (2, 32, 32, 8),
        "block2": (2, 16, 16, 16),
        "block3": (2, 8, 8, 32),
        "block4": (2, 4, 4, 64),
        "block5": (2, 2, 2, 64),
        "fc6": (2, 1, 1, 512),
        "pre_logits": (2, 512),
    },
    "alexnet": {
        "conv1": (2, 7, 7, 24),
        "conv2": (2, 3, 3, 64),
        "conv3": (2, 1, 1, 96),
        "conv4": (2, 1, 1, 96),
        "conv5": (2, 1, 1, 64),
        "pre_logits": (2, 1024),
    },
    "resnet9": {
        "after_root": (2, 32, 32, 16),
        "block1": (2, 16, 16, 32),
        "block2": (2, 8, 8, 64),
        "block3": (2, 4, 4, 128),
        "pre_logits": (2, 128),
    },
    "vit": {"block1": (2, 8, 8, 64), "block2": (2, 8, 8, 64), "pre_logits": (2, 64)},
    "keras_hub": {"P2": (2, 8, 8, 64), "P3": (2, 4, 4, 16), "pre_logits": (2, 16)},
}
FAMILIES = registry.BACKBONES.names()
# keras-hub's networks are sized by their own config, not by a widening factor.
WIDENED = [name for name in FAMILIES if name != "keras_hub"]


def tiny(name, **overrides):
    """Family `name` built with its `TINY` arguments (widening factor 1 for others)."""
    return build_backbone(name, **{**TINY.get(name, dict(widening_factor=1)), **overrides})


def _kernels(net, regularized_only=False):
    weights = [w for w in net.weights if w.path.endswith("kernel")]
    if regularized_only and backbone_spec(net).get("family") == "revnet":
        weights = [w for w in weights if not w.path.startswith("root_conv")]
    return weights


def test_every_family_with_tiny_settings_is_registered():
    assert set(TINY) <= set(FAMILIES)


@pytest.mark.parametrize("name", FAMILIES)
def test_endpoints_shapes_gradients_and_weight_decay(name):
    net = tiny(name, weight_decay=1e-2)
    images = tf.random.uniform((2, 32, 32, 3), seed=1)
    with tf.GradientTape() as tape:
        out = net(images, training=True)
        loss = tf.reduce_sum(out["pre_logits"])
    assert tuple(out) == net.endpoint_names
    assert len(out["pre_logits"].shape) == 2 and output_dim(net) == out["pre_logits"].shape[-1]
    if name in SHAPES:
        assert {k: tuple(v.shape) for k, v in out.items()} == SHAPES[name]
        assert backbone_spec(net)["family"] == name
    grads = tape.gradient(loss, net.trainable_variables)
    assert grads and all(g is not None for g in grads)
    # Weight decay wd means a gradient wd * w: keras L2(wd / 2) on every kernel.
    expected = 1e-2 / 2 * sum(float(tf.reduce_sum(tf.square(w))) for w in _kernels(net, True))
    assert float(tf.add_n(net.losses)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", WIDENED)
def test_convolution_weights_grow_as_k_squared(name):
    def conv_params(k):
        return sum(int(np.prod(w.shape)) for w in _kernels(tiny(name, widening_factor=k)))

    # Only the first convolution (3 input channels) grows linearly in k.
    ratio = conv_params(2) / conv_params(1)
    assert 3.9 < ratio <= 4.0


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_keeps_the_backbone_contract(name):
    """End-points, gradients, checkpoint, strict arguments (`keras_ssl.testing.check_backbone`)."""
    check_backbone(name, slow=False, **TINY.get(name, dict(widening_factor=1)))


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_keeps_the_contract_through_its_export(name):
    check_backbone(name, **TINY.get(name, dict(widening_factor=1)))


# ------------------------------------------------------------------ ResNet v1
def test_resnet_v1_final_relu_and_projection_shortcuts():
    net = tiny("resnet_v1")
    out = net(tf.random.normal((2, 16, 16, 3)), training=False)
    for key in RESIDUAL[1:]:
        assert float(tf.reduce_min(out[key])) >= 0.0, key
    names = {layer.name: layer for layer in net.layers}
    # Same shape in and out: identity shortcut; stride 2 or a new width: 1x1 conv + BN.
    assert "block1_unit1_shortcut" not in names
    assert names["block2_unit1_shortcut"].kernel_size == (1, 1)
    assert names["block2_unit1_shortcut"].strides == (2, 2)
    assert "block2_unit1_shortcut_bn" in names
    # The root of v1 is conv-BN-ReLU (v2 has no BN before the first unit).
    assert "root_bn" in names
    assert "root_bn" not in {layer.name for layer in tiny("resnet_v2").layers}


def test_resnet_v1_bottleneck_strides_on_the_3x3_conv():
    net = build_backbone("resnet_v1", depth=26, widening_factor=1, small_image_stem=True)
    names = {layer.name: layer for layer in net.layers}
    assert names["block2_unit1_conv1"].strides == (1, 1)
    assert names["block2_unit1_conv2"].strides == (2, 2)
    assert names["block2_unit1_conv2"].kernel_size == (3, 3)
    # Bottleneck widths: block1 outputs 64 k from a 16 k root -> projection.
    assert names["block1_unit1_shortcut"].filters == 64
    assert names["block1_unit1_conv1"].filters == 16
    assert output_dim(net) == 512


def test_resnet_v1_has_no_last_relu_switch():
    with pytest.raises(TypeError):
        build_backbone("resnet_v1", last_relu=False)


# --------------------------------------------------------------------- RevNet
@pytest.mark.parametrize("kind", ["basic", "bottleneck"])
@pytest.mark.parametrize("training", [False, True])
def test_reversible_unit_input_is_recovered_from_its_output(kind, training):
    unit = ReversibleUnit(32, kind, Layers(0.0, 0.99, 1e-3, False), name="unit")
    x = tf.random.normal((2, 8, 8, 32), seed=3)
    y = unit(x, training=training)
    x1, x2 = tf.split(x, 2, axis=-1)
    # Output is concat(x2, x1 + F(x2)).
    np.testing.assert_allclose(y[..., :16], x2)
    np.testing.assert_allclose(y[..., 16:] - unit.residual(x2, training=training), x1, atol=1e-5)
    np.testing.assert_allclose(unit.inverse(y, training=training), x, atol=1e-5)


def test_revnet_blocks_are_reversible_inside_the_network():
    net = tiny("revnet")
    units = [layer for layer in net.layers if isinstance(layer, ReversibleUnit)]
    assert [u.name for u in units] == [f"block{b}_unit1" for b in range(1, 5)]
    inner = keras.Model(net.inputs, [[u.input for u in units], [u.output for u in units]])
    inputs, outputs = inner(tf.random.uniform((2, 16, 16, 3), seed=4), training=False)
    for unit, x, y in zip(units, inputs, outputs):
        np.testing.assert_allclose(unit.inverse(y, training=False), x, atol=1e-4, err_msg=unit.name)


def test_revnet_root_has_no_batch_norm_and_stages_pad_channels():
    net = build_backbone("revnet", depth=10, widening_factor=1)  # 7x7 root + max-pool
    names = [layer.name for layer in net.layers]
    assert names[:3] == ["images", "root_conv", "root_pool"]
    out = net(tf.random.uniform((1, 64, 64, 3)), training=False)
    assert out["after_root"].shape == (1, 16, 16, 16)
    assert out["block4"].shape == (1, 2, 2, 128)
    # Kolesnikov's RevNet has no final ReLU by default.
    assert float(tf.reduce_min(out["block4"])) < 0.0
    # Between stages: 2x2 average pool, channels zero-padded on both sides.
    down = net.get_layer("block2_downsample")
    x = tf.random.normal((1, 4, 4, 16))
    y = down(x)
    assert y.shape == (1, 2, 2, 32)
    np.testing.assert_allclose(y[..., 8:24], tf.nn.avg_pool2d(x, 2, 2, "SAME"), atol=1e-6)
    assert float(tf.reduce_max(tf.abs(y[..., :8]))) == 0.0
    assert float(tf.reduce_max(tf.abs(y[..., 24:]))) == 0.0


def test_patch_strides_keep_a_larger_block4():
    net = build_backbone(
        "revnet", depth=10, widening_factor=1, root_stride=1, block_strides=(1, 2, 2, 1)
    )
    out = net(tf.zeros((1, 64, 64, 3)), training=False)
    # Root stride 1 + max-pool 2, then strides 2, 2, 1: 64 / 2 / 4 = 8.
    assert out["block4"].shape == (1, 8, 8, 128)


# ------------------------------------------------------------------------ VGG
def test_vgg_fc6_is_a_convolution_over_the_block5_map():
    net = build_backbone("vgg19_bn", widening_factor=1)  # fc6_kernel 7, as at 224 px
    out = net(tf.zeros((2, 32, 32, 3)), training=False)
    assert out["block5"].shape == (2, 2, 2, 64)
    assert out["fc6"].shape == (2, 1, 1, 512)
    assert net.get_layer("fc6").kernel.shape == (7, 7, 64, 512)
    assert net.get_layer("fc7").kernel.shape == (1, 1, 512, 512)
    convs = [layer for layer in net.layers if layer.name.startswith("block") and "conv" in layer.name
             and not layer.name.endswith(("_bn", "_relu"))]
    assert len(convs) == 16  # 16 conv + fc6 + fc7 (+ the classifier) = 19
    assert [c.filters for c in convs[:1]] == [8]  # 8 k: k = 8 is the standard 64


def test_vgg_without_pooling_after_block5_keeps_a_map():
    net = build_backbone("vgg19_bn", depth=11, widening_factor=1, fc6_kernel=1,
                         pool_strides=(2, 2, 2, 2, 1))
    assert net(tf.zeros((1, 32, 32, 3)))["fc6"].shape == (1, 2, 2, 512)


# -------------------------------------------------------------------- AlexNet
def test_alexnet_standard_size_maps():
    net = build_backbone("alexnet", widening_factor=1)
    out = net(tf.zeros((1, 224, 224, 3)), training=False)
    assert [out[f"conv{i}"].shape[1] for i in range(1, 6)] == [55, 27, 13, 13, 13]
    assert net.get_layer("fc6").kernel.shape == (6, 6, 64, 1024)
    assert out["pre_logits"].shape == (1, 1024)


# -------------------------------------------------------------------- ResNet9
def test_resnet9_residual_layers_and_max_pooled_pre_logits():
    net = tiny("resnet9")
    names = {layer.name for layer in net.layers}
    assert {"block1_add", "block3_add"} <= names and "block2_add" not in names
    out = net(tf.random.uniform((2, 32, 32, 3)), training=False)
    np.testing.assert_allclose(out["pre_logits"], tf.reduce_max(out["block3"], axis=[1, 2]))


CONVOLUTIONAL = [name for name in WIDENED if name != "vit"]


@pytest.mark.parametrize("name", CONVOLUTIONAL)
def test_kernel_initializer_sets_every_convolutions_scale(name):
    def kernels(init):
        return [w.numpy() for w in _kernels(tiny(name, kernel_initializer=init))
                if int(np.prod(w.shape[:-1])) >= 64]  # enough fan-in for a std

    for he, torch in zip(kernels("he_normal"), kernels("pytorch")):
        fan_in = int(np.prod(he.shape[:-1]))
        # he_normal: std sqrt(2 / fan_in); PyTorch: U(-b, b), b = 1 / sqrt(fan_in).
        assert he.std() == pytest.approx(np.sqrt(2 / fan_in), rel=0.2)
        assert np.abs(torch).max() <= 1 / np.sqrt(fan_in) * (1 + 1e-6)  # float32 rounding
        assert torch.std() == pytest.approx(1 / np.sqrt(3 * fan_in), rel=0.2)


def test_checking_the_kernel_initializer_draws_nothing():
    """The default's random draws are the ones every seeded run had before the option."""
    import random

    state = random.getstate()
    Layers(0.0, 0.99, 1e-3, False, "he_normal")
    assert random.getstate() == state


def test_an_unknown_kernel_initializer_is_refused_before_building():
    with pytest.raises(ValueError, match="unknown initializer 'kaiming'; use 'pytorch'"):
        build_backbone("resnet_v2", kernel_initializer="kaiming", **TINY_BACKBONE)


# ------------------------------------------------------------ strided padding
def _explicit_conv(x, kernel, stride, pads):
    """A convolution padded by hand: `pads` = ((top, bottom), (left, right))."""
    return tf.nn.conv2d(x, kernel, stride, padding=[[0, 0], *map(list, pads), [0, 0]])


@pytest.mark.parametrize("size", [8, 9])
def test_symmetric_strided_convolutions_pad_every_side_as_pytorch(size):
    x = tf.random.uniform((2, size, size, 3), seed=1)
    kernel = tf.random.normal((3, 3, 3, 4), seed=2)
    for padding, pads in [("symmetric", ((1, 1), (1, 1))), ("same", None)]:
        layers = Layers(0.0, 0.99, 1e-3, False, strided_padding=padding)
        inputs = keras.Input((size, size, 3))
        net = keras.Model(inputs, layers.conv(inputs, 4, 3, 2, "conv"))
        net.get_layer("conv").kernel.assign(kernel)
        # Keras' "same" puts the odd row and column of padding at the bottom and right.
        pads = pads or (((0, 1), (0, 1)) if size % 2 == 0 else ((1, 1), (1, 1)))
        np.testing.assert_allclose(net(x), _explicit_conv(x, kernel, 2, pads), atol=1e-5)


def test_symmetric_max_pool_pads_with_minus_infinity():
    x = -tf.random.uniform((1, 6, 6, 2), 1.0, 2.0, seed=3)  # all negative: a zero pad would win
    layers = Layers(0.0, 0.99, 1e-3, False, strided_padding="symmetric")
    inputs = keras.Input((6, 6, 2))
    pooled = keras.Model(inputs, layers.max_pool(inputs, 3, 2, "pool"))(x).numpy()
    padded = np.pad(x.numpy(), [(0, 0), (1, 1), (1, 1), (0, 0)], constant_values=-np.inf)
    expected = np.array([[padded[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(0, 1))
                          for j in range(3)] for i in range(3)])
    np.testing.assert_allclose(pooled[0], expected)


@pytest.mark.parametrize("name", ["resnet_v1", "resnet_v2"])
@pytest.mark.parametrize("small_image_stem", [True, False])
def test_strided_padding_keeps_the_end_points_and_weights(name, small_image_stem):
    def build(padding):
        return build_backbone(name, **{**TINY_BACKBONE, "small_image_stem": small_image_stem},
                              strided_padding=padding)

    same, symmetric = build("same"), build("symmetric")
    x = tf.random.uniform((2, 32, 32, 3), seed=4)
    symmetric.set_weights(same.get_weights())  # the same variables, in the same order
    out_same, out_symmetric = same(x, training=False), symmetric(x, training=False)
    for key in out_same:
        assert out_symmetric[key].shape == out_same[key].shape, key
    # Identical before the first strided layer (the small stem has none), different after.
    unstrided = ["after_root", "block1"] if small_image_stem else []
    for key in unstrided:
        np.testing.assert_allclose(out_symmetric[key], out_same[key], atol=1e-6)
    first_strided = "block2" if small_image_stem else "after_root"
    assert not np.allclose(out_symmetric[first_strided], out_same[first_strided], atol=1e-4)
    assert not np.allclose(out_symmetric["pre_logits"], out_same["pre_logits"], atol=1e-4)


def test_an_unknown_strided_padding_is_refused():
    with pytest.raises(ValueError, match="resnet_v2: strided_padding must be one of"):
        build_backbone("resnet_v2", strided_padding="reflect", **TINY_BACKBONE)
    layers = Layers(0.0, 0.99, 1e-3, False, strided_padding="symmetric")
    with pytest.raises(ValueError, match="needs an odd kernel, got 4"):
        layers.conv(keras.Input((8, 8, 3)), 4, 4, 2, "conv")


# -------------------------------------------------------------- errors, gin
@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("resnet_v1", dict(depth=11), "unsupported depth 11"),
        ("revnet", dict(block_strides=(1, 2)), "block_strides needs 4 entries"),
        ("vgg19_bn", dict(depth=20), "unsupported depth 20"),
        ("alexnet", dict(widening_factor=1.5), "widening_factor must be a positive integer"),
        ("resnet9", dict(block_strides=(2, 2)), "block_strides needs 3 entries"),
    ],
)
def test_bad_arguments_raise_clear_errors(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_backbone(name, **kwargs)


GIN_CONFIGS = sorted(glob.glob(os.path.join(REPO, "gin_configs", "backbones", "*.gin")))


@pytest.mark.parametrize("path", GIN_CONFIGS, ids=[os.path.basename(p) for p in GIN_CONFIGS])
def test_backbone_gin_configs_parse(path):
    import gin

    from keras_ssl import config

    name = os.path.basename(path)[: -len(".gin")]
    config.parse_gin([path])
    try:
        # `<family>.gin` sets a family up; other files are variants the method
        # configs include (`resnet18_v2_cifar.gin`), named after their family.
        family = gin.query_parameter("keras_ssl.build_method.backbone")
        assert family in FAMILIES
        assert name == family or name.startswith(family.split("_")[0])
        if family in WIDENED:
            assert gin.query_parameter(f"{family}.widening_factor") >= 1
        else:  # keras-hub's networks are sized by the class's config
            assert gin.query_parameter(f"{family}.config")["stackwise_num_filters"][0] == 64
    finally:
        gin.clear_config()


def test_gin_binds_a_family_by_name():
    import gin

    from keras_ssl import config

    config.parse_gin(bindings=["resnet9.widening_factor = 2", "resnet9.block_strides = (2, 2, 1)"])
    try:
        net = build_backbone("resnet9")
    finally:
        gin.clear_config()
    assert output_dim(net) == 256
    assert net(tf.zeros((1, 32, 32, 3)))["block3"].shape == (1, 8, 8, 256)


@pytest.mark.slow
def test_rotation_trains_on_a_non_resnet_family_from_gin_bindings(data_dir, tmp_path):
    from keras_ssl import config, run_dir, training

    bindings = tiny_run_bindings(
        data_dir,
        tiny_shapes_name(),
        steps=2,
        **{
            "keras_ssl.build_method.backbone": "'revnet'",
            "revnet.depth": 10,
            "revnet.widening_factor": 1,
            "revnet.small_image_stem": True,
            "keras_ssl.train.export": False,
        },
    )
    config.parse_gin(bindings=bindings)
    outputs = training.train(str(tmp_path / "run"))
    assert np.isfinite(outputs["loss"])
    operative = open(os.path.join(str(tmp_path / "run"), run_dir.OPERATIVE_CONFIG_FILE)).read()
    assert "revnet.depth = 10" in operative


# ------------------------------------------------------------------ keras_hub
def test_keras_hub_preset_with_an_image_converter_rescales_inside_the_backbone(tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    source = tiny("keras_hub", image_size=16)
    preset = str(tmp_path / "preset")
    source.hub_backbone.save_to_preset(preset)
    # keras-hub presets take [0, 255] and normalise with the converter's scale and offset.
    converter = keras_hub.layers.ResNetImageConverter(
        scale=[1 / (255 * 0.2), 1 / (255 * 0.25), 1 / (255 * 0.3)], offset=[-2.0, -2.0, -2.0])
    keras_hub.models.ResNetImageClassifierPreprocessor(image_converter=converter).save_to_preset(
        preset)
    net = build_backbone("keras_hub", preset=preset)
    images = np.random.default_rng(0).uniform(size=(2, 16, 16, 3)).astype("float32")
    expected = keras.layers.GlobalAveragePooling2D()(source.hub_backbone(converter(images * 255)))
    np.testing.assert_allclose(net(images)["pre_logits"], expected, atol=1e-5)
    assert backbone_spec(net) == dict(family="keras_hub", class_name="ResNetBackbone",
                                      preset=preset, synchronized_bn=False)


def test_keras_hub_refusals_are_one_line():
    with pytest.raises(ValueError, match="keras_hub: bind either keras_hub.preset"):
        build_backbone("keras_hub", preset="/nowhere", class_name="ResNetBackbone")
    with pytest.raises(ValueError, match="'Nope' is not a keras_hub.models backbone"):
        build_backbone("keras_hub", class_name="Nope")
    with pytest.raises(ValueError, match="cannot load the preset '/nowhere'"):
        build_backbone("keras_hub", preset="/nowhere")
    with pytest.raises(ValueError, match="synchronized_bn = True is not available"):
        build_backbone("keras_hub", synchronized_bn=True, **TINY_KERAS_HUB)
