"""LARS against a numpy implementation of its update rule; LR scaling."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.optimizers import LARS, build_optimizer, learning_rate_schedule
from keras_ssl.testing import tiny_backbone


def numpy_lars(weights, grads_per_step, lr, momentum, wd, eta, excluded, nesterov=False):
    w = {k: v.copy() for k, v in weights.items()}
    vel = {k: np.zeros_like(v) for k, v in weights.items()}
    for grads in grads_per_step:
        for k in w:
            g = grads[k].copy()
            if excluded[k]:
                trust = 1.0
            else:
                g = g + wd * w[k]
                wn, gn = np.linalg.norm(w[k]), np.linalg.norm(g)
                trust = eta * wn / gn if wn > 0 and gn > 0 else 1.0
            vel[k] = momentum * vel[k] + lr * trust * g
            w[k] = w[k] - (momentum * vel[k] + lr * trust * g if nesterov else vel[k])
    return w


def test_lars_matches_numpy_over_steps():
    rng = np.random.RandomState(0)
    init = {
        "kernel": rng.randn(3, 4).astype(np.float32),
        "zero_kernel": np.zeros((2, 2), np.float32),  # ||w|| = 0: trust 1
        "bias": rng.randn(4).astype(np.float32),
        "bn/gamma": rng.randn(1, 4).astype(np.float32),  # excluded by name
    }
    variables = {k: keras.Variable(v, name=k.replace("/", "_")) for k, v in init.items()}
    variables["bn/gamma"] = keras.Variable(init["bn/gamma"], name="gamma")
    grads = [{k: rng.randn(*v.shape).astype(np.float32) for k, v in init.items()} for _ in range(4)]
    opt = LARS(0.5, momentum=0.9, weight_decay_rate=0.01, eta=0.001)
    for step in grads:
        opt.apply_gradients([(tf.constant(step[k]), variables[k]) for k in init])
    excluded = {"kernel": False, "zero_kernel": False, "bias": True, "bn/gamma": True}
    assert {k: opt.excluded(variables[k]) for k in init} == excluded
    expected = numpy_lars(init, grads, 0.5, 0.9, 0.01, 0.001, excluded)
    for k in init:
        np.testing.assert_allclose(variables[k].numpy(), expected[k], rtol=1e-5, atol=1e-6)
    assert not np.allclose(variables["kernel"].numpy(), init["kernel"])


def test_backbone_batch_norm_and_biases_are_excluded():
    net = tiny_backbone()
    head = keras.layers.Dense(3, name="head")
    head.build((None, 16))
    opt = LARS(0.1)
    probe = keras.layers.Dense(3, name="online_probe")
    probe.build((None, 16))
    assert opt.excluded(probe.kernel)  # a probe is trained by plain momentum SGD
    excluded = {v.path: opt.excluded(v) for v in net.trainable_variables + head.trainable_variables}
    assert all(excluded[p] for p in excluded if "_bn/" in p or p.endswith("bias"))
    assert not any(excluded[p] for p in excluded if p.endswith("kernel"))


def test_build_optimizer_lars():
    opt = build_optimizer(0.3, name="lars", momentum=0.8, weight_decay=1e-6)
    assert isinstance(opt, LARS)
    assert (opt.momentum, opt.weight_decay_rate) == (0.8, 1e-6)
    assert opt.eta == 1e-3 and not opt.nesterov  # the defaults of unset options
    with pytest.raises(ValueError, match="lars"):
        build_optimizer(0.1, name="nope")


@pytest.mark.parametrize("scaling,factor", [("linear", 4096 / 256), ("sqrt", math.sqrt(4096 / 256)), ("none", 1.0)])
def test_learning_rate_scaling(scaling, factor):
    schedule = learning_rate_schedule(
        base_learning_rate=0.3, global_batch_size=4096, total_steps=100, warmup_steps=10,
        decay="cosine", scaling=scaling,
    )
    peak = 0.3 * factor
    assert float(schedule(0)) == pytest.approx(0.0, abs=1e-7)
    assert float(schedule(5)) == pytest.approx(peak * 0.5, rel=1e-5)
    assert float(schedule(10)) == pytest.approx(peak, rel=1e-5)
    assert float(schedule(55)) == pytest.approx(peak * 0.5, rel=1e-4)  # half-way through the cosine
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-6)


def test_sqrt_scaling_without_warmup_is_constant_peak():
    lr = learning_rate_schedule(base_learning_rate=0.075, global_batch_size=1024, decay="constant", scaling="sqrt")
    assert lr == pytest.approx(0.075 * 2.0)
    with pytest.raises(ValueError, match="scaling"):
        learning_rate_schedule(scaling="cube")
