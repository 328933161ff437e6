"""Tests of the feature cache, VISSL pooling and patch-based models (keras_ssl_eval)."""

import logging

import numpy as np
import pytest
import tensorflow as tf

from keras_ssl_eval.extraction import cache as cache_lib
from keras_ssl_eval.extraction import features, patches, pooling
from keras_ssl_eval.reading import savedmodel
from keras_ssl_eval.testing import save_toy_savedmodel, write_image_folder


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("feat")
    model = save_toy_savedmodel(str(root / "model"), block1_channels=8)
    write_image_folder(str(root / "data" / "train"), {"a": 5, "b": 5}, size=16, seed=0)
    return model, f"folder:{root / 'data'}"


# ------------------------------------------------------------------- cache --


def test_second_extraction_reads_the_cache(toy, tmp_path):
    path, dataset = toy
    cache = cache_lib.FeatureCache(str(tmp_path / "cache"))
    model = savedmodel.load_representation_model(path)
    first = features.split_features(model, dataset, "train", ["block1", "pre_logits"],
                                    batch_size=4, cache=cache)
    assert model.signature_calls == 3 and first.cached_layers == []
    # A fresh model object (another protocol, another process): no signature call.
    again = savedmodel.load_representation_model(path)
    second = features.split_features(again, dataset, "train", ["pre_logits", "block1"],
                                     batch_size=4, cache=cache)
    assert again.signature_calls == 0
    assert second.cached_layers == ["pre_logits", "block1"]
    np.testing.assert_array_equal(second.features["block1"], first.features["block1"])
    np.testing.assert_array_equal(second.labels, first.labels)
    assert second.endpoint_shapes["block1"] == [8, 8, 8]
    # Only the missing layer is extracted; other settings are other entries.
    features.split_features(again, dataset, "train", ["after_root", "block1"], batch_size=4,
                            cache=cache)
    assert again.signature_calls == 3
    features.split_features(again, dataset, "train", ["block1"], batch_size=4, cache=cache,
                            pooling="vissl")
    assert again.signature_calls == 6


def test_cache_key_depends_on_settings_and_model(toy, tmp_path):
    identity = cache_lib.model_identity(toy[0])
    assert "fingerprint" in identity or "saved_model.pb" in identity
    key = cache_lib.FeatureCache.key
    base = dict(dataset="d", split="train", limit=None, seed=0, layer="x", pooling="adaptive")
    assert key(identity, **base) == key(identity, **dict(reversed(list(base.items()))))
    for change in [dict(split="test"), dict(limit=5), dict(seed=1), dict(layer="y"),
                   dict(pooling="vissl")]:
        assert key(identity, **{**base, **change}) != key(identity, **base)
    other = save_toy_savedmodel(str(tmp_path / "other"), seed=3, block1_channels=8)
    assert key(cache_lib.model_identity(other), **base) != key(identity, **base)


def test_disabled_and_corrupt_cache(tmp_path, caplog):
    off = cache_lib.FeatureCache(None)
    off.save("k", np.zeros([2, 3]), np.zeros([2]))
    assert off.load("k") is None
    on = cache_lib.FeatureCache(str(tmp_path))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with caplog.at_level(logging.WARNING):
        assert on.load("bad") is None
    assert "unreadable cache file" in caplog.text


def test_cache_deletes_least_recently_used_entries_past_its_bound(tmp_path):
    import os

    cache = cache_lib.FeatureCache(str(tmp_path), max_bytes=None)
    keys = [cache_lib.FeatureCache.key({"path": "m"}, layer=str(i)) for i in range(4)]
    for i, k in enumerate(keys):
        cache.save(k, np.full([50, 20], i, np.float32), np.arange(50))
        os.utime(cache._file(k), (1000 + i, 1000 + i))  # pylint: disable=protected-access
    (tmp_path / "notes.txt").write_text("not an entry")
    size = os.path.getsize(cache._file(keys[0]))  # pylint: disable=protected-access
    assert cache.load(keys[0]) is not None  # A hit makes entry 0 the most recently used.
    bounded = cache_lib.FeatureCache(str(tmp_path), max_bytes=int(2.5 * size))
    new = cache_lib.FeatureCache.key({"path": "m"}, layer="new")
    bounded.save(new, np.zeros([50, 20], np.float32), np.arange(50))
    # Five entries, room for two: the three least recently used (1, 2, 3) go.
    assert bounded.evicted == 3
    assert all(bounded.load(k) is None for k in keys[1:])
    assert bounded.load(keys[0]) is not None and bounded.load(new) is not None
    assert (tmp_path / "notes.txt").exists()
    # An entry larger than the bound is kept when it is the one just written.
    tiny = cache_lib.FeatureCache(str(tmp_path), max_bytes=10)
    tiny.save(keys[1], np.zeros([50, 20], np.float32), np.arange(50))
    assert tiny.load(keys[1]) is not None and tiny.load(new) is None
    assert tiny.prune(0) == 1 and tiny.entries() == []
    with pytest.raises(ValueError, match="max_bytes"):
        cache_lib.FeatureCache(str(tmp_path), max_bytes=-1)


