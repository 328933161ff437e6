"""Tests of keras_ssl_eval.reading.savedmodel and keras_ssl_eval.extraction.pooling."""

import json
import logging
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf

from keras_ssl_eval import contract
from keras_ssl_eval.extraction import pooling
from keras_ssl_eval.reading import savedmodel
from keras_ssl_eval.reading.data import load_images
from keras_ssl_eval.probes.finetune import FineTuner
from keras_ssl_eval.testing import save_toy_savedmodel, write_image_folder


@pytest.fixture(scope="session")
def toy_model_dir(tmp_path_factory):
    """A plain-TF SavedModel following the contract (16 px, block1 8x8x150)."""
    return save_toy_savedmodel(str(tmp_path_factory.mktemp("toy") / "model"))


# ----------------------------------------------------------------- pooling --


def _reference_pool(x, out_h, out_w):
    """Cell-by-cell adaptive max pooling, written independently of the module."""
    batch, height, width, channels = x.shape
    result = np.empty([batch, out_h, out_w, channels], x.dtype)
    for i in range(out_h):
        h0, h1 = int(np.floor(i * height / out_h)), int(np.ceil((i + 1) * height / out_h))
        for j in range(out_w):
            w0, w1 = int(np.floor(j * width / out_w)), int(np.ceil((j + 1) * width / out_w))
            result[:, i, j, :] = x[:, h0:h1, w0:w1, :].max(axis=(1, 2))
    return result


@pytest.mark.parametrize("shape,grid", [((2, 5, 7, 3), (3, 4)), ((1, 9, 9, 2), (4, 4)),
                                        ((3, 6, 4, 1), (6, 1)), ((1, 7, 3, 5), (1, 1))])
def test_adaptive_max_pool_matches_reference(shape, grid):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    np.testing.assert_array_equal(pooling.adaptive_max_pool(x, grid), _reference_pool(x, *grid))


def test_adaptive_max_pool_hand_example():
    x = np.arange(5, dtype=np.float32).reshape(1, 5, 1, 1)  # Bins of 5 -> 3: [0,2) [1,4) [3,5).
    np.testing.assert_array_equal(pooling.adaptive_max_pool(x, (3, 1)).ravel(), [1, 3, 4])


@pytest.mark.parametrize("shape,expected", [
    ((56, 56, 256), (6, 5)), ((28, 28, 512), (4, 4)), ((8, 8, 150), (8, 7)),
    ((14, 14, 1024), (3, 2)), ((112, 112, 64), (12, 11)), ((7, 7, 2048), (2, 2)),
    ((13, 40, 96), (5, 17)), ((4, 4, 16), (4, 4)), ((2, 2, 9001), (1, 1))])
def test_pooled_grid(shape, expected):
    h, w, c = shape
    out_h, out_w = pooling.pooled_grid(h, w, c)
    assert (out_h, out_w) == expected
    assert 1 <= out_h <= h and 1 <= out_w <= w
    if c <= pooling.MAX_FEATURE_VALUES:
        assert out_h * out_w * c <= pooling.MAX_FEATURE_VALUES
        # Little pooling: a grid one cell larger in both directions would not fit.
        assert (out_h + 1) * (out_w + 1) * c > 9000 or (out_h, out_w) == (h, w)


def test_pooled_grid_bound_holds_for_many_shapes():
    for h in (1, 2, 3, 7, 30, 100):
        for w in (1, 2, 5, 31, 100):
            for c in (1, 64, 200, 1500, 9000):
                out_h, out_w = pooling.pooled_grid(h, w, c)
                assert 1 <= out_h <= h and 1 <= out_w <= w
                assert out_h * out_w * c <= 9000, (h, w, c, out_h, out_w)


def test_small_maps_and_vectors_are_not_pooled():
    x = np.ones([2, 4, 4, 8], np.float32)
    assert pooling.flatten_features(x).shape == (2, 128)
    assert pooling.flatten_features(np.ones([2, 5], np.float32)).shape == (2, 5)
    assert pooling.flatten_features(np.ones([2, 56, 56, 256], np.float32)).shape[1] <= 9000


# -------------------------------------------------------------- savedmodel --


def test_loads_contract_model(toy_model_dir):
    model = savedmodel.load_representation_model(toy_model_dir)
    assert model.endpoint_names == ("after_root", "block1", "pre_logits")
    assert model.input_size == (16, 16)
    assert model.metadata["name"] == "toy"


def test_extract_shapes_and_values_match_signature(toy_model_dir):
    model = savedmodel.load_representation_model(toy_model_dir)
    images = np.random.default_rng(1).uniform(size=[5, 16, 16, 3]).astype(np.float32)
    features = model.extract(images, batch_size=2)
    assert features["after_root"].shape == (5, 8 * 8 * 4)
    assert features["block1"].shape == (5, 7 * 8 * 150)  # 9600 values pooled to 8x7.
    assert features["pre_logits"].shape == (5, 150)
    assert model.last_endpoint_shapes == {"after_root": [8, 8, 4], "block1": [8, 8, 150],
                                          "pre_logits": [150]}

    direct = tf.saved_model.load(toy_model_dir).signatures["representation"](
        images=tf.constant(images))
    # Batches of 2 against one of 5: oneDNN blocks the products differently, so
    # values near 0 differ by a few ulps of the larger ones (3e-7 seen).
    close = dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(features["after_root"],
                               direct["after_root"].numpy().reshape(5, -1), **close)
    np.testing.assert_allclose(features["pre_logits"], direct["pre_logits"].numpy(), **close)
    pooled = _reference_pool(direct["block1"].numpy(), 8, 7).reshape(5, -1)
    np.testing.assert_allclose(features["block1"], pooled, **close)


