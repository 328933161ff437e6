"""AMDIM: its views, the clipped global-local InfoNCE against numpy, the end-point checks."""


import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.registry import METHODS
from keras_ssl_methods.amdim import global_local_nce
from tests.helpers.classic_methods import fit_losses
from tests.helpers.method_runs import build_configured_method
from keras_ssl.testing import tiny_backbone

SIZE = 16


def _amdim(**kwargs):
    return METHODS.get("amdim")(tiny_backbone(), **{"embedding_dim": 16, **kwargs})


def _example(image, label=1):
    return {"image": tf.constant(image, tf.float32), "label": tf.constant(label, tf.int64),
            "index": tf.constant(0, tf.int64)}


def _batch(method, n=4, seed=0):
    images = np.random.RandomState(seed).rand(n, SIZE, SIZE, 3).astype(np.float32)
    examples = tf.data.Dataset.from_tensor_slices({
        "image": images, "label": np.arange(n) % 3, "index": np.arange(n, dtype=np.int64)})
    return next(iter(method.make_dataset(examples, n)))


def _numpy_nce(sources, targets, clip):
    """The paper's loss, term by term: source i against location l of its own image,
    every location of the other images as negatives, scores c tanh(u . v / sqrt(d) / c)."""
    sources, targets = sources.astype(np.float64), targets.astype(np.float64)
    n, locations, d = targets.shape
    raw = np.einsum("bd,nld->bnl", sources, targets) / np.sqrt(d)
    scores = clip * np.tanh(raw / clip)
    terms, correct = [], []
    for i in range(n):
        negatives = np.concatenate([scores[i, j] for j in range(n) if j != i])
        for location in range(locations):
            positive = scores[i, i, location]
            terms.append(-np.log(np.exp(positive) / (np.exp(positive) + np.exp(negatives).sum())))
            correct.append(positive > negatives.max())
    return np.mean(terms), np.mean(raw ** 2), np.mean(correct)


@pytest.mark.parametrize("scale,clip", [(0.3, 20.0), (6.0, 20.0), (2.0, 1.5)])
def test_global_local_nce_matches_numpy_with_soft_clipping(scale, clip):
    rng = np.random.RandomState(0)
    sources = (scale * rng.randn(5, 8)).astype(np.float32)
    targets = (scale * rng.randn(5, 6, 8)).astype(np.float32)
    loss, mean_squared, accuracy = global_local_nce(sources, targets, clip)
    expected = _numpy_nce(sources, targets, clip)
    assert float(loss) == pytest.approx(expected[0], rel=1e-4)
    assert float(mean_squared) == pytest.approx(expected[1], rel=1e-4)
    assert float(accuracy) == pytest.approx(expected[2])
    if scale == 6.0:  # raw scores reach past c here: the clipping changes the loss
        assert np.mean(expected[1]) > clip ** 2 / 4
        assert abs(expected[0] - _numpy_nce(sources, targets, 1e6)[0]) > 1e-2


def test_pretext_loss_is_the_sum_of_the_three_pairs_both_ways_plus_the_penalty(monkeypatch):
    clip, penalty = 3.0, 0.05
    method = _amdim(score_clip=clip, score_penalty=penalty)
    batch = _batch(method)
    locations = np.array([[0, 3, 1, 2], [2, 2, 0, 1]], np.int32)  # block4 is 2x2 at 16 px
    monkeypatch.setattr(method, "source_locations", lambda rows, n: tf.constant(locations))
    loss, metrics = method.compute_pretext_loss(batch, training=False)

    views = tf.concat([batch["view_1"], batch["view_2"]], 0)
    features = method.backbone(views, training=False)

    def embedded(head, endpoint):
        out = head(features[endpoint], training=False).numpy()
        return out.reshape(8, -1, 16)

    f1 = method.global_head(features["pre_logits"], training=False).numpy()
    f5, f7 = embedded(method.head_5x5, "block4"), embedded(method.head_7x7, "block3")
    assert f5.shape[1] == 4 and f7.shape[1] == 16
    g_a, g_b, m5_a, m5_b, m7_a, m7_b = f1[:4], f1[4:], f5[:4], f5[4:], f7[:4], f7[4:]
    s5_a, s5_b = m5_a[np.arange(4), locations[0]], m5_b[np.arange(4), locations[1]]
    expected, squared = 0.0, 0.0
    for name, directions in {"1t5": [(g_a, m5_b), (g_b, m5_a)],
                             "1t7": [(g_a, m7_b), (g_b, m7_a)],
                             "5t5": [(s5_a, m5_b), (s5_b, m5_a)]}.items():
        terms = [_numpy_nce(s, t, clip) for s, t in directions]
        nce = 0.5 * (terms[0][0] + terms[1][0])
        assert float(metrics[f"nce_{name}"]) == pytest.approx(nce, rel=1e-4)
        expected += nce
        squared += 0.5 * (terms[0][1] + terms[1][1])
    assert float(loss) == pytest.approx(expected + penalty * squared, rel=1e-4)
    assert float(metrics["mean_squared_score"]) == pytest.approx(squared / 3, rel=1e-4)


