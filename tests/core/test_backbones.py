"""ResNet v2: end-point shapes, widths, switches, errors.

The tests every registered family passes (end-point names and shapes,
gradients, export, widening) are in test_backbone_zoo.py.
"""

import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.backbones import backbone_spec, build_backbone, output_dim

ENDPOINTS = ("after_root", "block1", "block2", "block3", "block4", "pre_logits")


def test_resnet_v2_endpoint_shapes_small_stem():
    net = build_backbone("resnet_v2", depth=10, widening_factor=2, small_image_stem=True)
    out = net(tf.zeros((3, 32, 32, 3)))
    shapes = {k: tuple(v.shape) for k, v in out.items()}
    assert tuple(out) == ENDPOINTS
    # Basic units: block widths 16k..128k; strides (1, 2, 2, 2), no root pooling.
    assert shapes == {
        "after_root": (3, 32, 32, 32),
        "block1": (3, 32, 32, 32),
        "block2": (3, 16, 16, 64),
        "block3": (3, 8, 8, 128),
        "block4": (3, 4, 4, 256),
        "pre_logits": (3, 256),
    }


def test_resnet_v2_imagenet_stem_downsamples_by_four():
    net = build_backbone("resnet_v2", depth=10, widening_factor=1)
    out = net(tf.zeros((1, 64, 64, 3)))
    assert out["after_root"].shape == (1, 16, 16, 16)
    assert out["block4"].shape == (1, 2, 2, 128)


def test_resnet50_v2_standard_width_and_parameter_count():
    net = build_backbone("resnet_v2", depth=50, widening_factor=4)
    assert output_dim(net) == 2048
    # Pre-activation ResNet-50 without the classifier: 23.5M parameters
    # (the 25.6M of the ImageNet model minus its 2048x1000 head).
    assert 23.4e6 < net.count_params() < 23.7e6
    assert backbone_spec(net) == dict(
        family="resnet_v2", depth=50, widening_factor=4, last_relu=True, small_image_stem=False
    )


def test_convolution_weights_grow_as_k_squared():
    def conv_params(k):
        net = build_backbone("resnet_v2", depth=10, widening_factor=k, small_image_stem=True)
        return sum(int(np.prod(w.shape)) for w in net.weights if "kernel" in w.path)

    # The root conv has 3 input channels (linear in k); all others grow as k^2.
    ratio = conv_params(4) / conv_params(2)
    assert 3.95 < ratio < 4.0


def test_last_relu_switch():
    images = tf.random.uniform((2, 16, 16, 3))
    with_relu = build_backbone("resnet_v2", depth=10, widening_factor=1, small_image_stem=True)
    without = build_backbone(
        "resnet_v2", depth=10, widening_factor=1, small_image_stem=True, last_relu=False
    )
    assert float(tf.reduce_min(with_relu(images)["block4"])) >= 0.0
    assert float(tf.reduce_min(without(images)["block4"])) < 0.0


def test_pre_logits_is_global_average_of_block4():
    net = build_backbone("resnet_v2", depth=10, widening_factor=1, small_image_stem=True)
    out = net(tf.random.uniform((2, 16, 16, 3)))
    np.testing.assert_allclose(
        out["pre_logits"], tf.reduce_mean(out["block4"], axis=[1, 2]), rtol=1e-5, atol=1e-6
    )


def test_weight_decay_adds_l2_of_kernels():
    net = build_backbone(
        "resnet_v2", depth=10, widening_factor=1, small_image_stem=True, weight_decay=1e-2
    )
    kernels = [w for w in net.weights if "kernel" in w.path]
    expected = 1e-2 / 2 * sum(float(tf.reduce_sum(tf.square(w))) for w in kernels)
    assert float(tf.add_n(net.losses)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(depth=11), "unsupported depth 11"),
        (dict(widening_factor=0), "widening_factor must be a positive integer"),
        (dict(block_strides=(1, 2)), "block_strides needs 4 entries"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_backbone("resnet_v2", **kwargs)


def _graph(endpoint_shape):
    """A `keras.Input` and an end-point tensor of `endpoint_shape` (batch left out)."""
    import keras

    inputs = keras.Input((8, 8, 3))
    flat = keras.layers.Flatten()(inputs)
    size = int(np.prod([d or 1 for d in endpoint_shape]))
    tensor = keras.layers.Reshape(endpoint_shape)(keras.layers.Dense(size)(flat))
    return inputs, tensor, keras.layers.Dense(4)(flat)


@pytest.mark.parametrize("shape", [(2, 2, 4), (6,)])
def test_make_backbone_takes_maps_and_vectors(shape):
    from keras_ssl.backbones import make_backbone

    inputs, tensor, pre_logits = _graph(shape)
    net = make_backbone(inputs, {"block": tensor, "pre_logits": pre_logits}, name="net", spec={})
    assert net.endpoint_names == ("block", "pre_logits")


@pytest.mark.parametrize("endpoint,shape,message", [
    # A ViT's token sequence: the evaluation would flatten it whole.
    ("tokens", (4, 6), r"'tokens' has shape \(None, 4, 6\).*reshaping its patch tokens"),
    ("volume", (2, 2, 2, 3), r"'volume' has shape .*a \[batch, height, width, channels\] map"),
    ("pre_logits", (2, 2, 4), r"'pre_logits' must be \[batch, D\].*pool the last feature map"),
])
def test_make_backbone_refuses_an_endpoint_outside_the_contract(endpoint, shape, message):
    from keras_ssl.backbones import make_backbone

    inputs, tensor, pre_logits = _graph(shape)
    endpoints = {endpoint: tensor} if endpoint == "pre_logits" else {
        endpoint: tensor, "pre_logits": pre_logits}
    with pytest.raises(ValueError, match=message):
        make_backbone(inputs, endpoints, name="net", spec={})


def test_make_backbone_refuses_unknown_channels():
    import keras

    from keras_ssl.backbones import make_backbone

    inputs = keras.Input((8, 8, None))
    pre_logits = keras.layers.Lambda(lambda x: keras.ops.mean(x, axis=(1, 2, 3))[:, None])(inputs)
    with pytest.raises(ValueError, match="'block' has shape .*must be known"):
        make_backbone(inputs, {"block": inputs, "pre_logits": pre_logits}, name="net", spec={})
