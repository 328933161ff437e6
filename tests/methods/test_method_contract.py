"""The method contract over every installed method: `keras_ssl.testing`'s checks, one test each.

Parametrised over `registry.METHODS.names()`, so every installed method is
checked, a third-party plugin as much as the first-party ones; each is built
with its own `tiny_settings()`. What each check asserts is in
`keras_ssl.testing.method_checks`; the replica and XLA checks run in
tests/core/test_scaleout.py (one process for half the registry each). A
plugin author runs the same checks from their own tests with
`keras_ssl.testing.check_method` (docs/writing_a_method.md).
"""

from __future__ import annotations

import pytest

from keras_ssl import registry
from keras_ssl.testing import (
    check_export, check_gradients, check_loss_falls, check_method, check_strict_settings,
    check_training_step,
)

METHOD_NAMES = registry.METHODS.names()


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_gradient_reaches_every_backbone_kernel(name):
    check_gradients(name)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_one_training_step_changes_every_backbone_kernel(name):
    check_training_step(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_loss_falls_on_fixed_batches(name):
    check_loss_falls(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_export_equals_the_in_memory_model(name, tmp_path):
    check_export(name, export_dir=str(tmp_path))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_misspelled_settings_are_refused_and_forwarded_ones_are_bindable(name):
    check_strict_settings(name)


def test_a_check_fails_with_the_method_and_what_went_wrong():
    # Rotation with its backbone frozen: the step changes no backbone kernel.
    from keras_ssl_methods.rotation import Rotation

    class FrozenRotation(Rotation):
        def __init__(self, backbone, **kwargs):
            backbone.trainable = False
            super().__init__(backbone, **kwargs)

    with pytest.raises(AssertionError, match="FrozenRotation's backbone has no trainable kernels"):
        check_method(FrozenRotation, slow=False, replicas=False)


def test_a_class_not_yet_registered_is_checked_too():
    from keras_ssl_methods.rotation import Rotation

    class TwoRotations(Rotation):
        @classmethod
        def tiny_settings(cls):
            return {"num_rotations": 2}

    check_method(TwoRotations, slow=False, replicas=False)