def test_source_locations_cover_the_map_and_follow_the_step():
    method = _amdim()
    drawn = method.source_locations(64, 4).numpy()
    assert drawn.shape == (2, 64) and set(np.unique(drawn)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(method.source_locations(64, 4).numpy(), drawn)


@pytest.mark.parametrize("in_tf_data", [False, True])
def test_preprocess_draws_two_views_of_the_image(in_tf_data):
    image = np.random.RandomState(1).rand(SIZE, SIZE, 3).astype(np.float32)
    for augmentation in ("none", "simclr_cifar"):
        method = _amdim(augmentation=augmentation)
        if in_tf_data:
            inputs = next(iter(tf.data.Dataset.from_tensors(_example(image)).map(
                method.seeded_preprocess)))
        else:
            inputs = method.seeded_preprocess(_example(image))
        assert inputs["view_1"].shape == inputs["view_2"].shape == (SIZE, SIZE, 3)
        assert int(inputs["label"]) == 1
        difference = np.abs(inputs["view_1"].numpy() - inputs["view_2"].numpy()).max()
        if augmentation == "none":
            np.testing.assert_allclose(inputs["view_1"], image)
            assert difference == 0.0
        else:
            assert difference > 0.05


@pytest.mark.parametrize("kwargs,message", [
    ({"local_endpoint_5x5": "block5"}, r"local_endpoint_5x5: the backbone has no end-point "
                                       r"'block5'; choose one of after_root, block1"),
    ({"local_endpoint_7x7": "pre_logits"}, r"local_endpoint_7x7: end-point 'pre_logits' is "
                                           r"not a spatial feature map.*choose one of "
                                           r"after_root, block1, block2, block3, block4\."),
    ({"global_endpoint": "logits"}, "global_endpoint: the backbone has no end-point"),
    ({"embedding_dim": 0}, "embedding_dim must be positive"),
    ({"score_clip": 0.0}, "score_clip must be positive"),
    ({"score_penalty": -0.1}, "score_penalty must be non-negative"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _amdim(**kwargs)


def test_a_batch_of_one_is_refused_before_training():
    with pytest.raises(ValueError, match="at least 2 images per step.*batch_size = 1"):
        _amdim().check_training_setup(1, 32)
    _amdim().check_training_setup(2, 32)


def test_a_spatial_global_end_point_is_averaged_over_its_locations():
    method = _amdim(global_endpoint="block4", local_endpoint_5x5="block3",
                    local_endpoint_7x7="block2")
    f1, f5, f7, _ = method.embed(tf.zeros([2, SIZE, SIZE, 3]), training=False)
    assert f1.shape == (2, 16) and f5.shape[1] == 16 and f7.shape[1] == 64
    assert method.export_metadata()["amdim"]["global_endpoint"] == "block4"


def test_loss_falls_when_training_a_few_steps(data_dir):
    keras.utils.set_random_seed(0)
    losses = fit_losses(_amdim(augmentation="simclr_cifar"), data_dir, learning_rate=0.02)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("config", ["synthetic_shapes", "imagenet_resnet50"])
def test_gin_configs_build_the_method(config):
    method = build_configured_method(f"amdim/{config}.gin", [
        "resnet_v2.depth = 10", "resnet_v2.widening_factor = 1", "amdim.embedding_dim = 8"])
    assert (method.global_endpoint, method.local_endpoint_5x5,
            method.local_endpoint_7x7) == ("pre_logits", "block4", "block3")
    f1, f5, f7, _ = method.embed(tf.zeros([1, 32, 32, 3]), training=False)
    assert f1.shape == (1, 8) and f5.shape[-1] == f7.shape[-1] == 8