def test_progress_bar_runs(toy, capsys):
    model = savedmodel.load_representation_model(toy[0])
    model.extract(np.zeros([3, 16, 16, 3], np.float32), ["pre_logits"], batch_size=2,
                  progress=True, total=3)
    assert "3/3" in capsys.readouterr().err


# ----------------------------------------------------------- vissl pooling --


def test_vissl_table_sizes():
    expected = {(112, 112, 64): 9216, (56, 56, 256): 9216, (28, 28, 512): 8192,
                (14, 14, 1024): 9216, (7, 7, 2048): 8192}
    for shape, size in expected.items():
        out = pooling.flatten_features(np.ones([1, *shape], np.float32), mode="vissl")
        assert out.shape == (1, size), shape


def test_avg_pool_matches_reference():
    x = np.random.default_rng(0).normal(size=[2, 9, 9, 3]).astype(np.float32)
    out = pooling.avg_pool(x, 4, 3, 1)
    padded = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    assert out.shape == (2, 3, 3, 3)
    for i in range(3):
        for j in range(3):
            np.testing.assert_allclose(
                out[:, i, j], padded[:, 3 * i:3 * i + 4, 3 * j:3 * j + 4].mean(axis=(1, 2)),
                rtol=1e-5, atol=1e-6)


def test_vissl_falls_back_to_adaptive_with_warning(caplog):
    x = np.random.default_rng(1).normal(size=[2, 8, 8, 150]).astype(np.float32)
    with caplog.at_level(logging.WARNING):
        out = pooling.flatten_features(x, mode="vissl")
    np.testing.assert_array_equal(out, pooling.flatten_features(x))
    assert "No VISSL pool for a 8x8x150 map" in caplog.text
    with pytest.raises(ValueError, match="Unknown pooling"):
        pooling.flatten_features(x, mode="nope")


# ----------------------------------------------------------------- patches --


@pytest.mark.parametrize("patch_size", [8, 6])
def test_patch_model_averages_over_patches(tmp_path, patch_size):
    path = save_toy_savedmodel(str(tmp_path / "patch"), input_size=24, block1_channels=8,
                               patch_grid=(3, 3), patch_size=patch_size)
    model = savedmodel.load_representation_model(path)
    assert model.patch_spec == patches.PatchSpec((3, 3), (patch_size, patch_size))
    assert model.input_size == (24, 24)
    images = np.random.default_rng(0).uniform(size=[2, 24, 24, 3]).astype(np.float32)
    got = model.extract(images, ["block1", "pre_logits"], batch_size=2)
    signature = tf.saved_model.load(path).signatures["representation"]
    for b in range(2):
        cells = [images[b, 8 * i:8 * i + 8, 8 * j:8 * j + 8] for i in range(3) for j in range(3)]
        cells = tf.image.resize(np.stack(cells), [patch_size] * 2, antialias=True)
        cells = tf.clip_by_value(cells, 0.0, 1.0)
        out = signature(images=cells)
        np.testing.assert_allclose(got["pre_logits"][b], out["pre_logits"].numpy().mean(0),
                                   rtol=1e-4, atol=1e-6)
        block1 = out["block1"].numpy().mean(0)
        np.testing.assert_allclose(got["block1"][b], block1.reshape(-1), rtol=1e-4, atol=1e-6)
    assert model.signature_calls == 1


def test_patch_metadata_errors():
    assert patches.patch_spec_from_metadata({"input_form": "image"}) is None
    with pytest.raises(ValueError, match="patch_size"):
        patches.patch_spec_from_metadata({"input_form": "patches", "patch_grid": [3, 3]})
