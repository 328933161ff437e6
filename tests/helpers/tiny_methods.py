"""Every registered method at test size: settings, a builder and matching examples."""

import numpy as np
import tensorflow as tf

from keras_ssl.backbones import build_backbone
from keras_ssl.registry import METHODS

# Constructor arguments that make each first-party method fit 16-48 px images
# and a handful of CPU seconds; a method not listed (a third-party plugin)
# is built with its defaults.
TINY_METHOD_KWARGS = {
    "rotation": {},
    "simclr": {"temperature": 0.5, "num_classes": 3},
    "moco": {"queue_size": 16, "momentum": 0.9, "num_classes": 3},
    "npid": {"num_examples": 8, "num_negatives": 4, "fix_normalization": False},
    "exemplar": {"num_copies": 2, "embedding_dim": 8},
    "jigsaw": {"resize": 48, "crop": 45, "patch_size": 12, "num_permutations": 10,
               "embedding_dim": 8, "hidden_units": 16},
    "relative_patch_location": {"resize": 48, "crop": 45, "patch_size": 12, "jitter": 1,
                                "embedding_dim": 8, "hidden_units": 16},
    "colorization": {"head_units": 16, "prior_images": 8},
    "supervised": {"num_classes": 3},
}


def build_tiny_method(name, synchronized_bn=False, **kwargs):
    """The registered method `name` on a ResNet-10 v2 of width 16, at test size."""
    net = build_backbone(
        "resnet_v2", depth=10, widening_factor=1, small_image_stem=True,
        synchronized_bn=synchronized_bn,
    )
    method = METHODS.get(name)(net, **{**TINY_METHOD_KWARGS.get(name, {}), **kwargs})
    method.registry_name = name
    method.backbone_name = "resnet_v2"
    return method


def tiny_examples(name, count=8, seed=0):
    """`count` decoded examples of random 16 px images (48 px for patch methods)."""
    size = 48 if "resize" in TINY_METHOD_KWARGS.get(name, {}) else 16
    images = np.random.RandomState(seed).rand(count, size, size, 3).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices(
        {"image": images, "label": np.arange(count) % 3, "index": np.arange(count)}
    )
