"""build_optimizer: every option changes the update it documents (against numpy), or is refused."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl import config
from keras_ssl.config import ConfigError
from keras_ssl.optimizers import LARS, build_optimizer, decay_excluded
from tests.core.test_lars import numpy_lars
from keras_ssl.testing import tiny_backbone

LR = 0.1
BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-7  # Keras' Adam and Lamb defaults


def _adam_moments(state, g, t, beta_1, beta_2):
    state["m"] = state["m"] + (g - state["m"]) * (1 - beta_1)
    state["v"] = state["v"] + (g * g - state["v"]) * (1 - beta_2)
    return state["m"] / (1 - beta_1**t), state["v"] / (1 - beta_2**t)


def numpy_update(name, options, weights, grads_per_step, excluded):
    """What `build_optimizer(LR, name, **options)` should do, written out in numpy."""
    momentum = options.get("momentum", 0.9)
    nesterov = options.get("nesterov", False)
    decay = options.get("weight_decay", 0.0)
    beta_1, beta_2 = options.get("beta_1", BETA_1), options.get("beta_2", BETA_2)
    if name == "lars":
        return numpy_lars(weights, grads_per_step, LR, momentum, decay,
                          options.get("lars_eta", 1e-3), excluded, nesterov=nesterov)
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    state = {k: {"m": np.zeros_like(v), "v": np.zeros_like(v)} for k, v in w.items()}
    for t, grads in enumerate(grads_per_step, start=1):
        for k in w:
            g = grads[k].astype(np.float64)
            wd = 0.0 if excluded[k] else decay
            if name in ("sgd", "adam"):
                g = g + wd * w[k]  # coupled: L2 added to the gradient
            else:
                w[k] = w[k] - LR * wd * w[k]  # decoupled: the weights shrink first
            if name == "sgd":
                v = state[k]["m"] = momentum * state[k]["m"] - LR * g
                w[k] = w[k] + (momentum * v - LR * g if nesterov else v)
            elif name in ("adam", "adamw"):
                m_hat, v_hat = _adam_moments(state[k], g, t, beta_1, beta_2)
                # Keras folds the bias corrections into the rate: eps is not corrected.
                alpha = LR * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
                w[k] = w[k] - alpha * state[k]["m"] / (np.sqrt(state[k]["v"]) + EPSILON)
            else:  # lamb
                m_hat, v_hat = _adam_moments(state[k], g, t, beta_1, beta_2)
                update = m_hat / (np.sqrt(v_hat) + EPSILON)
                w_norm, u_norm = np.linalg.norm(w[k]), np.linalg.norm(update)
                ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
                w[k] = w[k] - ratio * LR * update
    return w


def _initial():
    rng = np.random.RandomState(0)
    weights = {"kernel": rng.randn(3, 4).astype(np.float32), "bias": rng.randn(4).astype(np.float32)}
    grads = [{k: rng.randn(*v.shape).astype(np.float32) for k, v in weights.items()} for _ in range(2)]
    return weights, grads


def _train(name, options):
    """Two steps of the built optimizer (in a tf.function, as training runs it)."""
    weights, grads = _initial()
    variables = {k: keras.Variable(v, name=k) for k, v in weights.items()}
    optimizer = build_optimizer(LR, name=name, **options)

    @tf.function
    def step(g_kernel, g_bias):
        optimizer.apply_gradients([(g_kernel, variables["kernel"]), (g_bias, variables["bias"])])

    for g in grads:
        step(tf.constant(g["kernel"]), tf.constant(g["bias"]))
    return optimizer, {k: v.numpy() for k, v in variables.items()}


# Each optimizer with each documented option set away from its default.
CASES = [
    ("sgd", {}), ("sgd", {"momentum": 0.5}), ("sgd", {"momentum": 0.0}),
    ("sgd", {"nesterov": True}), ("sgd", {"weight_decay": 0.1}),
    ("adam", {}), ("adam", {"weight_decay": 0.1}),
    ("adamw", {}), ("adamw", {"weight_decay": 0.1}), ("adamw", {"beta_2": 0.5}),
    ("adam", {"beta_1": 0.5}), ("lamb", {}), ("lamb", {"weight_decay": 0.1}),
    ("lamb", {"beta_2": 0.5}),
    ("lars", {}), ("lars", {"momentum": 0.5}), ("lars", {"nesterov": True}),
    ("lars", {"weight_decay": 0.1}), ("lars", {"lars_eta": 0.5}),
]


@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_each_option_changes_the_update_as_numpy_says(name, options):
    optimizer, trained = _train(name, options)
    excluded = {"kernel": False, "bias": True}
    assert {k: optimizer.excluded(keras.Variable(np.zeros(s), name=k))
            for k, s in (("kernel", (3, 4)), ("bias", (4,)))} == excluded
    weights, grads = _initial()
    expected = numpy_update(name, options, weights, grads, excluded)
    for k in trained:
        np.testing.assert_allclose(trained[k], expected[k], rtol=2e-5, atol=2e-6, err_msg=k)
    if options:  # the option changes the step (LARS' steps are small: compare the steps)
        _, default = _train(name, {})
        step, default_step = trained["kernel"] - weights["kernel"], default["kernel"] - weights["kernel"]
        assert np.abs(step - default_step).max() > 1e-2 * np.abs(default_step).max()
        if "weight_decay" in options:  # never decayed: biases (and batch norm, probes)
            np.testing.assert_array_equal(trained["bias"], default["bias"])


def test_adamw_decays_as_keras_adamw_does():
    """Decoupled decay here is Keras' own `weight_decay` (w -= lr * wd * w before the step)."""
    _, trained = _train("adamw", {"weight_decay": 0.1})
    weights, grads = _initial()
    kernel = keras.Variable(weights["kernel"])
    reference = keras.optimizers.AdamW(LR, weight_decay=0.1)
    for g in grads:
        reference.apply_gradients([(tf.constant(g["kernel"]), kernel)])
    np.testing.assert_allclose(trained["kernel"], kernel.numpy(), rtol=1e-6)


