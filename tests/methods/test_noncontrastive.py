"""BYOL, SimSiam, Barlow Twins, VICReg, DINO, SwAV and the method-author toolkit.

Each loss is checked against a numpy version of the paper's formula; the
toolkit (momentum copies, `after_update`, the output check, views,
schedules) is checked for what it promises. 2 replicas against one device,
XLA, "the loss falls" and the export of every method are covered by the
registry-wide tests (tests/core/test_scaleout.py, tests/methods/test_method_contract.py).
"""

import math
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_ssl import losses
from keras_ssl.method import PretextOutputError, check_pretext_outputs
from keras_ssl.schedules import cosine_momentum, linear_warmup
from keras_ssl.augment.view_specs import ViewSpec, check_views_fit, draw_view, multi_crop
from keras_ssl.testing import build_tiny_method, check_replicas, tiny_examples

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------ losses vs numpy
def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_negative_cosine_matches_numpy_and_stops_the_target_gradient():
    p, z = RNG.normal(size=(6, 5)), RNG.normal(size=(6, 5))
    expected = -np.mean(np.sum(_unit(p) * _unit(z), -1))
    p_t, z_t = tf.Variable(p, dtype=tf.float32), tf.Variable(z, dtype=tf.float32)
    with tf.GradientTape() as tape:
        loss = losses.negative_cosine_similarity(p_t, z_t)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)
    gradient_p, gradient_z = tape.gradient(loss, [p_t, z_t])
    assert gradient_z is None and np.abs(gradient_p.numpy()).sum() > 0


def _standardise(z, eps=1e-5):
    return (z - z.mean(0)) / np.sqrt(z.var(0) + eps)


def test_barlow_twins_loss_matches_numpy():
    z1, z2 = RNG.normal(size=(16, 6)), RNG.normal(size=(16, 6))
    c = _standardise(z1).T @ _standardise(z2) / 16
    off = c - np.diag(np.diag(c))
    expected = np.sum((1 - np.diag(c)) ** 2) + 0.01 * np.sum(off ** 2)
    loss, correlation = losses.barlow_twins_loss(z1, z2, redundancy_weight=0.01)
    np.testing.assert_allclose(correlation.numpy(), c, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-4)


def test_barlow_twins_loss_is_zero_for_identical_decorrelated_views():
    centred = RNG.normal(size=(32, 4))
    centred -= centred.mean(0)
    # Orthonormal columns spanning centred ones: zero mean, unit variance once scaled, uncorrelated.
    z = np.linalg.qr(centred)[0] * np.sqrt(32)
    loss, _ = losses.barlow_twins_loss(z, z, redundancy_weight=1.0)
    assert loss.numpy() < 1e-3


def test_vicreg_loss_matches_numpy():
    z1, z2 = RNG.normal(size=(10, 5)) * 0.5, RNG.normal(size=(10, 5))

    def variance(z):
        return np.mean(np.maximum(0, 1 - np.sqrt(z.var(0, ddof=1) + 1e-4)))

    def covariance(z):
        cov = np.cov(z.T)  # unbiased
        return (np.sum(cov ** 2) - np.sum(np.diag(cov) ** 2)) / z.shape[1]

    invariance = np.mean((z1 - z2) ** 2)
    expected = (25 * invariance + 25 * (variance(z1) + variance(z2))
                + 1 * (covariance(z1) + covariance(z2)))
    loss, terms = losses.vicreg_loss(z1, z2)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-4)
    np.testing.assert_allclose(terms["invariance"].numpy(), invariance, rtol=1e-5)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_dino_loss_matches_numpy_and_skips_same_view_pairs():
    student = [RNG.normal(size=(4, 7)) for _ in range(4)]
    teacher = [RNG.normal(size=(4, 7)) for _ in range(2)]
    center = RNG.normal(size=7) * 0.1
    total, pairs = 0.0, 0
    for t in range(2):
        target = _softmax((teacher[t] - center) / 0.04)
        for s in range(4):
            if s == t:
                continue
            log_p = np.log(_softmax(student[s] / 0.1))
            total += np.mean(-np.sum(target * log_p, -1))
            pairs += 1
    loss = losses.dino_loss(student, teacher, center, 0.1, 0.04)
    np.testing.assert_allclose(loss.numpy(), total / pairs, rtol=1e-4)


