"""DeepCluster: the weighted loss, inputs, setup errors, the epoch hook, replicas and resume."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_ssl import clustering, config, training
from keras_ssl.random import example_seed
from keras_ssl.registry import METHODS
from keras_ssl.run_dir import available_steps
from keras_ssl_methods.deepcluster import cluster_weights
from tests.helpers import REPO
from tests.helpers.classic_methods import fit_losses
from tests.helpers.method_runs import build_configured_method
from tests.helpers.runs import checkpoint_difference, checkpoint_values
from keras_ssl.testing import build_tiny_method, tiny_backbone, tiny_examples
from tests.helpers.tiny_run import TINY_SHAPES, tiny_run_bindings, tiny_shapes_name


def _built(**overrides):
    method = build_tiny_method("deepcluster", **overrides)
    examples = tiny_examples("deepcluster")
    method.adapt(examples)
    method.build_from_batch(next(iter(method.make_dataset(examples, 4))))
    return method, examples


def _numpy_loss(logits, targets, counts, num_examples):
    """Mean over the batch of N / (k' n_c) * cross-entropy, the paper's loss per cluster."""
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(
        -1, keepdims=True)) - logits.max(-1, keepdims=True)
    nonempty = (counts > 0).sum()
    weights = np.where(counts > 0, num_examples / (nonempty * np.maximum(counts, 1)), 0.0)
    return np.mean(-weights[targets] * log_probs[np.arange(len(targets)), targets])


def test_loss_is_the_cluster_weighted_cross_entropy_of_numpy():
    method, examples = _built()
    method.assignments.assign([0, 1, 1, 2, 2, 2, 2, 1])
    counts = np.array([1.0, 3.0, 4.0])
    method.cluster_weights.assign(cluster_weights(counts, 8))
    batch = next(iter(method.make_dataset(examples, 4)))
    loss, metrics = method.compute_pretext_loss(batch, training=False)
    pre_logits = method.backbone(batch["image"], training=False)["pre_logits"]
    logits = method.classifier(pre_logits).numpy().astype(np.float64)
    targets = method.assignments.numpy()[batch["index"].numpy()]
    np.testing.assert_allclose(loss.numpy(), _numpy_loss(logits, targets, counts, 8), rtol=1e-5)
    assert metrics["nonempty_clusters"] == 3.0
    # Over a whole epoch the weighted mean is the mean over clusters of each cluster's mean.
    per_example = np.random.RandomState(0).rand(8)
    cluster_of = method.assignments.numpy()
    weighted = np.mean(cluster_weights(counts, 8).numpy()[cluster_of] * per_example)
    by_cluster = np.mean([per_example[cluster_of == c].mean() for c in range(3)])
    np.testing.assert_allclose(weighted, by_cluster, rtol=1e-6)


def test_preprocess_eager_and_inside_tf_data():
    method = build_tiny_method("deepcluster")
    example = next(iter(tiny_examples("deepcluster")))
    eager = method.seeded_preprocess(example)
    in_tf_data = next(iter(tf.data.Dataset.from_tensors(example).map(method.seeded_preprocess)))
    assert eager["image"].shape == (16, 16, 3) and int(eager["index"]) == 0
    np.testing.assert_allclose(eager["image"].numpy(), in_tf_data["image"].numpy(), atol=1e-6)
    bad = dict(example, index=tf.constant(8, tf.int64))
    with pytest.raises(tf.errors.InvalidArgumentError, match="deepcluster.num_examples = 8"):
        method.preprocess(bad)


def test_bad_settings_name_the_setting_and_the_fix():
    deepcluster = METHODS.get("deepcluster")
    with pytest.raises(ValueError, match="bind `deepcluster.num_examples = N`"):
        deepcluster(tiny_backbone())
    with pytest.raises(ValueError, match=r"num_clusters = 9 is more than the 8 training images"
                                         r".*at most 8"):
        deepcluster(tiny_backbone(), num_examples=8, num_clusters=9)
    with pytest.raises(ValueError, match="num_clusters must be >= 2"):
        deepcluster(tiny_backbone(), num_examples=8, num_clusters=1)
    method = deepcluster(tiny_backbone(), num_examples=10, num_clusters=9)
    with pytest.raises(ValueError, match="9 is more than the 8 training images"):
        method.adapt(tiny_examples("deepcluster"))
    method = deepcluster(tiny_backbone(), num_examples=10, num_clusters=3)
    with pytest.raises(ValueError, match="bind deepcluster.num_examples = 8"):
        method.adapt(tiny_examples("deepcluster"))


def test_hook_reclusters_whitened_features_reinitialises_the_classifier_and_is_seeded():
    method, examples = _built(num_clusters=4)
    kernel = method.classifier.kernel.numpy()
    method.before_epoch(0, examples)
    first = method.assignments.numpy().copy()
    assert int(method.clustered_epoch.numpy()) == 0
    assert not np.allclose(method.classifier.kernel.numpy(), kernel)
    # The hook is steps 1-4 of the docstring: pre-logits, PCA whitening, l2 norm, k-means.
    features = method.backbone(np.stack([e["image"] for e in examples.as_numpy_iterator()]),
                               training=False)["pre_logits"]
    points = tf.math.l2_normalize(clustering.pca_whitening(features, method.pca_dim)[0], -1)
    expected = clustering.kmeans(points, 4, example_seed(0, 101, 0), iterations=3)[1]
    np.testing.assert_array_equal(first, expected.numpy())
    counts = np.bincount(first, minlength=4)
    np.testing.assert_allclose(method.cluster_weights.numpy(), cluster_weights(counts, 8))
    # Same seed and epoch: same clusters and classifier; another epoch: another draw.
    kernel_0 = method.classifier.kernel.numpy()
    method.before_epoch(0, examples)
    np.testing.assert_array_equal(method.assignments.numpy(), first)
    np.testing.assert_array_equal(method.classifier.kernel.numpy(), kernel_0)
    method.before_epoch(1, examples)
    assert not np.array_equal(method.classifier.kernel.numpy(), kernel_0)


def test_loss_falls(data_dir):
    first, second = fit_losses(build_tiny_method("deepcluster"), data_dir)
    assert second < first


@pytest.mark.parametrize("config_file", ["synthetic_shapes.gin", "imagenet_alexnet.gin"])
def test_configs_build(config_file):
    bindings = ["alexnet.widening_factor = 1"] if "alexnet" in config_file else []
    method = build_configured_method(f"deepcluster/{config_file}", bindings)
    assert method.num_clusters == (120 if "synthetic" in config_file else 10000)
    assert method.assignments.shape == (method.num_examples,)


@pytest.mark.slow
def test_mirrored_replicas_get_the_assignments_of_one_device():
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tests", "helpers", "deepcluster_replicas.py")],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["one_device"] == report["mirrored"]
    assert report["epochs"] == [2, 2]  # the hook ran before each of the 3 steps
    assert report["max_state_difference"][0] < 1e-5


class _Killed(Exception):
    pass


def _assignments(path):
    values = checkpoint_values(path)
    (key,) = [k for k in values if "assignments" in k]
    (epoch,) = [k for k in values if "clustered_epoch" in k]
    return values[key], int(values[epoch])


@pytest.mark.slow
def test_resumed_run_keeps_the_pseudo_labels_and_reclusters_where_the_uninterrupted_did(
        data_dir, tmp_path):
    # 96 examples, batch 8: epochs start at steps 0, 12 and 24; loops of 5 steps are cut there.
    num = TINY_SHAPES["train_size"]
    bindings = tiny_run_bindings(data_dir, tiny_shapes_name(), steps=20, **{
        "keras_ssl.build_method.method": "'deepcluster'",
        "deepcluster.num_examples": num, "deepcluster.num_clusters": 4,
        "deepcluster.kmeans_iterations": 5, "deepcluster.feature_batch_size": 32,
        "keras_ssl.train.steps_per_loop": 5, "keras_ssl.train.max_checkpoints": 5,
    })
    full = str(tmp_path / "full")
    config.parse_gin(bindings=bindings)
    training.train(full, export=False)
    assert sorted(available_steps(full)) == [0, 5, 10, 15, 20]
    epoch_0, clustered_0 = _assignments(os.path.join(full, "ckpt-10"))
    epoch_1, clustered_1 = _assignments(os.path.join(full, "ckpt-15"))
    assert (clustered_0, clustered_1) == (0, 1)  # the hook ran at step 12, inside a loop
    assert not np.array_equal(epoch_0, epoch_1)

    # Killed after step 20's loop, before its checkpoint: resumes at 15, mid-epoch 1.
    resumed = str(tmp_path / "resumed")

    def kill(step, outputs):
        if step == 20:
            raise _Killed()

    config.parse_gin(bindings=bindings)
    with pytest.raises(_Killed):
        training.train(resumed, export=False, loop_end_callbacks=[kill])
    assert max(available_steps(resumed)) == 15
    config.parse_gin(bindings=bindings)
    training.train(resumed, export=False)
    assert checkpoint_difference(os.path.join(full, "ckpt-20"),
                                 os.path.join(resumed, "ckpt-20")) == 0.0
    np.testing.assert_array_equal(_assignments(os.path.join(resumed, "ckpt-20"))[0], epoch_1)
