"""Export of patch-based models: metadata for patch averaging, the built-in transform."""

import numpy as np
import pytest
import tensorflow as tf

from keras_ssl import export
from tests.helpers.classic_methods import train_tiny
from keras_ssl.testing import tiny_backbone

JIGSAW_SMALL = {"jigsaw.num_permutations": 10, "jigsaw.resize": 48, "jigsaw.crop": 45,
                "jigsaw.patch_size": 12, "jigsaw.embedding_dim": 16, "jigsaw.hidden_units": 32}


@pytest.mark.slow
def test_jigsaw_export_records_the_patch_grid(data_dir, tmp_path):
    losses, outputs, _, path, metadata = train_tiny(
        data_dir, str(tmp_path / "run"), "jigsaw", steps=2, steps_per_loop=2, **JIGSAW_SMALL)
    assert np.isfinite(losses).all() and "permutation_accuracy" in outputs
    assert metadata["input_form"] == "patches"
    assert metadata["patch_grid"] == [3, 3]
    assert metadata["patch_size"] == [12, 12]
    assert metadata["input_size"] == [45, 45]   # the crop the 3x3 grid is cut from
    assert metadata["endpoint_shapes_at_input_size"]["pre_logits"] == [None, 128]
    model = tf.saved_model.load(path)
    patches = tf.random.uniform([4, 12, 12, 3])
    # Per-patch standardisation is inside the export: an affine change of a
    # patch's values does not change its features.
    np.testing.assert_allclose(model(patches), model(0.5 * patches + 0.2), rtol=1e-3, atol=1e-3)
    representation = model.signatures["representation"](images=patches)
    np.testing.assert_allclose(representation["pre_logits"], model(patches), atol=1e-5)


@pytest.mark.slow
def test_methods_without_hooks_export_as_before(tmp_path):
    net = tiny_backbone()
    path = export.export_backbone(net, str(tmp_path / "plain"), {"name": "plain"}, image_size=16)
    model = tf.saved_model.load(path)
    images = tf.random.uniform([2, 16, 16, 3])
    np.testing.assert_allclose(model(images), net(images)["pre_logits"], atol=1e-5)
    assert set(model.signatures) == {"serving_default", "representation"}


@pytest.mark.slow
def test_extra_signatures_and_input_transform(tmp_path):
    import keras

    net = tiny_backbone()
    head = keras.layers.Dense(3)
    head.build((None, 128))

    def doubled_head(images):
        return {"scores": head(net(images * 2.0)["pre_logits"])}

    path = export.export_backbone(
        net, str(tmp_path / "extra"), {"name": "x"}, image_size=16,
        input_transform=lambda images: images * 2.0,
        extra_signatures={"scores": doubled_head}, extra_objects={"head": head})
    model = tf.saved_model.load(path)
    images = tf.random.uniform([2, 16, 16, 3])
    np.testing.assert_allclose(model(images), net(images * 2.0)["pre_logits"], atol=1e-5)
    np.testing.assert_allclose(model.signatures["scores"](images=images)["scores"],
                               doubled_head(images)["scores"], atol=1e-5)


def test_relative_patch_location_metadata():
    from keras_ssl.registry import METHODS

    net = tiny_backbone()
    method = METHODS.get("relative_patch_location")(net, resize=48, crop=45, patch_size=12)
    assert method.export_metadata() == {
        "input_form": "patches", "patch_grid": [3, 3], "patch_size": [12, 12], "input_size": [45, 45]}
