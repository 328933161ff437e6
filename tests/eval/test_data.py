"""Tests of keras_ssl_eval.reading.data: folder and TFDS image sources."""

import logging
import re

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from keras_ssl_eval.reading import _tfds_source, data
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


def test_folder_truncated_jpeg_skipped_at_load(tmp_path, caplog):
    write_image_folder(str(tmp_path), 3, size=64, extension=".jpg")
    victim = tmp_path / "img_001.jpg"
    content = victim.read_bytes()
    victim.write_bytes(content[:len(content) // 2])  # A header-only check would still pass it.
    with caplog.at_level(logging.WARNING):
        ds, info = data.load_images(f"folder:{tmp_path}", "train")
    # Caught by the full decode at load time, so counted and named with the
    # other unreadable files, and never handed to tf.data.
    assert info.num_examples == 2 and info.num_skipped == 1
    assert "skipped 1 unreadable" in caplog.text and "img_001.jpg" in caplog.text
    elements = _collect(ds)
    assert [e["index"] for e in elements] == [0, 1]
    _check_elements(elements, (64, 64))
    for element, kept in zip(elements, ["img_000.jpg", "img_002.jpg"]):
        expected = tf.io.decode_jpeg((tmp_path / kept).read_bytes()).numpy() / 255
        np.testing.assert_allclose(element["image"], expected, atol=1e-6)


def test_folder_unsupported_extensions_reported(tmp_path, caplog):
    write_image_folder(str(tmp_path), {"a": 2, "b": 2}, size=8)
    (tmp_path / "a" / "scan.tif").write_bytes(b"II*\x00")
    (tmp_path / "b" / "scan2.TIF").write_bytes(b"II*\x00")
    (tmp_path / "b" / "notes.txt").write_text("labels by hand")
    (tmp_path / "b" / ".DS_Store").write_bytes(b"")  # Hidden: not worth a word.
    with caplog.at_level(logging.WARNING):
        ds, info = data.load_images(f"folder:{tmp_path}", "train")
    assert info.num_examples == 4 and info.num_skipped == 0 and len(_collect(ds)) == 4
    lines = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "ignored 3 file(s)" in lines[0] and ".tif 2, .txt 1" in lines[0]
    assert "scan.tif" in lines[0] and "notes.txt" in lines[0] and ".DS_Store" not in lines[0]


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


def _image_keys(ds):
    """The images of a dataset as bytes (the test images are random, so distinct)."""
    return [e["image"].tobytes() for e in _collect(ds)]


def test_folder_slices_without_split_folders(tmp_path):
    write_image_folder(str(tmp_path), {"a": 6, "b": 4}, size=8)
    name = f"folder:{tmp_path}"
    whole = set(_image_keys(data.load_images(name, "train")[0]))
    head_ds, head_info = data.load_images(name, "train[:80%]")
    tail_ds, tail_info = data.load_images(name, "train[80%:]")
    head, tail = _image_keys(head_ds), _image_keys(tail_ds)
    assert head_info.num_examples == len(head) == 8 and tail_info.num_examples == len(tail) == 2
    assert set(head).isdisjoint(tail) and set(head) | set(tail) == whole
    assert head_info.split == "train[:80%]" and head_info.class_names == ("a", "b")
    assert [e["index"] for e in _collect(head_ds)] == list(range(8))
    # The same files every time, and the same slice however it is written.
    assert _image_keys(data.load_images(name, "train[:80%]")[0]) == head
    assert _image_keys(data.load_images(name, "train[-20%:]")[0]) == tail
    assert len(_image_keys(data.load_images(name, "train[:3]")[0])) == 3
    assert set(_image_keys(data.load_images(name, "train[-3:]")[0])) < whole
    with pytest.raises(FileNotFoundError, match="no split folder 'test'.*'train\\[80%:\\]'"):
        data.load_images(name, "test[:50%]")


def test_folder_slices_of_split_folders(tmp_path):
    write_image_folder(str(tmp_path / "train"), {"a": 2, "b": 2}, size=8, seed=0)
    write_image_folder(str(tmp_path / "test"), {"a": 5, "b": 5}, size=8, seed=1)
    name = f"folder:{tmp_path}"
    test = set(_image_keys(data.load_images(name, "test")[0]))
    parts = [_image_keys(data.load_images(name, f"test[{a}%:{b}%]")[0])
             for a, b in [(0, 10), (10, 20), (20, 100)]]
    assert [len(p) for p in parts] == [1, 1, 8]
    assert set().union(*parts) == test and sum(len(p) for p in parts) == len(test)
    _, info = data.load_images(name, "test[10%:20%]")
    assert info.class_names == ("a", "b") and info.num_examples == 1


def test_folder_slice_order_is_fixed():
    # Pins the seeded shuffle: changing it would move files between the slices
    # of experiments already run.
    files = [(f"/data/{c}/img_{i}.png", k) for k, c in enumerate("ab") for i in range(5)]
    head = data._slice_files(files, ((0, True), (40, True)), "/data")
    tail = data._slice_files(files, ((40, True), None), "/data")
    assert len(head) == 4 and len(tail) == 6 and set(head) | set(tail) == set(files)
    assert head == [item for item in files if item in head]  # Natural order kept.
    assert [path for path, _ in head] == ["/data/a/img_0.png", "/data/b/img_2.png",
                                          "/data/b/img_3.png", "/data/b/img_4.png"]


@pytest.mark.parametrize("split", ["train[80%]", "train[:80%]+test", "train[:150%]",
                                   "train[a:b]", "train[:80%", "train[::2]"])
def test_folder_malformed_slice(tmp_path, split):
    write_image_folder(str(tmp_path), {"a": 2}, size=8)
    with pytest.raises(ValueError, match=re.escape(f"split {split!r}") + ".*"
                       + re.escape("SPLIT[START:END]")):
        data.load_images(f"folder:{tmp_path}", split)


def test_folder_empty_slice(tmp_path):
    write_image_folder(str(tmp_path), {"a": 2}, size=8)
    with pytest.raises(ValueError, match=r"split 'train\[:10%\]' selects none"):
        data.load_images(f"folder:{tmp_path}", "train[:10%]")


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



# ------------------------------------------------- reading by index (training)


def _read(access, indices):
    """`access.read` of `indices`: the examples, keyed by their extra field ``order``."""
    ds = tf.data.Dataset.from_tensor_slices(
        {"index": tf.constant(indices, tf.int64), "order": tf.range(len(indices))})
    return _collect(access.read(ds))


def _assert_read_by_index_like_stored_order(stored, access, indices):
    by_index = {int(e["index"]): e for e in stored}
    read = _read(access, indices)
    assert [int(e["index"]) for e in read] == indices
    assert [int(e["order"]) for e in read] == list(range(len(indices)))
    for e in read:
        np.testing.assert_array_equal(e["image"], by_index[int(e["index"])]["image"])
        assert e["label"] == by_index[int(e["index"])]["label"]


def test_folder_read_by_index_decodes_like_load_images(tmp_path):
    write_image_folder(str(tmp_path / "pets"), {"cat": 3, "dog": 3}, size=10)
    name = f"folder:{tmp_path / 'pets'}"
    stored, info, access = data.load_for_training(name, "train", image_size=8)
    assert info.num_examples == 6 and "6 image files read by index" in access.description
    _assert_read_by_index_like_stored_order(_collect(stored), access, [5, 0, 3, 3, 1])
    evaluated, _ = data.load_images(name, "train", image_size=8)
    _assert_read_by_index_like_stored_order(_collect(evaluated), access, [2, 4])


def test_tfds_split_held_in_memory_within_the_budget_only(prepared_dir):
    stored, info, access = data.load_for_training(
        "tiny_prepared/small", "train", data_dir=prepared_dir, memory_bytes=2**20)
    assert info.num_examples == 12 and "12 encoded images" in access.description
    _assert_read_by_index_like_stored_order(_collect(stored), access, [11, 0, 7, 7, 2])
    # The generator wrote pixel value 10 * i and label i % 2 for example i.
    for e in _collect(stored):
        assert e["label"] == round(float(e["image"][0, 0, 0]) * 255) // 10 % 2
    _, _, refused = data.load_for_training(
        "tiny_prepared/small", "train", data_dir=prepared_dir, memory_bytes=10)
    assert refused.read is None and "exceed the memory budget" in refused.description
