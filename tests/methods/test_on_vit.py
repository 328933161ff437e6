"""Every registered method trains on the tiny ViT (`keras_ssl.testing.TINY_VIT`).

The same public checks as on the tiny ResNet: the gradient of the pretext
loss reaches every kernel of the ViT, and one step changes each of them.
The methods that read a map end-point named for a ResNet (`block4`) are
pointed at the ViT's last block; without that they are refused when built,
naming the end-points the ViT has.
"""

import pytest

from keras_ssl.registry import METHODS
from keras_ssl.testing import (
    TINY_VIT, build_tiny_method, check_gradients, check_replicas, check_training_step,
    tiny_backbone,
)

LAST_BLOCK = f"block{TINY_VIT['depth']}"
# The map end-points these methods read, bound to the ViT's.
ON_VIT = {
    "amdim": {"local_endpoint_5x5": LAST_BLOCK, "local_endpoint_7x7": "block1"},
    "colorization": {"endpoint": LAST_BLOCK},
    "split_brain": {"endpoint": LAST_BLOCK},
}
# The view-based methods: the ones the field trains on ViTs.
VIEW_METHODS = ("simclr", "moco", "npid", "byol", "simsiam", "barlow_twins", "vicreg", "dino",
                "swav")


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_trains_every_vit_kernel(name):
    settings = ON_VIT.get(name, {})
    check_gradients(name, family="vit", **settings)
    check_training_step(name, family="vit", **settings)


@pytest.mark.parametrize("name", sorted(ON_VIT))
def test_a_resnet_end_point_on_a_vit_is_refused_naming_the_vits(name):
    with pytest.raises(ValueError, match=f"no end-point 'block4'; choose one of block1, "
                                         f"{LAST_BLOCK}, pre_logits"):
        build_tiny_method(name, backbone=tiny_backbone("vit"))


def test_moco_shuffled_batch_norm_is_refused_on_a_vit():
    with pytest.raises(ValueError, match="has no batch norm .* Set `moco.shuffle_bn_groups = 0`"):
        build_tiny_method("moco", backbone=tiny_backbone("vit"), shuffle_bn_groups=2)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["simclr", "dino"])
def test_two_replicas_train_a_vit_like_one_device_and_the_step_lowers_to_xla(name):
    check_replicas(name, family="vit")