def _numpy_sinkhorn(scores, eps, iterations):
    q = np.exp(scores / eps).T
    k, b = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(1, keepdims=True)
        q /= k
        q /= q.sum(0, keepdims=True)
        q /= b
    return (q * b).T


def test_sinkhorn_matches_numpy_and_equipartitions():
    scores = _unit(RNG.normal(size=(12, 8))) @ _unit(RNG.normal(size=(4, 8))).T
    codes = losses.sinkhorn_knopp(scores, epsilon=0.05, iterations=3).numpy()
    np.testing.assert_allclose(codes, _numpy_sinkhorn(scores, 0.05, 3), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(codes.sum(1), 1.0, rtol=1e-5)
    many = losses.sinkhorn_knopp(scores, epsilon=0.05, iterations=50).numpy()
    np.testing.assert_allclose(many.sum(0), 12 / 4, rtol=2e-2)  # every prototype the same mass


def test_swapped_prediction_matches_numpy():
    scores = [RNG.normal(size=(5, 6)) for _ in range(3)]
    codes = {0: _softmax(RNG.normal(size=(5, 6))), 1: _softmax(RNG.normal(size=(5, 6)))}
    expected = 0.0
    for a, q in codes.items():
        others = [b for b in range(3) if b != a]
        expected += np.mean([np.mean(-np.sum(q * np.log(_softmax(scores[b] / 0.1)), -1))
                             for b in others])
    expected /= 2
    loss = losses.swapped_prediction_loss(scores, codes, 0.1)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-4)


# -------------------------------------------------------------------- schedules
def test_cosine_momentum_follows_byols_formula():
    for k, total in [(0, 100), (25, 100), (50, 100), (100, 100)]:
        expected = 1 - (1 - 0.996) * (math.cos(math.pi * k / total) + 1) / 2
        assert float(cosine_momentum(0.996, k / total)) == pytest.approx(expected, abs=1e-7)


def test_linear_warmup_ramps_then_holds():
    values = [float(linear_warmup(0.04, 0.07, step, 10)) for step in (0, 5, 10, 50)]
    assert values == pytest.approx([0.04, 0.055, 0.07, 0.07])


# ------------------------------------------------------------------------ views
def test_view_spec_draws_its_own_transforms():
    plain = dict(area_range=(1.0, 1.0), aspect_ratio_range=(1.0, 1.0), flip=False, jitter=None,
                 grayscale_probability=0.0)
    image = tf.fill([8, 8, 3], 0.8)
    solarized = draw_view(image, ViewSpec(solarize_probability=1.0, **plain))
    np.testing.assert_allclose(solarized.numpy(), 0.2, atol=1e-5)
    untouched = draw_view(image, ViewSpec(**plain))
    np.testing.assert_allclose(untouched.numpy(), 0.8, atol=1e-5)


def test_multi_crop_gives_global_then_local_sizes():
    from keras_ssl.random import seeded

    specs = multi_crop(num_local_views=3, local_size=8)
    with seeded(tf.constant([1, 2], tf.int64)):
        views = [draw_view(tf.random.stateless_uniform([16, 16, 3], [0, 0]), s) for s in specs]
    assert [v.shape[0] for v in views] == [16, 16, 8, 8, 8]
    assert specs[0].blur_probability == 1.0 and specs[1].solarize_probability == 0.2


@pytest.mark.parametrize("specs, size, message", [
    (multi_crop(local_size=96), 32, "view size 96 does not fit 32-px images"),
    ((ViewSpec(size=16), ViewSpec(size=24)), 32, "larger than the first (global) view"),
])
def test_views_that_do_not_fit_are_refused_with_the_setting(specs, size, message):
    with pytest.raises(ValueError, match=r"dino\.views") as error:
        check_views_fit(specs, size, "dino.views")
    assert message in str(error.value)


