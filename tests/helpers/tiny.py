"""Tiny models shared by the tests: the one tiny ResNet and each method's tiny settings.

(The tiny dataset and the seconds-long run's bindings: `tiny_run`. This module
imports keras_ssl when imported, for the multi-crop views of DINO and SwAV.)

Every test that needs a backbone it does not train for long builds it here, and
every per-method tiny configuration the method contract harness
(tests/methods/test_method_contract.py) uses lives in `TINY_METHOD_SETTINGS`, so one
place says what "tiny" means for each method.
"""

from __future__ import annotations

import json
import os

# ResNet-10 v2 at k=1 with the small-image stem: 16 root channels, 128-d pre-logits.
TINY_BACKBONE = dict(depth=10, widening_factor=1, small_image_stem=True)

# Image size, batch size and number of examples the harness trains on.
TINY_IMAGE_SIZE = 16
TINY_BATCH_SIZE = 4
TINY_NUM_EXAMPLES = 8

# The 3x3 patch grid cut from 45 px out of 48 px, 12 px patches: what Jigsaw and
# Relative Patch Location need to fit a 16 px dataset.
TINY_PATCH_GRID = dict(resize=48, crop=45, patch_size=12)

def _tiny_multi_crop():
    from keras_ssl.views import multi_crop

    return multi_crop(num_local_views=2, local_size=TINY_IMAGE_SIZE // 2)


# Constructor arguments that make each first-party method cheap on `TINY_BACKBONE`.
# Heads are narrowed, queues and banks sized to the tiny dataset, dropout is off
# so a few steps on a fixed batch are deterministic enough to show the loss falling.
TINY_METHOD_SETTINGS = {
    "rotation": {},
    "supervised": dict(num_classes=3),
    "simclr": dict(augmentation="simclr_cifar", temperature=0.5, hidden_dim=32, projection_dim=16),
    # A queue of one batch: trained on two alternating batches, it holds the other
    # batch's keys, never older keys of the same images (which would be negatives
    # identical to the positives). m = 0.99: with m = 0.9 or 0 the keys drift with the
    # weights and the loss rises on so few images (docs/contrastive.md).
    "moco": dict(queue_size=TINY_BATCH_SIZE, momentum=0.99, hidden_dim=32, projection_dim=16),
    "npid": dict(num_examples=TINY_NUM_EXAMPLES, num_negatives=8, fix_normalization=False,
                 projection_dim=16),
    "exemplar": dict(num_copies=4, embedding_dim=32),
    "jigsaw": dict(num_permutations=10, embedding_dim=16, hidden_units=32, dropout=0.0,
                   **TINY_PATCH_GRID),
    "relative_patch_location": dict(jitter=1, embedding_dim=16, hidden_units=32, dropout=0.0,
                                    **TINY_PATCH_GRID),
    # block4 rather than the default block3, so every backbone kernel feeds the loss
    # (the contract checks that the gradient reaches each of them).
    "colorization": dict(head_units=16, prior_images=TINY_NUM_EXAMPLES, endpoint="block4"),
    "pirl": dict(num_examples=TINY_NUM_EXAMPLES, num_negatives=8, fix_normalization=False,
                 projection_dim=16,
                 **TINY_PATCH_GRID),
    "vae": dict(image_size=TINY_IMAGE_SIZE, latent_dim=8, decoder_width=16),
    # 8-px tiles of the 16-px images.
    "counting": dict(tile_size=TINY_IMAGE_SIZE // 2, num_counts=16),
    "cmc": dict(num_examples=TINY_NUM_EXAMPLES, num_negatives=8, projection_dim=16),
    # block4, so every kernel of both halves feeds a head (as colorization).
    "split_brain": dict(head_units=16, lightness_bins=10, endpoint="block4"),
    # At 16 px block4 (the 5x5 role) is 2x2 and block3 (the 7x7 role) 4x4.
    "amdim": dict(embedding_dim=16),
    "deepcluster": dict(num_examples=TINY_NUM_EXAMPLES, num_clusters=3, pca_dim=4,
                        kmeans_iterations=3, feature_batch_size=4),
    # A 3x3 grid of 8-px patches at stride 4 covers the 16-px images; K = 2 rows.
    "cpc": dict(grid_size=3, patch_size=8, patch_stride=4, prediction_steps=2, context_width=16,
                context_blocks=1),
    # The non-contrastive methods: narrow heads; multi-crop with two 8-px local views.
    "byol": dict(projection_dim=16, hidden_dim=32),
    "simsiam": dict(projection_dim=16, predictor_hidden_dim=8),
    "barlow_twins": dict(projection_dim=16, redundancy_weight=0.05),
    # The paper's weights scaled by 0.1: at full scale ten SGD steps on two tiny
    # batches overshoot (the loss went 43 -> 57).
    "vicreg": dict(projection_dim=16, invariance_weight=2.5, variance_weight=2.5,
                   covariance_weight=0.1),
    "dino": dict(num_outputs=32, hidden_dim=32, bottleneck_dim=16, views=_tiny_multi_crop()),
    "swav": dict(num_prototypes=16, projection_dim=16, hidden_dim=32, views=_tiny_multi_crop()),
}

# A third-party plugin whose constructor needs arguments passes its tiny settings
# here as JSON, e.g. KERAS_SSL_CONTRACT_SETTINGS='{"my_method": {"size": 2}}'.
SETTINGS_ENVIRONMENT_VARIABLE = "KERAS_SSL_CONTRACT_SETTINGS"


def tiny_backbone(family: str = "resnet_v2", **overrides):
    """Builds the tiny backbone (`TINY_BACKBONE`) of `family`.

    Args:
      family: A registered backbone family taking `TINY_BACKBONE`'s arguments.
      **overrides: Arguments replacing or adding to `TINY_BACKBONE`
        (e.g. `synchronized_bn=True`).

    Returns:
      The backbone model.
    """
    from keras_ssl.backbones import build_backbone

    return build_backbone(family, **{**TINY_BACKBONE, **overrides})


def tiny_method_settings(name: str) -> dict:
    """Constructor arguments of method `name` for tiny tests.

    Args:
      name: The method's registry name.

    Returns:
      `TINY_METHOD_SETTINGS[name]`, updated by the entry for `name` in the
      JSON of `$KERAS_SSL_CONTRACT_SETTINGS`; `{}` for a method listed in
      neither.
    """
    from_environment = json.loads(os.environ.get(SETTINGS_ENVIRONMENT_VARIABLE) or "{}")
    return {**TINY_METHOD_SETTINGS.get(name, {}), **from_environment.get(name, {})}


def build_tiny_method(name: str, backbone=None, **overrides):
    """Builds registered method `name` on the tiny backbone with its tiny settings.

    Args:
      name: The method's registry name.
      backbone: The backbone (default: `tiny_backbone()`).
      **overrides: Constructor arguments replacing the tiny settings.

    Returns:
      The method.
    """
    from keras_ssl.registry import METHODS

    backbone = tiny_backbone() if backbone is None else backbone
    method = METHODS.get(name)(backbone, **{**tiny_method_settings(name), **overrides})
    method.registry_name = name  # as keras_ssl.building.build_method sets it
    return method


def tiny_examples(name: str, count: int = TINY_NUM_EXAMPLES, seed: int = 0):
    """`count` decoded examples of random images sized for method `name`.

    Args:
      name: The method's registry name (patch methods get images of
        `TINY_PATCH_GRID["resize"]` px, the others `TINY_IMAGE_SIZE`).
      count: Number of examples; labels cycle over 3 classes.
      seed: Seed of the images.

    Returns:
      A `tf.data.Dataset` of `{"image", "label", "index"}`.
    """
    import numpy as np
    import tensorflow as tf

    patches = "resize" in tiny_method_settings(name)
    size = TINY_PATCH_GRID["resize"] if patches else TINY_IMAGE_SIZE
    images = np.random.RandomState(seed).rand(count, size, size, 3).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices(
        {"image": images, "label": np.arange(count) % 3, "index": np.arange(count)}
    )
