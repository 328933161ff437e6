"""ResNet v2: end-point shapes, widths, switches, errors.

The tests every registered family passes (end-point names and shapes,
gradients, export, widening) are in test_families.py; the end-point contract in test_base.py.
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