def test_view_specs_bind_per_view_in_gin():
    from keras_ssl import config, registry

    registry.METHODS.get("byol")
    config.parse_gin(bindings=[
        "byol.views = (@view_1/ViewSpec(), @view_2/ViewSpec())",
        "view_1/ViewSpec.blur_probability = 1.0",
        "view_2/ViewSpec.solarize_probability = 0.3",
    ])
    method = build_tiny_method("byol")
    assert method.views[0].blur_probability == 1.0
    assert method.views[1].solarize_probability == 0.3 and method.views[1].blur_probability == 0.0


# ----------------------------------------------------------------------- toolkit
def _built(name, **overrides):
    method = build_tiny_method(name, **overrides)
    batch = next(iter(method.make_dataset(tiny_examples(name, 4), 4)))
    method.build_from_batch(batch)
    return method, batch


def _compiled(method, learning_rate=0.05):
    import keras

    method.compile(optimizer=keras.optimizers.SGD(learning_rate))
    method.optimizer.build(method.trainable_variables)
    return method


def test_momentum_copies_are_out_of_the_optimizer_and_weight_decay():
    method, _ = _built("byol")
    trained = {id(v) for v in method.trainable_variables}
    copies = method.target_backbone.weights + method.target_projector.weights
    assert copies and not any(id(v) in trained for v in copies)
    assert all(any(v is w for w in method.non_trainable_weights) for v in copies)
    # The copy runs its batch norm in training mode: it stays `trainable`.
    assert method.target_backbone.trainable
    # Weight decay: one regularisation loss per decayed trained weight, none for the copy.
    decayed = [v for v in method.trainable_weights if v.regularizer is not None]
    assert decayed and len(method.losses) == len(decayed)


def test_byol_target_moves_by_the_scheduled_momentum_after_each_step():
    method, batch = _built("byol", base_momentum=0.9)
    method.train_steps = 10
    _compiled(method)
    online = method.backbone.trainable_weights[0]
    target = method.target_backbone.trainable_weights[0]
    before = target.numpy().copy()
    method.train_step(batch)
    tau = float(cosine_momentum(0.9, 1 / 10))  # the step counter has moved to 1
    np.testing.assert_allclose(
        target.numpy(), tau * before + (1 - tau) * online.numpy(), rtol=1e-5, atol=1e-6
    )
    assert not np.allclose(target.numpy(), before)


def test_after_update_does_not_run_at_build_time():
    method, _ = _built("byol")
    for online, target in zip(method.backbone.weights, method.target_backbone.weights):
        np.testing.assert_array_equal(online.numpy(), target.numpy())


def test_dino_centre_is_the_running_mean_of_the_teacher_outputs():
    method, batch = _built("dino", center_momentum=0.9)
    _compiled(method, learning_rate=0.0)  # weights stay: the teacher output is reproducible
    views = method.view_batches(batch)[:2]
    teacher = tf.concat([
        method.teacher_head(f, training=True)
        for f in method.encode_views(method.teacher_backbone, views, True)
    ], 0)
    method.train_step(batch)
    np.testing.assert_allclose(
        method.center.numpy(), 0.1 * teacher.numpy().mean(0), rtol=1e-3, atol=1e-6
    )


def test_swav_queue_fills_with_the_global_views_and_then_joins_the_codes():
    method, batch = _built("swav", queue_length=8)
    _compiled(method)
    assert int(method.queue_filled.numpy()) == 0
    method.train_step(batch)
    assert int(method.queue_filled.numpy()) == 4 and int(method.queue_pointer.numpy()) == 4
    queue = method.queue.numpy()  # [queue_length, global views, D]
    np.testing.assert_allclose(np.linalg.norm(queue[:4], axis=-1), 1.0, rtol=1e-5)
    assert np.all(queue[4:] == 0)
    method.train_step(batch)
    assert int(method.queue_filled.numpy()) == 8 and int(method.queue_pointer.numpy()) == 0


