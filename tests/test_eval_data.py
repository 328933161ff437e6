"""Tests of keras_ssl_eval.data: folder and TFDS image sources."""

import logging

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from keras_ssl_eval import _tfds_source, data
from keras_ssl_eval.testing import write_image_folder


def _collect(ds):
    return list(ds.as_numpy_iterator())


def _check_elements(elements, size):
    for e in elements:
        assert e["image"].shape == (*size, 3)
        assert e["image"].dtype == np.float32
        assert 0.0 <= e["image"].min() and e["image"].max() <= 1.0
        assert e["label"].dtype == np.int64 and e["index"].dtype == np.int64


# ----------------------------------------------------------------- folders --


def test_folder_labels_from_subfolders(tmp_path):
    write_image_folder(str(tmp_path), {"dog": 2, "cat": 3}, size=8)
    ds, info = data.load_images(f"folder:{tmp_path}", "train")
    elements = _collect(ds)
    _check_elements(elements, (8, 8))
    assert info.class_names == ("cat", "dog") and info.num_classes == 2
    assert info.num_examples == 5 and info.image_size == (8, 8) and info.num_skipped == 0
    assert [e["label"] for e in elements] == [0, 0, 0, 1, 1]  # Sorted class names.
    assert [e["index"] for e in elements] == list(range(5))


def test_folder_corrupt_file_skipped_and_counted(tmp_path, caplog):
    write_image_folder(str(tmp_path), {"a": 2, "b": 2}, size=8)
    (tmp_path / "a" / "broken.JPG").write_bytes(b"not an image at all")
    with caplog.at_level(logging.WARNING):
        ds, info = data.load_images(f"folder:{tmp_path}", "train")
    assert info.num_examples == 4 and info.num_skipped == 1
    assert "skipped 1 unreadable" in caplog.text and "broken.JPG" in caplog.text
    assert len(_collect(ds)) == 4


def test_folder_truncated_jpeg_dropped_at_decode(tmp_path):
    write_image_folder(str(tmp_path), 3, size=64, extension=".jpg")
    victim = tmp_path / "img_001.jpg"
    content = victim.read_bytes()
    victim.write_bytes(content[:len(content) // 2])  # Pillow's header check still passes.
    ds, info = data.load_images(f"folder:{tmp_path}", "train")
    elements = _collect(ds)
    # Two images come out, keeping their file indices; the truncated one is dropped.
    assert len(elements) == 2
    assert [e["index"] for e in elements] == [0, 2]
    _check_elements(elements, (64, 64))
    # info counts the files whose header checks out (no full decode at load time),
    # so it overcounts by the file only decoding finds broken: an upper bound here.
    assert info.num_examples == 3 and info.num_skipped == 0


def test_folder_nothing_readable(tmp_path):
    (tmp_path / "x.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match="none of the 1 image files"):
        data.load_images(f"folder:{tmp_path}", "train")


def test_folder_unlabelled_grayscale_resized(tmp_path):
    for i in range(3):
        Image.fromarray(np.full([10, 12], 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    ds, info = data.load_images(f"folder:{tmp_path}", "train", image_size=6)
    elements = _collect(ds)
    _check_elements(elements, (6, 6))
    assert info.num_classes == 0 and info.class_names == () and info.image_size == (6, 6)
    assert all(e["label"] == -1 for e in elements)
    np.testing.assert_allclose(elements[2]["image"], 80 / 255, atol=1e-6)  # Grey -> RGB.


def test_folder_mixed_sizes_need_image_size(tmp_path):
    write_image_folder(str(tmp_path / "a"), 1, size=8)
    write_image_folder(str(tmp_path / "b"), 1, size=10)
    with pytest.raises(ValueError, match="pass image_size"):
        data.load_images(f"folder:{tmp_path}", "train")
    _, info = data.load_images(f"folder:{tmp_path}", "train", image_size=(4, 5))
    assert info.image_size == (4, 5)


def test_folder_split_subfolders(tmp_path):
    write_image_folder(str(tmp_path / "train"), {"a": 2, "b": 2}, size=8)
    write_image_folder(str(tmp_path / "test"), {"b": 1, "c": 1}, size=8)
    _, train_info = data.load_images(f"folder:{tmp_path}", "train")
    ds, test_info = data.load_images(f"folder:{tmp_path}", "test")
    # Labels agree across splits: classes are the union of all split folders.
    assert train_info.class_names == test_info.class_names == ("a", "b", "c")
    assert [e["label"] for e in _collect(ds)] == [1, 2]
    with pytest.raises(FileNotFoundError, match="no split folder 'validation'.*test.*train"):
        data.load_images(f"folder:{tmp_path}", "validation")


def test_folder_without_split_folders_is_train(tmp_path):
    write_image_folder(str(tmp_path), {"a": 1}, size=8)
    with pytest.raises(FileNotFoundError, match="no split folder 'test'"):
        data.load_images(f"folder:{tmp_path}", "test")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_images(f"folder:{tmp_path / 'missing'}", "train")


def test_folder_shuffle_keeps_index(tmp_path):
    write_image_folder(str(tmp_path), {"a": 4, "b": 4}, size=8)
    plain = {e["index"]: e for e in _collect(data.load_images(f"folder:{tmp_path}", "train")[0])}
    ds, _ = data.load_images(f"folder:{tmp_path}", "train", shuffle_files=True, seed=3)
    shuffled = _collect(ds)
    assert [e["index"] for e in shuffled] != list(range(8))
    for e in shuffled:
        np.testing.assert_array_equal(e["image"], plain[e["index"]]["image"])
        assert e["label"] == plain[e["index"]]["label"]


# -------------------------------------------------------------------- TFDS --


def test_tfds_grayscale_becomes_rgb():
    with tfds.testing.mock_data(num_examples=3):
        ds, info = data.load_images("mnist", "train", image_size=(8, 8))
        elements = _collect(ds)
    _check_elements(elements, (8, 8))
    assert info.num_classes == 10 and info.num_examples == 3 and info.image_size == (8, 8)
    assert [e["index"] for e in elements] == [0, 1, 2]
    for e in elements:
        assert 0 <= e["label"] < 10
        np.testing.assert_array_equal(e["image"][..., 0], e["image"][..., 2])


def test_tfds_rgb_native_size():
    with tfds.testing.mock_data(num_examples=2):
        ds, info = data.load_images("cifar10", "test")
        elements = _collect(ds)
    _check_elements(elements, (32, 32))
    assert info.image_size == (32, 32) and info.num_classes == 10


def test_tfds_missing_dataset_error(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        data.load_images("no_such_dataset_xyz", "train", data_dir=str(tmp_path))
    message = str(error.value)
    assert "no_such_dataset_xyz" in message and str(tmp_path) in message
    assert "keras-ssl-prepare-data no_such_dataset_xyz" in message and "folder:" in message


def test_tfds_registered_but_not_prepared(tmp_path):
    with pytest.raises(FileNotFoundError, match="not prepared.*keras-ssl-prepare-data mnist"):
        data.load_images("mnist", "train", data_dir=str(tmp_path))


def test_tfds_bad_image_shape():
    class _Feature:
        shape = (28, 28)

    with pytest.raises(ValueError, match="expected \\[height, width, channels\\]"):
        _tfds_source._check_image_feature("x", _Feature())  # pylint: disable=protected-access


with tfds.core.registered.skip_registration():
    # Defined without registration, as in a process that never imports the
    # builder's code: reading it must go through TFDS' read-only builder.
    class TinyPrepared(tfds.core.GeneratorBasedBuilder):
        """A tiny 3-shard dataset with a config, like synthetic_shapes/TCVL."""

        VERSION = tfds.core.Version("1.0.0")
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="small")]

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(6, 6, 3)),
                "label": tfds.features.ClassLabel(names=["even", "odd"]),
            }))

        def _split_generators(self, dl_manager):
            del dl_manager
            return {"train": self._generate_examples(12)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"image": np.full([6, 6, 3], 10 * i, np.uint8), "label": i % 2}


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    builder = TinyPrepared(data_dir=data_dir, config="small")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(num_shards=3))
    assert len(builder.info.splits["train"].file_instructions) == 3
    return data_dir


