"""The contract harness, installed with keras-ssl: check a method or a backbone in one call.

A plugin author checks their method from their own tests, with no checkout
of keras-ssl:

>>> from keras_ssl.testing import check_method              # doctest: +SKIP
>>> def test_my_method_keeps_the_contract():
...     check_method("my_method")            # or the class, before it is registered

The method's `tiny_settings()` (see `keras_ssl.Method.tiny_settings`) make it
cheap at the tiny shapes here; keyword arguments to `check_method` override
them. keras-ssl's own tests run the same checks over every installed method
and backbone (docs/writing_a_method.md, "Checking a plugin").

- `check_method`: strict settings, gradients, one step, the loss falls, the
  export equals the model, 2 replicas train like one device, XLA lowering;
  each also callable alone (`check_gradients`, ..., `check_replicas`).
- `check_backbone`: end-points, gradients, checkpoint, strict arguments,
  export.
- The tiny shapes and builders: `TINY_*`, `tiny_backbone`,
  `tiny_backbone_for` (the one a method's `required_backbone` asks for),
  `build_tiny_method`, `tiny_examples`.
"""

from keras_ssl.testing.backbone_checks import check_backbone
from keras_ssl.testing.method_checks import (
    check_export, check_gradients, check_loss_falls, check_method, check_strict_settings,
    check_training_step, method_and_batches,
)
from keras_ssl.testing.replicas import check_replicas, replica_reports
from keras_ssl.testing.tiny import (
    TINY_BACKBONE, TINY_BATCH_SIZE, TINY_IMAGE_SIZE, TINY_KERAS_HUB, TINY_NUM_EXAMPLES,
    TINY_PATCH_GRID, TINY_VIT,
    build_tiny_method, tiny_backbone, tiny_backbone_for, tiny_examples, tiny_family,
    tiny_method_settings,
)

__all__ = [
    "TINY_BACKBONE", "TINY_BATCH_SIZE", "TINY_IMAGE_SIZE", "TINY_KERAS_HUB", "TINY_NUM_EXAMPLES",
    "TINY_PATCH_GRID", "TINY_VIT",
    "build_tiny_method", "check_backbone", "check_export", "check_gradients", "check_loss_falls",
    "check_method", "check_replicas", "check_strict_settings", "check_training_step",
    "method_and_batches", "replica_reports", "tiny_backbone", "tiny_backbone_for", "tiny_examples", "tiny_family",
    "tiny_method_settings",
]