def test_swav_prototypes_get_no_gradient_while_frozen():
    method, batch = _built("swav", freeze_prototypes_steps=1)
    _compiled(method)
    before = method.prototypes.kernel.numpy().copy()
    method.train_step(batch)
    np.testing.assert_array_equal(method.prototypes.kernel.numpy(), before)
    method.train_step(batch)
    assert not np.array_equal(method.prototypes.kernel.numpy(), before)


@pytest.mark.parametrize("outputs, message", [
    (tf.zeros([4]), "must return (loss, metrics)"),
    ((tf.zeros([4]), {}), "a loss of shape (4,)"),
    ((tf.zeros([]), [1.0]), "metrics of type list"),
    ((tf.zeros([]), {"accuracy": tf.zeros([4])}), "metric 'accuracy' of shape (4,)"),
])
def test_a_malformed_pretext_loss_names_the_method_and_the_fix(outputs, message):
    method = build_tiny_method("byol")
    with pytest.raises(PretextOutputError) as error:
        check_pretext_outputs(method, outputs)
    assert "BYOL.compute_pretext_loss" in str(error.value)
    assert message in str(error.value)


@pytest.mark.parametrize("name", ["barlow_twins", "vicreg"])
def test_batch_statistics_methods_refuse_a_batch_of_one(name):
    method = build_tiny_method(name)
    with pytest.raises(ValueError, match=rf"{name}: .*at least 2 images per step"):
        method.check_training_setup(1, 16)
    method.check_training_setup(2, 16)


def test_swav_queue_on_two_replicas_equals_one_device():
    # Two steps of 8 images: the first fills the queue of 8, the second's codes use it.
    # (Sinkhorn-Knopp's sums once stopped a replica step from inside a tf.cond.)
    check_replicas("swav", sinkhorn_epsilon=0.5, temperature=0.5, queue_length=8)


def test_swav_queue_must_hold_whole_batches():
    method = build_tiny_method("swav", queue_length=10)
    with pytest.raises(ValueError, match=r"swav.queue_length \(10\) must be a multiple"):
        method.check_training_setup(4, 16)


def test_collapse_metric_is_zero_for_collapsed_and_large_for_spread_embeddings():
    from keras_ssl.metrics import normalized_embedding_std

    assert float(normalized_embedding_std(tf.ones([8, 4]))) == pytest.approx(0.0, abs=1e-6)
    spread = float(normalized_embedding_std(RNG.normal(size=(4096, 16)).astype(np.float32)))
    assert spread == pytest.approx(1 / math.sqrt(16), rel=0.05)


# ------------------------------------------------------------------- gin configs
NONCONTRASTIVE = ["byol", "simsiam", "barlow_twins", "vicreg", "dino", "swav"]
# Narrow heads so the paper configs build in a test (their own widths are for accelerators).
NARROW = {
    "resnet_v2.depth": 10, "resnet_v2.widening_factor": 1, "byol.hidden_dim": 16,
    "byol.projection_dim": 16, "simsiam.projection_dim": 16, "simsiam.predictor_hidden_dim": 8,
    "barlow_twins.projection_dim": 16, "vicreg.projection_dim": 16, "dino.num_outputs": 16,
    "dino.hidden_dim": 16, "dino.bottleneck_dim": 8, "swav.num_prototypes": 16,
    "swav.hidden_dim": 16, "swav.projection_dim": 8,
}


@pytest.mark.parametrize("path", [
    f"{name}/{config}.gin" for name in NONCONTRASTIVE
    for config in ("synthetic_shapes", "cifar_resnet18", "imagenet_resnet50")
])
def test_gin_configs_build_their_method_and_pass_its_setup_check(path):
    from tests.helpers.method_runs import build_configured_method

    method = build_configured_method(path, [f"{k} = {v}" for k, v in NARROW.items()])
    if path.startswith(("dino", "swav")):
        sizes = [spec.size for spec in method.views]
        assert sizes[:2] == [None, None] and len(set(sizes[2:])) == 1 and len(sizes) >= 6