def test_tfds_unregistered_builder_read_from_files(prepared_dir):
    builder = tfds.builder("tiny_prepared/small", data_dir=prepared_dir)
    assert isinstance(builder, tfds.core.read_only_builder.ReadOnlyBuilder)
    ds, info = data.load_images("tiny_prepared/small", "train", data_dir=prepared_dir)
    elements = _collect(ds)
    assert info.num_examples == 12 and info.class_names == ("even", "odd")
    assert info.image_size == (6, 6)
    # The generator wrote pixel value 10 * i for example i.
    values = sorted(round(float(e["image"][0, 0, 0]) * 255) for e in elements)
    assert values == [10 * i for i in range(12)]
    assert sorted(e["index"] for e in elements) == list(range(12))


def test_tfds_shuffled_files_keep_index(prepared_dir):
    plain = {int(e["index"]): e for e in _collect(
        data.load_images("tiny_prepared/small", "train", data_dir=prepared_dir)[0])}
    ds, _ = data.load_images("tiny_prepared/small", "train", data_dir=prepared_dir,
                             shuffle_files=True, seed=1)
    shuffled = _collect(ds)
    assert [int(e["index"]) for e in shuffled] != list(range(12))  # Shards reordered.
    assert sorted(int(e["index"]) for e in shuffled) == list(range(12))
    for e in shuffled:
        np.testing.assert_array_equal(e["image"], plain[int(e["index"])]["image"])
    # Slices are indexed within the slice.
    ds, info = data.load_images("tiny_prepared/small", "train[5:9]", data_dir=prepared_dir,
                                shuffle_files=True, seed=2)
    assert info.num_examples == 4
    assert sorted(int(e["index"]) for e in _collect(ds)) == [0, 1, 2, 3]


def test_tfds_unknown_split(prepared_dir):
    with pytest.raises(ValueError, match="no split 'test'.*train"):
        data.load_images("tiny_prepared/small", "test", data_dir=prepared_dir)

