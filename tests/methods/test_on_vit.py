"""Every registered method trains on the tiny ViT (`keras_ssl.testing.TINY_VIT`).

The public check of the tiny ResNet's contract: one training step of the
pretext loss changes every kernel of the ViT (which has no weight decay, so
only the loss's gradient can move them).
The methods that read a map end-point named for a ResNet (`block4`) are
pointed at the ViT's last block; without that they are refused when built,
naming the end-points the ViT has.
"""

import pytest

from keras_ssl.registry import METHODS
from keras_ssl.testing import (
    TINY_VIT, build_tiny_method, check_training_step, replica_reports, tiny_backbone,
)
from keras_ssl.testing.replicas import assert_replica_report, assert_xla_report

LAST_BLOCK = f"block{TINY_VIT['depth']}"
# The map end-points these methods read, bound to the ViT's.
ON_VIT = {
    "amdim": {"local_endpoint_5x5": LAST_BLOCK, "local_endpoint_7x7": "block1"},
    "colorization": {"endpoint": LAST_BLOCK},
    "split_brain": {"endpoint": LAST_BLOCK},
}
# Checked on two replicas and lowered to XLA on the ViT, in one process.
ON_VIT_REPLICAS = {"simclr": {}, "dino": {}, "moco_v3": {"freeze_patch_embedding": True}}


# Methods that require a ViT already train on it in test_method_contract.py.
ANY_BACKBONE = [name for name in METHODS.names() if not METHODS.get(name).required_backbone]


@pytest.mark.parametrize("name", ANY_BACKBONE)
def test_every_method_trains_every_vit_kernel(name):
    check_training_step(name, family="vit", **ON_VIT.get(name, {}))


@pytest.mark.parametrize("name", sorted(ON_VIT))
def test_a_resnet_end_point_on_a_vit_is_refused_naming_the_vits(name):
    with pytest.raises(ValueError, match=f"no end-point 'block4'; choose one of block1, "
                                         f"{LAST_BLOCK}, pre_logits"):
        build_tiny_method(name, backbone=tiny_backbone("vit"))


def test_moco_shuffled_batch_norm_is_refused_on_a_vit():
    with pytest.raises(ValueError, match="has no batch norm .* Set `moco.shuffle_bn_groups = 0`"):
        build_tiny_method("moco", backbone=tiny_backbone("vit"), shuffle_bn_groups=2)


@pytest.fixture(scope="module")
def vit_replica_reports():
    return replica_reports(list(ON_VIT_REPLICAS), "all", processes=1, settings=ON_VIT_REPLICAS,
                           family="vit")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ON_VIT_REPLICAS))
def test_two_replicas_train_a_vit_like_one_device_and_the_step_lowers_to_xla(
        vit_replica_reports, name):
    assert_replica_report(name, vit_replica_reports[name]["replicas"])
    assert_xla_report(name, vit_replica_reports[name]["xla"])