# ---------------------------------------------------------------- the kNN monitor
def test_knn_monitor_accuracy_matches_a_brute_force_vote():
    from keras_ssl.monitor import knn_accuracy

    features = RNG.normal(size=(40, 6))
    labels = RNG.integers(0, 3, size=40)
    unit = _unit(features)
    correct = 0
    for i in range(40):
        similarity = unit @ unit[i]
        similarity[i] = -np.inf
        nearest = np.argsort(-similarity)[:5]
        votes = np.zeros(3)
        for j in nearest:
            votes[labels[j]] += np.exp(similarity[j] / 0.1)
        correct += votes.argmax() == labels[i]
    assert knn_accuracy(features, labels, k=5, temperature=0.1) == pytest.approx(correct / 40)


def test_knn_monitor_refuses_a_split_without_labels(tmp_path):
    from keras_ssl.monitor import KnnMonitor, MonitorConfigError, knn_monitor

    for i in range(3):
        tf.io.write_file(str(tmp_path / f"image_{i}.png"),
                         tf.io.encode_png(tf.zeros([8, 8, 3], tf.uint8)))
    with pytest.raises(MonitorConfigError, match="has no labels|unlabelled"):
        KnnMonitor(knn_monitor(every_steps=2, split="train"), f"folder:{tmp_path}", None, 8)


@pytest.mark.slow
def test_training_reports_the_knn_monitor_in_the_progress_line(data_dir, tmp_path, capsys):
    from tests.helpers.tiny_run import tiny_run_bindings, tiny_shapes_name
    from keras_ssl import config, training

    config.parse_gin(bindings=tiny_run_bindings(
        data_dir, tiny_shapes_name(), steps=4,
        **{"keras_ssl.build_method.method": "'byol'", "byol.hidden_dim": 16,
           "byol.projection_dim": 8, "keras_ssl.knn_monitor.every_steps": 2,
           "keras_ssl.knn_monitor.num_examples": 24, "keras_ssl.knn_monitor.k": 5},
    ))
    outputs = training.train(str(tmp_path / "run"), export=False)
    printed = capsys.readouterr().out
    assert "kNN monitor: every 2 steps on 24 " in printed
    assert "step 0/4 | knn_accuracy" in printed and "(random initialisation)" in printed
    assert printed.count("knn_accuracy") == 3  # at the start, after steps 2 and 4
    assert 0.0 <= outputs["knn_accuracy"] <= 1.0


@pytest.mark.parametrize("every_steps, message", [
    (3, "every_steps \\(3\\) must be a multiple"),
    # 0 once passed the multiple check and divided by zero after the first loop.
    (0, "every_steps = 0 is not a step count"),
])
def test_monitor_interval_must_fall_between_loops(data_dir, tmp_path, every_steps, message):
    from tests.helpers.tiny_run import tiny_run_bindings, tiny_shapes_name
    from keras_ssl import config, training

    config.parse_gin(bindings=tiny_run_bindings(
        data_dir, tiny_shapes_name(), **{"keras_ssl.knn_monitor.every_steps": every_steps}))
    with pytest.raises(training.TrainingConfigError, match=message):
        training.train(str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")


def test_show_views_draws_a_methods_multi_crop_at_relative_sizes():
    from keras_ssl.augment.contact_sheet import contact_sheet, draw_method_views

    method = build_tiny_method("dino")
    images = np.stack([e["image"].numpy() for e in tiny_examples("dino", 2)])
    rows = draw_method_views(images, method, seed=0)
    assert [v.shape[0] for v in rows[0]] == [16, 16, 8, 8]
    again = draw_method_views(images, method, seed=0)
    np.testing.assert_array_equal(rows[1][2], again[1][2])  # seeded like training
    sheet = contact_sheet(images, rows, cell=32)
    assert sheet.shape == (2 * 32 + 3 * 4, 5 * 32 + 7 * 4, 3)
    # A local view fills half a cell: the rest of its cell stays white.
    x = 4 + 3 * (32 + 4) + 4
    assert (sheet[4 + 16:4 + 32, x:x + 32] == 255).all() and not (sheet[4:4 + 16, x:x + 16] == 255).all()
