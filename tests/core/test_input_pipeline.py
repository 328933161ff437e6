"""keras_ssl.input_pipeline: each epoch a full permutation of the split, reproducible, resumable,
the same rows for every replica count, read through the real folder and TFDS loaders."""

import collections

import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.datasets import load_training_split
from keras_ssl.input_pipeline import (
    DEFAULT_WINDOW, distributed_batches, example_stream, permutation, shuffle_order,
)
from keras_ssl_eval.reading.data import RandomAccess
from keras_ssl_eval.testing import write_image_folder
from tests.helpers.runs import checkpoint_difference, run_bindings, run_training
from tests.helpers.tiny_run import tiny_run_bindings, tiny_shapes_name

CLASSES, PER_CLASS = 10, 20  # 200 images stored class by class
N = CLASSES * PER_CLASS


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory):
    """A folder of 10 class sub-folders of 20 tiny PNGs each: read in order, it is class-sorted."""
    root = str(tmp_path_factory.mktemp("ordered") / "images")
    write_image_folder(root, {f"c{k}": PER_CLASS for k in range(CLASSES)}, size=8)
    return "folder:" + root


@pytest.fixture(scope="module")
def folder_split(class_folder):
    return load_training_split(class_folder, "train", image_size=8)


def _rows(stream, count, key="index"):
    return [int(e[key]) for e in stream.take(count).as_numpy_iterator()]


class _Batcher:
    """The part of a Method that `distributed_batches` uses, keeping the labels."""

    @staticmethod
    def make_dataset(stream, batch_size):
        return stream.batch(batch_size, drop_remainder=True)


def _batches(examples, info, access, shuffle_buffer, steps, batch=20):
    strategy = tf.distribute.get_strategy()
    batches = distributed_batches(
        strategy, _Batcher(), examples, info.num_examples, global_batch_size=batch, seed=7,
        shuffle_buffer=shuffle_buffer, access=access)
    iterator = iter(batches)
    return [next(iterator) for _ in range(steps)]


