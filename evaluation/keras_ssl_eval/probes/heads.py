"""Heads trained with SGD on frozen features: linear and MLP (Kolesnikov et al.).

The paper's schedule: SGD with momentum 0.9, learning rate 0.1 per 256
images, ``epochs`` (70) epochs, learning rate x0.1 after 30/70 and 50/70 of
them. The MLP head is Dense(1000) + ReLU + dropout 0.5 + Dense(classes). Plain
TensorFlow (a `tf.Module` with `tf.Variable`s and a `tf.function` step), no
keras. Features are standardised with the training mean and std, as for the
Newton-CG probe (`keras_ssl_eval.probes.linear`), so the two solvers see the same problem.

The MLP's inputs are further divided by the square root of the top eigenvalue
of their covariance (``spectral_scaling``): standardised conv features are
strongly correlated, and at 8192 dimensions the paper's learning rate made the
MLP diverge. The linear head keeps the paper's exact inputs; its loss
oscillates early on such features but it cannot blow up (the softmax
cross-entropy's gradient is bounded), and the decayed learning rate settles it.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import tensorflow as tf

from keras_ssl_eval.probes._memory import check_memory
from keras_ssl_eval.settings import GridSettings

__all__ = ["HeadResult", "top_eigenvalue", "train_head"]


@dataclasses.dataclass(frozen=True)
class HeadResult:
    """Outcome of `train_head`.

    Attributes:
        head: ``"linear"`` or ``"mlp"``.
        train_accuracy, test_accuracy: Accuracies in [0, 1] (test None without one).
        epochs: Epochs trained.
        loss_history: Mean training loss of each epoch.
        final_loss: Full-batch regularised loss at the end (inference mode).
        grad_norm: Largest absolute entry of the full-batch gradient at the end
            (comparable to `LinearProbeResult.grad_norm`; 0 at the optimum).
        seconds: Training time.
        spectral_scale: The standardised features were divided by this (the
            square root of their covariance's top eigenvalue, at least 1).
    """

    head: str
    train_accuracy: float
    test_accuracy: float | None
    epochs: int
    loss_history: list
    final_loss: float
    grad_norm: float
    seconds: float
    spectral_scale: float = 1.0

    def to_dict(self) -> dict:
        """Returns JSON-ready values."""
        return dataclasses.asdict(self)


def top_eigenvalue(x, iterations: int = 100, seed: int = 0) -> float:
    """Largest eigenvalue of ``x^T x / N`` by power iteration (never forms the D x D matrix).

    Args:
        x: ``[N, D]`` float array.
        iterations: Power iterations; converges to well under 1% on feature
            matrices, whose top eigenvalue stands far above the rest.
        seed: Seed of the start vector.

    Returns:
        The eigenvalue, >= 0.
    """
    x = np.asarray(x, np.float32)
    v = np.random.default_rng(seed).normal(size=x.shape[1]).astype(np.float32)
    value = 0.0
    for _ in range(iterations):
        w = x.T @ (x @ v) / len(x)
        value = float(np.linalg.norm(w))
        if value == 0:
            return 0.0
        v = w / value
    return value


class _Head(tf.Module):
    def __init__(self, dim, classes, hidden, seed, mean_square_norm):
        super().__init__()
        rng = np.random.default_rng(seed)

        def uniform(fan_in, fan_out, variance):
            limit = math.sqrt(3.0 * variance)
            return tf.Variable(rng.uniform(-limit, limit, [fan_in, fan_out]).astype(np.float32))

        self.hidden = hidden
        if hidden:
            # He initialisation for the inputs' actual norm, which the spectral scaling in
            # `train_head` makes far smaller than the dimension: unit-variance pre-activations.
            self.w1 = uniform(dim, hidden, 2.0 / mean_square_norm)
            self.b1 = tf.Variable(tf.zeros([hidden]))
            self.w2 = uniform(hidden, classes, 2.0 / (hidden + classes))  # Glorot.
            self.b2 = tf.Variable(tf.zeros([classes]))
            self.kernels = [self.w1, self.w2]
        else:
            self.w2 = tf.Variable(tf.zeros([dim, classes]))
            self.b2 = tf.Variable(tf.zeros([classes]))
            self.kernels = [self.w2]
        self.dropout_rng = tf.random.Generator.from_seed(seed)

    def __call__(self, x, training=False):
        if self.hidden:
            x = tf.nn.relu(x @ self.w1 + self.b1)
            if training:
                seed = self.dropout_rng.make_seeds(1)[:, 0]
                x = tf.nn.experimental.stateless_dropout(x, 0.5, seed=seed)
        return x @ self.w2 + self.b2


def _schedule(epoch, epochs, base_lr):
    """lr x0.1 after 30/70 and again after 50/70 of the epochs."""
    factor = 1.0
    for boundary in (30 / 70, 50 / 70):
        if epoch >= round(boundary * epochs):
            factor *= 0.1
    return base_lr * factor


def train_head(train_features, train_labels, test_features=None, test_labels=None, *,
               head: str = "linear", epochs: int = GridSettings.epochs,
               batch_size: int = GridSettings.sgd_batch_size,
               lr_per_256: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0,
               hidden: int = GridSettings.mlp_hidden, seed: int = 0,
               spectral_scaling: bool | None = None) -> HeadResult:
    """Trains a linear or MLP head with the paper's SGD schedule.

    Args:
        train_features: ``[N, D]``.
        train_labels: ``[N]`` integer labels (>= 0).
        test_features: Optional ``[M, D]``.
        test_labels: ``[M]``; labels unseen in training count as errors.
        head: ``"linear"`` or ``"mlp"``.
        epochs: Epochs (70 in the paper; tests use few).
        batch_size: Images per step (at most N).
        lr_per_256: Learning rate for 256 images, scaled linearly with the batch.
        momentum: SGD momentum.
        weight_decay: L2 on the kernels (``wd / 2 * ||W||^2`` in the loss).
        hidden: Width of the MLP's hidden layer.
        seed: Seed of the initialisation, shuffling and dropout.
        spectral_scaling: Divide the standardised features by the square root
            of the top eigenvalue of ``x^T x / N`` (never by less than 1), which
            bounds the curvature the first layer sees by 1 at any width. None
            (default): on for the MLP, off for the linear head.

    Returns:
        A `HeadResult`.

    Raises:
        ValueError: Unknown head, mismatched shapes or unlabelled data.
        MemoryError: The standardised float32 copies of the features (and the
            full-batch copy for the final gradient) would not fit in memory.

    Example:
        >>> train_head(x, y, xt, yt, head="mlp", epochs=5).test_accuracy
        0.9
    """
    if head not in ("linear", "mlp"):
        raise ValueError(f"Unknown head {head!r}; use 'linear' or 'mlp'.")
    shape = np.shape(train_features)
    if len(shape) == 2:
        test_rows = 0 if test_features is None else np.shape(test_features)[0]
        check_memory(4 * shape[1] * (3 * shape[0] + test_rows),
                     f"The {head} head on {shape[0]} x {shape[1]} training features",
                     "Subsample the training set (--max_train_examples) or use a machine "
                     "with more memory.")
    x = np.asarray(train_features, np.float32)
    y = np.asarray(train_labels).astype(np.int64).reshape(-1)
    if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"Expected [N, D] features and [N] labels, got {x.shape}, {y.shape}.")
    classes = np.unique(y)
    if len(classes) < 2 or classes[0] < 0:
        raise ValueError("train_head needs labelled data (>= 0) with at least two classes.")
    targets = np.searchsorted(classes, y).astype(np.int32)
    start = time.perf_counter()
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std == 0] = 1
    # Standardised features of a conv layer are strongly correlated: the top eigenvalue of
    # x^T x / N reached 2600 on 8192-d block2 features, and the paper's learning rate then
    # diverges (loss 34 -> 2400 in two epochs, gradients NaN later). Dividing by its square
    # root makes the curvature along every direction at most 1 for any width, where
    # lr 0.1 per 256 with momentum 0.9 is stable; for independent features it is ~1 already.
    x = (x - mean) / std
    spectral_scale = 1.0
    if spectral_scaling if spectral_scaling is not None else head == "mlp":
        spectral_scale = math.sqrt(max(top_eigenvalue(x, seed=seed), 1.0))
        x /= spectral_scale
        std = std * spectral_scale  # The test features get the same scaling.
    mean_square_norm = max(float(np.mean(np.sum(x**2, axis=1))), 1e-12)
    model = _Head(x.shape[1], len(classes), hidden if head == "mlp" else 0, seed,
                  mean_square_norm)
    velocity = [tf.Variable(tf.zeros_like(v)) for v in model.trainable_variables]
    batch_size = min(batch_size, len(x))
    base_lr = lr_per_256 * batch_size / 256

    def objective(xb, yb, training):
        logits = model(xb, training=training)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(yb, logits))
        return loss + 0.5 * weight_decay * tf.add_n([tf.reduce_sum(k**2) for k in model.kernels])

    @tf.function(reduce_retracing=True)
    def step(xb, yb, lr):
        with tf.GradientTape() as tape:
            loss = objective(xb, yb, True)
        grads = tape.gradient(loss, model.trainable_variables)
        for var, vel, grad in zip(model.trainable_variables, velocity, grads):
            vel.assign(momentum * vel + grad)
            var.assign_sub(lr * vel)
        return loss

    rng = np.random.default_rng(seed)
    history = []
    for epoch in range(epochs):
        lr = tf.constant(_schedule(epoch, epochs, base_lr), tf.float32)
        order = rng.permutation(len(x))
        losses = []
        for i in range(0, len(x) - batch_size + 1, batch_size):  # Drop the remainder.
            idx = order[i:i + batch_size]
            losses.append(float(step(tf.constant(x[idx]), tf.constant(targets[idx]), lr)))
        history.append(float(np.mean(losses)))
    seconds = time.perf_counter() - start

    with tf.GradientTape() as tape:
        final = objective(tf.constant(x), tf.constant(targets), False)
    grad_norm = max(float(tf.reduce_max(tf.abs(g)))
                    for g in tape.gradient(final, model.trainable_variables))

    def predict(features):
        out = [np.argmax(model(tf.constant(features[i:i + 4096])).numpy(), axis=1)
               for i in range(0, len(features), 4096)]
        return classes[np.concatenate(out)]

    test_accuracy = None
    if test_features is not None:
        xt = (np.asarray(test_features, np.float32) - mean) / std
        test_accuracy = float(np.mean(predict(xt) == np.asarray(test_labels).reshape(-1)))
    return HeadResult(head=head, train_accuracy=float(np.mean(predict(x) == y)),
                      test_accuracy=test_accuracy, epochs=epochs, loss_history=history,
                      final_loss=float(final), grad_norm=grad_norm, seconds=round(seconds, 3),
                      spectral_scale=spectral_scale)
