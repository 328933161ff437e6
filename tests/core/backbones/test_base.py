"""keras_ssl.backbones.base: the end-point contract `make_backbone` enforces for every family."""

import keras
import numpy as np
import pytest

from keras_ssl.backbones import make_backbone


def _graph(endpoint_shape):
    """A `keras.Input` and an end-point tensor of `endpoint_shape` (batch left out)."""
    inputs = keras.Input((8, 8, 3))
    flat = keras.layers.Flatten()(inputs)
    size = int(np.prod([d or 1 for d in endpoint_shape]))
    tensor = keras.layers.Reshape(endpoint_shape)(keras.layers.Dense(size)(flat))
    return inputs, tensor, keras.layers.Dense(4)(flat)


@pytest.mark.parametrize("shape", [(2, 2, 4), (6,)])
def test_make_backbone_takes_maps_and_vectors(shape):
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
    inputs, tensor, pre_logits = _graph(shape)
    endpoints = {endpoint: tensor} if endpoint == "pre_logits" else {
        endpoint: tensor, "pre_logits": pre_logits}
    with pytest.raises(ValueError, match=message):
        make_backbone(inputs, endpoints, name="net", spec={})


def test_make_backbone_refuses_unknown_channels():
    inputs = keras.Input((8, 8, None))
    pre_logits = keras.layers.Lambda(lambda x: keras.ops.mean(x, axis=(1, 2, 3))[:, None])(inputs)
    with pytest.raises(ValueError, match="'block' has shape .*must be known"):
        make_backbone(inputs, {"block": inputs, "pre_logits": pre_logits}, name="net", spec={})