def test_sgd_decay_is_coupled_not_keras_decoupled():
    """With momentum, the coupled decay is averaged like the gradient: not Keras' SGD(weight_decay)."""
    _, trained = _train("sgd", {"weight_decay": 0.1})
    weights, grads = _initial()
    kernel = keras.Variable(weights["kernel"])
    decoupled = keras.optimizers.SGD(LR, momentum=0.9, weight_decay=0.1)
    for g in grads:
        decoupled.apply_gradients([(tf.constant(g["kernel"]), kernel)])
    assert not np.allclose(trained["kernel"], kernel.numpy(), rtol=1e-4)


def test_batch_norm_biases_and_probes_are_never_decayed():
    net = tiny_backbone()
    probe = keras.layers.Dense(3, name="online_probe")
    probe.build((None, 16))
    variables = net.trainable_variables + probe.trainable_variables
    for name in ("sgd", "adam", "adamw", "lamb"):
        optimizer = build_optimizer(LR, name=name, weight_decay=1e-4)
        assert [optimizer.excluded(v) for v in variables] == [LARS(LR).excluded(v) for v in variables]
    decayed = [v.path for v in variables if not decay_excluded(v)]
    assert decayed and all(path.endswith("kernel") and "probe" not in path for path in decayed)


def test_adamw_decays_only_the_kernels_of_a_vit():
    # DeiT, DINO and MAE leave norms, biases, position embeddings and the
    # class token (and DINOv2 its registers and mask token) undecayed.
    net = tiny_backbone("vit", num_registers=2, layer_scale=1e-5, mask_token=True)
    optimizer = build_optimizer(LR, name="adamw", weight_decay=0.04)
    decayed = {v.path for v in net.trainable_variables if not optimizer.excluded(v)}
    kernels = {v.path for v in net.trainable_variables if v.path.endswith("kernel")}
    assert decayed == kernels
    assert {"tokens/position_embedding", "tokens/class_token", "tokens/registers",
            "tokens/mask_token", "tokens/class_position_embedding"} <= {
        v.path for v in net.trainable_variables if optimizer.excluded(v)}


