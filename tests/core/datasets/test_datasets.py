"""keras_ssl.datasets: the names training accepts, decoded the same way as evaluation."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from keras_ssl.datasets import load_dataset
from keras_ssl_eval.testing import write_image_folder
from tests.helpers import REPO
from tests.helpers.tiny_run import TINY_SHAPES, tiny_shapes_name


def _check_examples(dataset, size, count):
    examples = list(dataset.take(count))
    assert len(examples) == count
    for example in examples:
        assert set(example) == {"image", "label", "index"}
        assert example["image"].dtype.name == "float32"
        assert tuple(example["image"].shape) == (size, size, 3)
        image = example["image"].numpy()
        assert 0.0 <= image.min() and image.max() <= 1.0
    return examples


def test_synthetic_shapes_by_name(data_dir):
    dataset, info = load_dataset(tiny_shapes_name(), "train", data_dir=data_dir)
    assert info.num_classes == 12 and info.num_examples == 96
    examples = _check_examples(dataset, 16, 24)
    assert [int(e["index"]) for e in examples] == list(range(24))
    assert {int(e["label"]) for e in dataset} == set(range(12))


def test_resizing_to_image_size(data_dir):
    dataset, _ = load_dataset(tiny_shapes_name(), "test", data_dir=data_dir, image_size=24)
    _check_examples(dataset, 24, 2)


def test_folder_with_class_subfolders(tmp_path):
    write_image_folder(str(tmp_path / "pets"), {"cat": 3, "dog": 2}, size=20)
    (tmp_path / "pets" / "dog" / "broken.png").write_bytes(b"not a png")
    dataset, info = load_dataset(f"folder:{tmp_path / 'pets'}", "train", image_size=16)
    assert info.class_names == ("cat", "dog") and info.num_examples == 5
    labels = sorted(int(e["label"]) for e in _check_examples(dataset, 16, 5))
    assert labels == [0, 0, 0, 1, 1]


def test_folder_split_slices_for_training(tmp_path):
    # A folder of class folders only, cut into a training and a held-out part.
    write_image_folder(str(tmp_path / "pets"), {"cat": 6, "dog": 4}, size=16)
    name = f"folder:{tmp_path / 'pets'}"
    train, train_info = load_dataset(name, "train[:80%]")
    held_out, held_out_info = load_dataset(name, "train[80%:]")
    assert (train_info.num_examples, held_out_info.num_examples) == (8, 2)
    train_images = {e["image"].numpy().tobytes() for e in _check_examples(train, 16, 8)}
    held_out_images = {e["image"].numpy().tobytes() for e in _check_examples(held_out, 16, 2)}
    assert train_images.isdisjoint(held_out_images)


def test_any_tfds_name_through_mock_data():
    with tfds.testing.mock_data(num_examples=4):
        dataset, info = load_dataset("cifar10", "train")
        examples = _check_examples(dataset, 32, 4)
    assert info.num_classes == 10
    assert all(0 <= int(e["label"]) < 10 for e in examples)


def test_unknown_name_says_what_names_are_accepted(tmp_path):
    with pytest.raises(FileNotFoundError, match="Unknown dataset 'no_such_dataset_xyz'") as info:
        load_dataset("no_such_dataset_xyz", "train", data_dir=str(tmp_path))
    assert "folder:" in str(info.value)


def test_synthetic_shapes_images_are_deterministic(data_dir):
    first, _ = load_dataset(tiny_shapes_name(), "train", data_dir=data_dir)
    second, _ = load_dataset(tiny_shapes_name(), "train", data_dir=data_dir)
    a = next(iter(first.take(1)))["image"].numpy()
    b = next(iter(second.take(1)))["image"].numpy()
    np.testing.assert_array_equal(a, b)


# ------------------------------------------- TFDS datasets that are not there
@pytest.fixture
def no_network(monkeypatch):
    """Every HTTP request fails as on a machine without network access."""
    import requests

    def unreachable(*args, **kwargs):
        raise requests.exceptions.ConnectionError(
            "Failed to establish a new connection: [Errno 101] Network is unreachable")

    monkeypatch.setattr(requests.Session, "request", unreachable)


def _train_paper_config(gin_file, data_dir, model_dir):
    """Trains with a paper's config on `data_dir`; returns the FileNotFoundError's first line.

    gin appends "In call to configurable 'train'" on a line of its own; the
    binary prints the whole message, the first line has to say it all.
    """
    from keras_ssl import config, training

    config.parse_gin([os.path.join(REPO, gin_file)],
                     [f"keras_ssl.train.data_dir = {str(data_dir)!r}"])
    with pytest.raises(FileNotFoundError) as refused:
        training.train(str(model_dir))
    assert not os.path.exists(os.path.join(model_dir, "checkpoint"))
    return str(refused.value).splitlines()[0]


def test_paper_config_without_network_says_how_to_prepare_its_data(no_network, tmp_path):
    message = _train_paper_config("gin_configs/simclr/cifar_resnet18.gin", tmp_path / "tfds",
                                  tmp_path / "run")
    assert "'cifar10'" in message and str(tmp_path / "tfds") in message
    assert "could not be downloaded" in message and "keras-ssl-prepare-data cifar10" in message


def test_paper_config_without_manual_imagenet_files_names_the_manual_dir(no_network, tmp_path):
    message = _train_paper_config("gin_configs/simclr/imagenet_resnet50.gin", tmp_path / "tfds",
                                  tmp_path / "run")
    assert "'imagenet2012'" in message and "by hand" in message
    assert str(tmp_path / "tfds" / "downloads" / "manual") in message
    assert "keras-ssl-prepare-data imagenet2012" in message


def test_a_second_process_preparing_a_dataset_waits_for_the_first(tmp_path, monkeypatch):
    # Two runs started together on a fresh machine both prepared synthetic_shapes, and
    # the second failed to rename TFDS' incomplete directory onto the first's. Preparing
    # holds a lock per dataset and data_dir; one waiting for it finds the dataset done.
    import fcntl
    import threading

    from keras_ssl import datasets
    from keras_ssl.datasets.synthetic_shapes import synthetic_shapes_config

    # The tiny variant is not a registered config: its name gets its builder.
    registered = tfds.builder

    def builder_of(name, data_dir=None, **kwargs):
        if name == tiny_shapes_name():
            return registered("synthetic_shapes", config=synthetic_shapes_config(**TINY_SHAPES),
                              data_dir=data_dir)
        return registered(name, data_dir=data_dir, **kwargs)

    monkeypatch.setattr(tfds, "builder", builder_of)
    data_dir = str(tmp_path / "tfds")
    builder = tfds.builder(tiny_shapes_name(), data_dir=data_dir)
    os.makedirs(data_dir)
    info = os.path.join(str(builder.data_dir), "dataset_info.json")
    errors = []

    def prepare():
        try:
            datasets.prepare_dataset(tiny_shapes_name(), data_dir)
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    with open(os.path.join(data_dir, f".{builder.name}.prepare.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process preparing it
        waiting = threading.Thread(target=prepare)
        waiting.start()
        waiting.join(timeout=3)
        assert waiting.is_alive() and not os.path.exists(info)
        datasets._download_and_prepare(builder, tiny_shapes_name(), None, False)
        prepared_at = os.stat(info).st_mtime_ns
        fcntl.flock(lock, fcntl.LOCK_UN)
    waiting.join(timeout=60)
    assert not waiting.is_alive() and not errors, errors
    assert os.stat(info).st_mtime_ns == prepared_at  # not written twice
    _, dataset_info = load_dataset(tiny_shapes_name(), "train", data_dir=data_dir)
    assert dataset_info.num_examples == 96
