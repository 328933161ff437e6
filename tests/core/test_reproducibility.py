"""A run is a function of its config and seed: same weights, after a resume and on any replica count."""

import os
import signal

import numpy as np
import pytest
import tensorflow as tf

from keras_ssl import config, random, training
from keras_ssl.input_pipeline import example_stream
from keras_ssl.registry import AUGMENTATIONS
from tests.helpers.tiny_run import tiny_run_bindings
from tests.helpers.runs import (
    checkpoint_difference, progress_steps, run_bindings, run_training, signal_at_step,
    start_training,
)

STEPS = 8  # the steps of conftest's `reference_run`, the uninterrupted baseline


def _ckpt(model_dir, step=STEPS):
    return os.path.join(model_dir, f"ckpt-{step}")


@pytest.mark.slow
def test_same_command_and_seed_give_identical_checkpoints(reference_run, data_dir, tmp_path):
    model_dir = str(tmp_path / "again")
    run_training(model_dir, run_bindings(data_dir, STEPS))
    for step in (4, 6, 8):
        assert checkpoint_difference(_ckpt(reference_run, step), _ckpt(model_dir, step)) == 0.0
    other_seed = str(tmp_path / "other_seed")
    run_training(other_seed, run_bindings(data_dir, 2, **{"keras_ssl.train.seed": 1}))
    init = os.path.join("init", "ckpt-0")
    assert checkpoint_difference(os.path.join(reference_run, init), os.path.join(model_dir, init)) == 0
    assert checkpoint_difference(os.path.join(reference_run, init), os.path.join(other_seed, init)) > 0


@pytest.mark.slow
def test_a_run_that_prepares_its_dataset_first_builds_the_same_weights(tmp_path):
    """A fresh machine's first run generates the dataset in-process; the next run reads it.

    Both must build the same weights (the quickstart's first run on a new machine printed
    another table when the seed was set before the preparation drew random numbers).
    """
    data_dir = str(tmp_path / "tfds")
    bindings = tiny_run_bindings(data_dir, "synthetic_shapes/TCV-", steps=2)
    first, second = str(tmp_path / "prepares"), str(tmp_path / "reads")
    assert "Downloading and preparing" in run_training(first, bindings).stdout
    run_training(second, bindings)
    init = os.path.join("init", "ckpt-0")
    assert checkpoint_difference(os.path.join(first, init), os.path.join(second, init)) == 0


@pytest.mark.slow
def test_run_killed_after_a_checkpoint_resumes_to_identical_weights(reference_run, data_dir, tmp_path):
    model_dir = str(tmp_path / "killed")
    bindings = run_bindings(data_dir, STEPS)
    first = start_training(model_dir, bindings)
    # The progress line of step 6 comes after the checkpoint of step 4 is written.
    signal_at_step(first, 6, signal.SIGKILL)
    first.wait(timeout=60)
    second = run_training(model_dir, bindings)
    assert "resuming from the checkpoint of step" in second.stdout
    assert progress_steps(second.stdout)[-1] == STEPS
    assert progress_steps(second.stdout)[0] in (6, 8)
    assert checkpoint_difference(_ckpt(reference_run), _ckpt(model_dir)) == 0.0


@pytest.mark.slow
def test_two_cpu_replicas_equal_one_device(reference_run, data_dir, tmp_path):
    # The kNN monitor runs too: it must work on replicas and leave the weights alone.
    monitor = ["keras_ssl.knn_monitor.every_steps = 4", "keras_ssl.knn_monitor.num_examples = 24",
               "keras_ssl.knn_monitor.k = 5"]
    model_dir = str(tmp_path / "mirrored")
    result = run_training(
        model_dir, run_bindings(data_dir, STEPS) + monitor, "--strategy=mirrored",
        "--cpu_replicas=2",
    )
    assert "MirroredStrategy: 2 replica(s) on CPU; global batch 8, 4 per replica" in result.stdout
    assert result.stdout.count("knn_accuracy") == 3  # steps 0, 4 and 8
    assert checkpoint_difference(_ckpt(reference_run), _ckpt(model_dir)) < 1e-5


