"""keras-ssl-prepare-data from files a user already has: Fashion-MNIST's IDX files, no network.

TFDS' `fashion_mnist` builder reads exactly 60,000 and 10,000 images. The
tiny fabricated set (20 train, 10 test) goes through the same TFDS code with
those two counts set to its own (in the preparing process only); the slow
test prepares the real files where Debian's dataset-fashion-mnist is installed.
"""

import collections
import gzip
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.cli_errors import USER_ERRORS, one_line
from keras_ssl.datasets import ChecksumMismatchError, load_dataset, prepare_dataset
from keras_ssl_eval.reading.data import load_images
from tests.helpers import REPO

FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
REAL_FILES = "/usr/share/datasets/fashion-mnist"
TRAIN, TEST = 20, 10

# Runs keras-ssl-prepare-data's entry point with TFDS' fixed split sizes set to the tiny set's.
_TINY_BINARY = (
    "import sys; from tensorflow_datasets.image_classification import mnist; "
    f"mnist._TRAIN_EXAMPLES, mnist._TEST_EXAMPLES = {TRAIN}, {TEST}; "
    "from keras_ssl.cli.prepare_data import run; sys.argv[0] = 'keras-ssl-prepare-data'; run()"
)


def _write_idx(path, array):
    """Writes `array` (uint8) in the IDX format (big-endian header: magic 0x08 <ndim>, sizes), gzipped."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    """Fabricated Fashion-MNIST files: 20 train and 10 test 28x28 grey images, labels 0..9."""
    directory = tmp_path_factory.mktemp("fashion_idx")
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, count in (("train", TRAIN), ("t10k", TEST)):
        images = rng.integers(0, 256, size=[count, 28, 28], dtype=np.uint8)
        labels = np.arange(count, dtype=np.uint8) % 10
        _write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
        arrays[prefix] = (images, labels)
    return str(directory), arrays


def _prepare(*flags):
    return subprocess.run(
        [sys.executable, "-c", _TINY_BINARY, *flags], capture_output=True, text=True, cwd=REPO,
        timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1"))


@pytest.fixture(scope="module")
def prepared(idx_dir, tmp_path_factory):
    """The fabricated files prepared by the binary: first refused for their checksums, then accepted."""
    manual, arrays = idx_dir
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    refused = _prepare("--dataset=fashion_mnist", f"--manual_dir={manual}", f"--data_dir={data_dir}")
    accepted = _prepare("--dataset=fashion_mnist", f"--manual_dir={manual}", f"--data_dir={data_dir}",
                        "--accept_checksum_mismatch")
    assert accepted.returncode == 0, accepted.stderr[-3000:]
    return data_dir, arrays, refused, accepted


def test_a_checksum_mismatch_is_one_line_naming_the_files_and_the_option(prepared):
    _, _, refused, _ = prepared
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert lines[-1].startswith("keras-ssl-prepare-data: Dataset 'fashion_mnist': the SHA-256 of")
    assert "Traceback" not in refused.stderr
    assert all(name in lines[-1] for name in FILES)
    assert "--accept_checksum_mismatch" in lines[-1]


def test_prepared_files_are_read_by_training_and_evaluation_alike(prepared):
    data_dir, arrays, _, accepted = prepared
    assert "prepared fashion_mnist from" in accepted.stdout
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = arrays[prefix]
        # Training's reader at the native 28 px: grey becomes RGB by repeating the channel.
        dataset, info = load_dataset("fashion_mnist", split, data_dir=data_dir, prepare=False)
        assert info.num_examples == len(images) and info.num_classes == 10
        assert info.class_names[0] == "T-shirt/top"
        examples = list(dataset.as_numpy_iterator())
        # TFDS stores examples in its own order; match them by pixels.
        found = {np.round(e["image"][..., 0] * 255).astype(np.uint8).tobytes(): e
                 for e in examples}
        for image, label in zip(images, labels, strict=True):
            example = found[image.tobytes()]
            assert int(example["label"]) == int(label)
            assert example["image"].shape == (28, 28, 3)
            np.testing.assert_array_equal(example["image"][..., 0], example["image"][..., 2])
        # 28 -> 32 px: training and the evaluation reader give the same images.
        train_32, _ = load_dataset("fashion_mnist", split, data_dir=data_dir, image_size=32,
                                   prepare=False)
        eval_32, eval_info = load_images("fashion_mnist", split, data_dir=data_dir,
                                         image_size=(32, 32))
        assert eval_info.num_examples == len(images)
        for a, b, native in zip(train_32, eval_32, examples, strict=True):
            np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())
            assert a["image"].shape == (32, 32, 3)
            expected = tf.clip_by_value(tf.image.resize(
                native["image"], (32, 32), antialias=True), 0.0, 1.0)
            np.testing.assert_allclose(a["image"].numpy(), expected.numpy(), atol=1e-6)


def _user_error_line(call):
    """The one line keras-ssl's binaries print for `call`'s error (which must be a user error)."""
    with pytest.raises(USER_ERRORS) as raised:
        call()
    return one_line(raised.value)


def test_errors_are_one_line_each(idx_dir, tmp_path):
    manual, _ = idx_dir
    data_dir = str(tmp_path / "tfds")
    line = _user_error_line(lambda: prepare_dataset(
        "fashion_mnist", data_dir, manual_dir=str(tmp_path / "nowhere")))
    assert f"The manual directory {str(tmp_path / 'nowhere')!r} does not exist" in line
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in FILES[:3]:
        with open(os.path.join(manual, name), "rb") as f:
            (partial / name).write_bytes(f.read())
    line = _user_error_line(lambda: prepare_dataset("fashion_mnist", data_dir,
                                                    manual_dir=str(partial)))
    assert f"lacks {FILES[3]}" in line and str(partial) in line
    line = _user_error_line(lambda: prepare_dataset("fashion_mnsit", data_dir, manual_dir=manual))
    assert line.startswith("Unknown dataset 'fashion_mnsit'")
    with pytest.raises(ChecksumMismatchError):
        prepare_dataset("fashion_mnist", data_dir, manual_dir=manual)
    assert not os.path.exists(os.path.join(data_dir, "fashion_mnist", "3.0.1", "dataset_info.json"))


def test_any_tfds_dataset_takes_its_files_from_the_manual_dir(tmp_path):
    """CIFAR-10's archive is checked like Fashion-MNIST's files, before anything is downloaded."""
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(b"not the archive")
    line = _user_error_line(lambda: prepare_dataset(
        "cifar10", str(tmp_path / "tfds"), manual_dir=str(tmp_path)))
    assert "Dataset 'cifar10': the SHA-256 of cifar-10-binary.tar.gz (15 bytes" in line
    assert "--accept_checksum_mismatch" in line


@pytest.mark.slow
@pytest.mark.skipif(not all(os.path.exists(os.path.join(REAL_FILES, f)) for f in FILES),
                    reason="dataset-fashion-mnist is not installed (apt-get install "
                           "dataset-fashion-mnist)")
def test_real_fashion_mnist_from_the_debian_package(tmp_path):
    data_dir = str(tmp_path / "tfds")
    prepare_dataset("fashion_mnist", data_dir, manual_dir=REAL_FILES, accept_checksum_mismatch=True)
    for split, count in (("train", 60_000), ("test", 10_000)):
        dataset, info = load_images("fashion_mnist", split, data_dir=data_dir, image_size=(32, 32))
        assert info.num_examples == count
        labels = collections.Counter(
            int(label) for batch in dataset.map(lambda e: e["label"]).batch(10_000)
            for label in batch.numpy())
        assert labels == {k: count // 10 for k in range(10)}