def test_class_ordered_folder_gives_batches_of_many_classes(folder_split):
    examples, info, access = folder_split
    assert access.read is not None and "200 image files read by index" in access.description
    batches = _batches(examples, info, access, None, steps=2 * N // 20)
    classes = [len(set(b["label"].numpy().tolist())) for b in batches]
    # 20 of 200 images drawn at random hold ~8.8 of 10 classes; 5 or fewer has probability < 1e-4.
    assert min(classes) >= 6, classes
    # Each epoch holds every image once: every class 20 times.
    epoch = collections.Counter(int(i) for b in batches[:N // 20] for i in b["label"].numpy())
    assert epoch == {k: PER_CLASS for k in range(CLASSES)}
    # What the test guards against: windows of 20 consecutive files hold one class each.
    windowed = _batches(examples, info, access, 20, steps=N // 20)
    assert {len(set(b["label"].numpy().tolist())) for b in windowed} == {1}


def test_each_epoch_is_a_permutation_fixed_by_the_seed(folder_split):
    examples, _, access = folder_split
    stream = _rows(example_stream(examples, N, seed=3, access=access), 3 * N)
    epochs = [stream[e * N:(e + 1) * N] for e in range(3)]
    assert all(sorted(epoch) == list(range(N)) for epoch in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    assert stream == _rows(example_stream(examples, N, seed=3, access=access), 3 * N)
    assert stream[:N] != _rows(example_stream(examples, N, seed=4, access=access), N)
    # The order is the documented draw, and each image comes with its own label.
    assert epochs[1] == permutation(3, 1, N).numpy().tolist()
    pairs = example_stream(examples, N, seed=3, access=access).take(N).as_numpy_iterator()
    assert all(int(e["label"]) == int(e["index"]) // PER_CLASS for e in pairs)


@pytest.mark.parametrize("start", [1, 37, N, 2 * N + 11])
def test_a_stream_resumed_at_a_position_continues_the_uninterrupted_one(folder_split, start):
    examples, _, access = folder_split
    full = list(example_stream(examples, N, seed=3, access=access).take(start + 30))
    resumed = list(example_stream(examples, N, seed=3, access=access, start_position=start)
                   .take(30))
    for a, b in zip(full[start:], resumed, strict=True):
        for key in ("index", "label", "seed", "image"):
            np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())


def test_two_input_pipelines_hold_the_rows_of_one(folder_split):
    """Pipeline i of 2 keeps the i-th half of each global batch of 8, the rows one pipeline holds."""
    examples, info, access = folder_split
    one = _rows(example_stream(examples, N, seed=5, access=access, start_position=16), 64)

    class TwoWorkers:
        @staticmethod
        def distribute_datasets_from_function(dataset_fn):
            return [dataset_fn(tf.distribute.InputContext(2, i, 2)) for i in range(2)]

    halves = distributed_batches(
        TwoWorkers(), _Batcher(), examples, info.num_examples, global_batch_size=8, seed=5,
        start_step=2, access=access)
    per_pipeline = [[list(b["index"].numpy()) for b in h.take(8)] for h in halves]
    joined = [i for step in zip(*per_pipeline) for half in step for i in half]
    assert joined == one


def test_tfds_split_held_in_memory_gives_the_windowed_stream_of_one_window(data_dir):
    """A full permutation read by index is, bit for bit, the old single-window shuffle."""
    examples, info, access = load_training_split(
        tiny_shapes_name(), "train", data_dir=data_dir, image_size=16, memory_bytes=2**20)
    assert access.read is not None and "held in memory" in access.description
    n = info.num_examples
    for start in (0, 29, n + 3):
        by_index = example_stream(examples, n, seed=2, access=access, start_position=start)
        one_window = example_stream(examples, n, seed=2, shuffle_buffer=n, start_position=start)
        for a, b in zip(by_index.take(n + 20), one_window.take(n + 20), strict=True):
            assert set(a) == set(b) == {"image", "label", "index", "seed"}
            for key in a:
                np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())


def test_a_split_over_the_memory_budget_is_read_in_windows_with_one_warning(data_dir):
    _, info, access = load_training_split(
        tiny_shapes_name(), "train", data_dir=data_dir, image_size=16, memory_bytes=0)
    assert access.read is None and "exceed the memory budget of 0 MiB" in access.description
    order = shuffle_order(50_000, None, access)
    assert order.window == DEFAULT_WINDOW and not order.by_index
    assert f"Only windows of {DEFAULT_WINDOW} consecutive examples" in order.warning
    assert "keras_ssl.train.shuffle_memory_mb" in order.warning
    # Small enough for one window: a full permutation, no warning.
    assert shuffle_order(info.num_examples, None, access).warning is None


def test_shuffle_buffer_is_honoured_and_checked():
    readable = RandomAccess(read=lambda ds: ds, description="test")
    assert shuffle_order(1000, None, readable).window == 1000
    assert shuffle_order(1000, 5000, readable).by_index
    small = shuffle_order(1000, 100, readable)
    assert small.window == 100 and not small.by_index
    assert "shuffle_buffer = None" in small.warning
    with pytest.raises(ValueError, match="shuffle_buffer must be None"):
        shuffle_order(1000, 0, readable)


def test_training_on_a_class_ordered_folder_logs_a_full_permutation(class_folder, tmp_path):
    """keras-ssl-train on the folder: the run says how it orders the data and does not warn."""
    bindings = tiny_run_bindings(str(tmp_path / "tfds"), class_folder, steps=2)
    bindings = [b for b in bindings if "shuffle_buffer" not in b] + [
        "keras_ssl.train.image_size = 16", "keras_ssl.train.export = False"]
    result = run_training(str(tmp_path / "run"), bindings)
    assert "data order: a full permutation of the 200 examples each epoch" in result.stdout
    assert "Only windows" not in result.stderr


@pytest.mark.slow
def test_two_cpu_replicas_read_by_index_train_like_one_device(data_dir, tmp_path):
    """The TFDS split held in memory feeds a MirroredStrategy like one device (same rows, same weights)."""
    bindings = run_bindings(data_dir, 4)
    bindings = [b for b in bindings if "shuffle_buffer" not in b] + ["keras_ssl.train.export = False"]
    one = run_training(str(tmp_path / "one"), bindings)
    two = run_training(str(tmp_path / "two"), bindings, "--strategy=mirrored", "--cpu_replicas=2")
    for result in (one, two):
        assert "data order: a full permutation of the 96 examples each epoch" in result.stdout
        assert "held in memory, decoded by index" in result.stdout
    difference = checkpoint_difference(str(tmp_path / "one" / "ckpt-4"),
                                       str(tmp_path / "two" / "ckpt-4"))
    assert difference < 1e-5