def test_extract_scales_integer_pixels(toy_model_dir):
    model = savedmodel.load_representation_model(toy_model_dir)
    pixels = np.random.default_rng(2).integers(0, 256, [3, 16, 16, 3]).astype(np.uint8)
    from_uint8 = model.extract(pixels, ["pre_logits"])["pre_logits"]
    from_float = model.extract(pixels / 255.0, ["pre_logits"])["pre_logits"]
    np.testing.assert_allclose(from_uint8, from_float, rtol=1e-5)
    dataset = tf.data.Dataset.from_tensor_slices(pixels)  # Unbatched uint8 images.
    np.testing.assert_allclose(model.extract(dataset, ["pre_logits"])["pre_logits"],
                               from_float, rtol=1e-5)


def test_extract_runs_signature_once_per_batch(toy_model_dir):
    model = savedmodel.load_representation_model(toy_model_dir)
    calls = []
    signature = model._signature  # pylint: disable=protected-access
    # pylint: disable-next=protected-access
    model._signature = lambda **kw: calls.append(1) or signature(**kw)
    model.extract(np.zeros([5, 16, 16, 3], np.float32), ["block1", "pre_logits"], batch_size=2)
    assert len(calls) == 3


def test_extract_from_dataset_with_labels_and_resize(toy_model_dir, tmp_path, caplog):
    write_image_folder(str(tmp_path), {"a": 3, "b": 2}, size=20)
    ds, _ = load_images(f"folder:{tmp_path}", "train")  # 20 px; the model wants 16.
    model = savedmodel.load_representation_model(toy_model_dir)
    with caplog.at_level(logging.WARNING):
        features, labels = model.extract(ds, ["pre_logits"], batch_size=4, with_labels=True)
    assert features["pre_logits"].shape == (5, 150)
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1])
    assert caplog.text.count("Resizing") == 1


def test_unknown_layer_lists_endpoints(toy_model_dir):
    model = savedmodel.load_representation_model(toy_model_dir)
    with pytest.raises(KeyError, match="block9.*after_root.*block1.*pre_logits"):
        model.extract(np.zeros([1, 16, 16, 3], np.float32), ["block9"])


def test_missing_representation_signature(tmp_path):
    path = save_toy_savedmodel(str(tmp_path / "m"), with_representation=False)
    with pytest.raises(ValueError, match="lacks the 'representation' signature.*"
                       "serving_default.*savedmodel_contract.md"):
        savedmodel.load_representation_model(path)


def test_missing_metadata_warns(tmp_path, caplog):
    path = save_toy_savedmodel(str(tmp_path / "m"), with_metadata=False)
    assert not os.path.exists(os.path.join(path, "assets", "keras_ssl.json"))
    with caplog.at_level(logging.WARNING):
        model = savedmodel.load_representation_model(path)
    assert model.metadata == {} and "keras_ssl.json" in caplog.text
    assert model.input_size is None  # The toy signature accepts any size.
    assert model.extract(np.zeros([2, 12, 12, 3], np.float32), ["after_root"])[
        "after_root"].shape == (2, 6 * 6 * 4)


def _toy_model_with_format(tmp_path, toy_model_dir, metadata_format):
    """A copy of the toy model whose metadata says `metadata_format`."""
    path = str(tmp_path / "m")
    shutil.copytree(toy_model_dir, path)
    metadata_file = os.path.join(path, contract.METADATA_PATH)
    with open(metadata_file) as f:
        metadata = json.load(f)
    with open(metadata_file, "w") as f:
        json.dump({**metadata, "format": metadata_format}, f)
    return path


def test_unknown_major_format_version_refused(tmp_path, toy_model_dir):
    major, _ = contract.FORMAT_VERSION
    found = f"{contract.FORMAT_NAME}/{major + 1}.0"
    path = _toy_model_with_format(tmp_path, toy_model_dir, found)
    with pytest.raises(ValueError) as error:
        savedmodel.load_representation_model(path)
    message = str(error.value)
    assert "\n" not in message
    assert found in message and f"{contract.FORMAT_NAME}/{major}.x" in message
    assert "re-export it with a keras-ssl" in message and "upgrade keras-ssl-eval" in message
    # Fine-tuning loads the SavedModel itself, and checks the same way.
    with pytest.raises(ValueError, match=re.escape(found)):
        FineTuner(path, num_classes=2)


@pytest.mark.parametrize("minor", [0, 7])
def test_known_major_format_version_read(tmp_path, toy_model_dir, minor):
    major, _ = contract.FORMAT_VERSION
    found = f"{contract.FORMAT_NAME}/{major}.{minor}"
    model = savedmodel.load_representation_model(
        _toy_model_with_format(tmp_path, toy_model_dir, found))
    assert model.metadata["format"] == found and model.endpoint_names[-1] == "pre_logits"


def test_written_format_is_read(tmp_path, toy_model_dir):
    path = _toy_model_with_format(tmp_path, toy_model_dir, contract.FORMAT)
    assert savedmodel.load_representation_model(path).metadata["format"] == contract.FORMAT


def test_malformed_format_refused(tmp_path, toy_model_dir):
    path = _toy_model_with_format(tmp_path, toy_model_dir, "keras_ssl.savedmodel/one")
    with pytest.raises(ValueError, match="format 'keras_ssl.savedmodel/one'.*"
                       r"keras_ssl\.savedmodel/<major>\[\.<minor>\]"):
        savedmodel.load_representation_model(path)