def test_weight_decay_follows_a_cosine_from_its_start_to_its_end():
    # With zero gradients AdamW's update is only the decay: w <- w (1 - lr wd_t),
    # wd_t = end + (start - end) (1 + cos(pi t / T)) / 2, held at `end` after T.
    steps, lr, start, end = 6, 0.5, 0.04, 0.4
    optimizer = build_optimizer(lr, name="adamw", weight_decay=start, weight_decay_end=end,
                                total_steps=steps)
    kernel, bias = keras.Variable(np.ones((2, 2), np.float32)), keras.Variable(np.ones(2, np.float32))
    expected = 1.0
    for t in range(steps + 2):
        optimizer.apply_gradients([(tf.zeros((2, 2)), kernel), (tf.zeros(2), bias)])
        expected *= 1 - lr * (end + (start - end) * (1 + np.cos(np.pi * min(t, steps) / steps)) / 2)
        np.testing.assert_allclose(kernel.numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(bias.numpy(), 1.0)
    assert float(optimizer.current_weight_decay()) == pytest.approx(end)


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="lars", weight_decay_end=0.4, total_steps=10), "weight_decay_end = 0.4 does nothing"),
    (dict(name="adamw", weight_decay_end=0.4), "needs the run's total_steps"),
    (dict(name="adamw", weight_decay_end=-1.0, total_steps=10), "weight_decay_end must be >= 0"),
])
def test_a_weight_decay_schedule_that_cannot_apply_is_refused(kwargs, message):
    from keras_ssl.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        build_optimizer(LR, **kwargs)


REFUSED = [
    (name, option, value)
    for name in ("adam", "adamw", "lamb")
    for option, value in (("momentum", 0.9), ("nesterov", False), ("lars_eta", 1e-3))
] + [("sgd", "lars_eta", 1e-3), ("sgd", "beta_2", 0.95), ("lars", "beta_1", 0.9),
      ("adam", "momentum_form", "pytorch"), ("lars", "momentum_form", "keras")]


# A rate that halves each step: where the two momentum buffers part.
HALVING = keras.optimizers.schedules.ExponentialDecay(LR, decay_steps=1, decay_rate=0.5)


def numpy_pytorch_sgd(weights, grads_per_step, rates, momentum, nesterov, decay):
    """`torch.optim.SGD`'s documented update: b <- m b + g (b = g at first), w <- w - lr b."""
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    b = {k: None for k in w}
    for lr, grads in zip(rates, grads_per_step):
        for k in w:
            g = grads[k].astype(np.float64) + (decay * w[k] if k == "kernel" else 0.0)
            b[k] = g if b[k] is None else momentum * b[k] + g
            w[k] = w[k] - lr * (g + momentum * b[k] if nesterov else b[k])
    return w


@pytest.mark.parametrize("options", [{}, {"nesterov": True}, {"weight_decay": 0.1},
                                     {"momentum": 0.5}])