@pytest.mark.parametrize("stack", AUGMENTATIONS.names())
def test_augmentation_gives_the_same_view_for_the_same_seed_eagerly_and_in_tf_data(stack):
    fn = AUGMENTATIONS.get(stack)
    image = tf.random.stateless_uniform([32, 32, 3], [3, 4])
    if stack == "randaugment":
        # Model Garden's RandAugment draws from stateful ops: deterministic training refuses it.
        with random.seeded(random.example_seed(0, 1)):
            assert "RandomUniform" in random.find_stateful_random_ops(fn, tf.TensorSpec([32, 32, 3]))
        return

    def view(example):
        with random.seeded(random.example_seed(7, example["index"])):
            return fn(example["image"])

    examples = tf.data.Dataset.from_tensor_slices({"image": tf.stack([image] * 3),
                                                   "index": tf.constant([5, 6, 5], tf.int64)})
    in_tf_data = list(examples.map(view, num_parallel_calls=3, deterministic=True))
    eager = [view({"image": image, "index": tf.constant(i, tf.int64)}) for i in (5, 6, 5)]
    for a, b in zip(eager, in_tf_data):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
    np.testing.assert_array_equal(in_tf_data[0].numpy(), in_tf_data[2].numpy())
    if stack != "none":
        assert not np.array_equal(in_tf_data[0].numpy(), in_tf_data[1].numpy())


def test_example_seed_depends_on_every_key():
    seeds = {tuple(random.example_seed(*keys).numpy()) for keys in
             [(0, 1, 2), (1, 1, 2), (0, 2, 2), (0, 1, 3), (0, 2, 1)]}
    assert len(seeds) == 5
    assert tuple(random.example_seed(0, 1, 2).numpy()) == tuple(random.example_seed(0, 1, 2).numpy())


def _fold_in_chain(run_seed, *keys):
    """`example_seed` as TensorFlow's public ops write it: one fold-in per key."""
    seed = tf.stack([tf.constant(0, tf.int64), tf.cast(run_seed, tf.int64)])
    for key in keys:
        seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(key, tf.int64))
    return seed.numpy()


@pytest.mark.parametrize("keys", [(0,), (3, 11), (5, 2, 7), (1, "tensor"), (7, 3, "tensor")])
def test_example_seed_is_the_fold_in_chain_with_python_and_tensor_keys(keys):
    # A Python key is folded in eagerly; a tensor key (an example's index) in the graph.
    keys = tuple(tf.constant(4, tf.int64) if k == "tensor" else k for k in keys)
    expected = _fold_in_chain(*keys)
    np.testing.assert_array_equal(random.example_seed(*keys).numpy(), expected)
    np.testing.assert_array_equal(random.example_seed(tf.constant(keys[0]), *keys[1:]).numpy(), expected)
    in_tf_data = tf.data.Dataset.range(3).map(lambda i: random.example_seed(*keys[:-1], i))
    np.testing.assert_array_equal(
        np.stack(list(in_tf_data)), np.stack([_fold_in_chain(*keys[:-1], i) for i in range(3)]))


def test_seed_sequence_is_fold_in_and_uniform_is_stateless_uniform_bit_for_bit():
    # The cheaper sequence (one draw per example, then stacks) must not change any stream.
    base = random.example_seed(3, 11)
    with random.seeded(base):
        seeds = [random.next_seed().numpy() for _ in range(3)]
    np.testing.assert_array_equal(
        seeds, [tf.random.experimental.stateless_fold_in(base, i).numpy() for i in range(3)])
    with random.seeded(base):
        draws = [random.uniform([5]), random.uniform([2, 3], 0.0, 2.0),
                 random.uniform([], 0, 10, tf.int32), random.uniform([4], dtype=tf.float64)]
    fold = [tf.random.experimental.stateless_fold_in(base, i) for i in range(4)]
    expected = [tf.random.stateless_uniform([5], fold[0]),
                tf.random.stateless_uniform([2, 3], fold[1], 0.0, 2.0),
                tf.random.stateless_uniform([], fold[2], 0, 10, tf.int32),
                tf.random.stateless_uniform([4], fold[3], dtype=tf.float64)]
    for draw, reference in zip(draws, expected):
        assert draw.dtype == reference.dtype
        np.testing.assert_array_equal(draw.numpy(), reference.numpy())