def test_pytorch_momentum_form_is_torch_sgd_and_keras_form_is_not(options):
    weights, grads = _initial()

    def trained(form, rate):
        variables = {k: keras.Variable(v, name=k) for k, v in weights.items()}
        optimizer = build_optimizer(rate, momentum_form=form, **options)
        for g in grads:
            optimizer.apply_gradients([(tf.constant(g[k]), variables[k]) for k in variables])
        return {k: v.numpy() for k, v in variables.items()}

    expected = numpy_pytorch_sgd(weights, grads, [LR, LR / 2], options.get("momentum", 0.9),
                                 options.get("nesterov", False), options.get("weight_decay", 0.0))
    pytorch, keras_form = trained("pytorch", HALVING), trained("keras", HALVING)
    for k in weights:
        np.testing.assert_allclose(pytorch[k], expected[k], rtol=2e-5, atol=2e-6, err_msg=k)
    # Under a schedule Keras' buffer carries the first step's larger rate into the second.
    assert np.abs(keras_form["kernel"] - expected["kernel"]).max() > 1e-3
    # At a constant rate the two forms are one update.
    for k, value in trained("pytorch", LR).items():
        np.testing.assert_allclose(value, trained("keras", LR)[k], rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("name,option,value", REFUSED)
def test_an_option_the_optimizer_does_not_take_is_refused(name, option, value):
    with pytest.raises(ConfigError, match=rf"build_optimizer\.{option} = .* optimizer '{name}'"):
        build_optimizer(LR, name=name, **{option: value})


@pytest.mark.parametrize("options,match", [
    ({"name": "sgd", "nesterov": True, "momentum": 0.0}, "nesterov = True needs momentum"),
    ({"name": "adamw", "weight_decay": -1e-4}, "weight_decay must be >= 0"),
    ({"name": "rmsprop"}, "Unknown optimizer 'rmsprop'.*lars"),
    ({"name": "adamw", "beta_2": 1.0}, r"beta_2 must be in \[0, 1\), got 1.0"),
    ({"name": "sgd", "momentum_form": "torch"}, "momentum_form must be one of keras, pytorch"),
])
def test_settings_that_cannot_work_are_refused(options, match):
    with pytest.raises(ConfigError, match=match):
        build_optimizer(LR, **options)


def test_a_gin_bound_momentum_is_refused_for_adam_but_the_default_is_not():
    config.parse_gin(bindings=["keras_ssl.build_optimizer.name = 'adam'"])
    assert isinstance(build_optimizer(LR), keras.optimizers.Adam)
    config.parse_gin(bindings=["keras_ssl.build_optimizer.name = 'adam'",
                               "keras_ssl.build_optimizer.momentum = 0.9"])
    with pytest.raises(ConfigError, match="momentum = 0.9 does nothing for the optimizer 'adam'"):
        build_optimizer(LR)
    config.parse_gin()


def test_clip_by_global_norm_matches_the_formula():
    from keras_ssl.cross_replica import clip_by_global_norm

    rng = np.random.default_rng(0)
    grads = [rng.normal(size=(3, 4)).astype(np.float32), None, rng.normal(size=5).astype(np.float32)]
    norm = np.sqrt(sum((g ** 2).sum() for g in grads if g is not None))
    for bound in (norm / 3, norm * 2):
        clipped = clip_by_global_norm([None if g is None else tf.constant(g) for g in grads], bound)
        assert clipped[1] is None
        for got, g in zip((clipped[0], clipped[2]), (grads[0], grads[2])):
            np.testing.assert_allclose(got, g * min(1.0, bound / norm), rtol=1e-6)


def test_a_train_step_with_clipping_moves_the_weights_by_the_bound():
    from keras_ssl.testing import build_tiny_method, tiny_examples

    method = build_tiny_method("rotation")
    examples = tiny_examples("rotation", 4)
    batch = next(iter(method.make_dataset(examples, 4)))
    method.compute_pretext_loss(batch, training=False)
    method.compile(optimizer=build_optimizer(1.0, name="sgd", momentum=0.0, clip_global_norm=1e-3))
    before = [v.numpy() for v in method.trainable_variables]
    method.train_step(batch)
    step = np.sqrt(sum(((v.numpy() - b) ** 2).sum() for v, b in zip(method.trainable_variables, before)))
    assert step == pytest.approx(1e-3, rel=1e-3)


@pytest.mark.slow
def test_clipping_on_two_replicas_bounds_the_summed_gradient_as_on_one_device():
    import json
    import os
    import subprocess
    import sys

    from tests.helpers import HELPERS

    result = subprocess.run([sys.executable, os.path.join(HELPERS, "clip_replicas.py")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["norm"] > 1.0  # the gradient is clipped
    for single, mirrored in zip(report["single"], report["mirrored"]):
        np.testing.assert_allclose(mirrored, single, atol=1e-6)
    # Keras' own global_clipnorm clips each replica's share: a larger step.
    keras_norm = np.sqrt(sum((np.asarray(g) ** 2).sum() for g in report["keras_mirrored"]))
    assert keras_norm > 1.2


def test_a_clip_bound_that_is_not_positive_is_refused():
    from keras_ssl.config import ConfigError

    with pytest.raises(ConfigError, match="clip_global_norm must be > 0"):
        build_optimizer(LR, clip_global_norm=0.0)