def test_seed_sequence_continues_across_graphs():
    # A draw in a tf.function, then eagerly, then in a while-loop body: one sequence.
    base = random.example_seed(2, 5)
    with random.seeded(base):
        first = tf.function(random.next_seed)()
        second = random.next_seed()
        third = tf.while_loop(lambda i, s: i < 1, lambda i, s: (i + 1, random.next_seed()),
                              (0, tf.zeros([2], tf.int32)))[1]
    np.testing.assert_array_equal(
        np.stack([first, second, third]),
        [tf.random.experimental.stateless_fold_in(base, i).numpy() for i in range(3)])


def _indices(stream, count):
    return [int(e["index"]) for e in stream.take(count)]


def test_example_stream_resumed_at_a_position_continues_the_uninterrupted_one():
    examples = tf.data.Dataset.from_tensor_slices(
        {"image": tf.zeros([10, 2, 2, 3]), "index": tf.range(10, dtype=tf.int64)})
    full = _indices(example_stream(examples, 10, seed=3, shuffle_buffer=4), 35)
    for start in (0, 7, 10, 23):
        resumed = example_stream(examples, 10, seed=3, shuffle_buffer=4, start_position=start)
        assert _indices(resumed, 35 - start) == full[start:]
    # Each epoch is a permutation of the split, and epochs differ.
    epochs = [full[i:i + 10] for i in (0, 10, 20)]
    assert all(sorted(epoch) == list(range(10)) for epoch in epochs)
    assert epochs[0] != epochs[1]
    with_seeds = list(example_stream(examples, 10, seed=3, shuffle_buffer=4).take(12))
    assert not np.array_equal(with_seeds[0]["seed"], with_seeds[10]["seed"])


@pytest.mark.slow
def test_deterministic_training_refuses_stateful_augmentation_before_writing(data_dir, tmp_path):
    model_dir = str(tmp_path / "run")
    config.parse_gin(bindings=run_bindings(data_dir, 2, **{"rotation.augmentation": "'randaugment'"}))
    with pytest.raises(training.TrainingConfigError, match="RandomUniform.*keras_ssl.random"):
        training.train(model_dir)
    assert not os.path.exists(model_dir)


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items()
                if k != "created" and "second" not in k and "time" not in k}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


@pytest.mark.slow
def test_evaluation_of_the_same_export_gives_the_same_numbers(trained_run, data_dir, tmp_path):
    import json

    from tests.helpers.tiny_run import tiny_shapes_name
    from keras_ssl_eval.testing import run_eval_main

    results = []
    for attempt in ("first", "second"):
        run_eval_main([
            f"--saved_model={trained_run['final_export']}",
            f"--scratch_model={trained_run['initial_export']}", f"--dataset={tiny_shapes_name()}",
            f"--data_dir={data_dir}", "--layers=block2,pre_logits",
            "--protocol=grid,knn,lowshot,utility", "--epochs=3", "--mlp_hidden=16", "--knn_k=5",
            "--shots=1,2", "--draws=2", "--budgets=12,24", "--finetune_steps=3",
            "--finetune_batch_size=8", "--l2_grid=1e-3,1e-1", "--batch_size=16",
            "--cache_dir=", "--plots=false", "--progress=false", f"--output={tmp_path / attempt}",
        ])
        results.append(_without_timings(json.loads((tmp_path / attempt / "results.json").read_text())))
    assert results[0]["models"] == results[1]["models"]
