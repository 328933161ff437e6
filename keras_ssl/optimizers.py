"""Optimizers and learning-rate schedules, built from gin-bound settings."""

from __future__ import annotations

import math
import re

import gin
import keras
from keras import ops

# Variables whose path matches this are batch-norm parameters or biases, or
# an online linear probe: LARS excludes them from weight decay and
# trust-ratio adaptation. (With eta = 1e-3 the trust ratio moves a probe's
# weights by ~lr * 1e-3 of their norm per step: on a short run the probe
# stayed at chance.)
DEFAULT_LARS_EXCLUDE = r"(batch_norm|batchnorm|_bn/|/bn/|bias|beta|gamma|moving_|probe)"


class LARS(keras.optimizers.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017), as SimCLR uses it.

    For each variable w with gradient g, unless it is excluded:

        g <- g + weight_decay * w
        trust = eta * ||w|| / ||g||    (1 when either norm is 0)
        v <- momentum * v + lr * trust * g
        w <- w - v

    Excluded variables (batch-norm parameters and biases: rank <= 1, or a
    path matching `exclude_pattern`) get neither decay nor adaptation:
    `v <- momentum * v + lr * g`.

    Args:
      learning_rate: A float or a `LearningRateSchedule`.
      momentum: m.
      weight_decay_rate: The decay added to the gradient (not Keras'
        decoupled `weight_decay`, which is left off).
      eta: The trust coefficient.
      exclude_pattern: Regex searched in `variable.path`; matching
        variables are excluded. None excludes by rank only.
      exclude_rank_at_most: Variables of this rank or less are excluded
        (biases and batch-norm vectors are rank 1). -1 disables it.
      nesterov: Use Nesterov momentum on the adapted step.
      name: The optimizer's name.
      **kwargs: Passed to `keras.optimizers.Optimizer` (e.g. `clipnorm`).

    Example:

    >>> opt = LARS(0.1, momentum=0.9, weight_decay_rate=1e-6)
    >>> w = keras.Variable([[1.0, 2.0]])
    >>> opt.apply_gradients([(ops.convert_to_tensor([[0.1, 0.1]]), w)])
    """

    def __init__(
        self,
        learning_rate=0.1,
        momentum: float = 0.9,
        weight_decay_rate: float = 0.0,
        eta: float = 1e-3,
        exclude_pattern: str | None = DEFAULT_LARS_EXCLUDE,
        exclude_rank_at_most: int = 1,
        nesterov: bool = False,
        name: str = "lars",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum = momentum
        self.weight_decay_rate = weight_decay_rate
        self.eta = eta
        self.exclude_pattern = exclude_pattern
        self.exclude_rank_at_most = exclude_rank_at_most
        self.nesterov = nesterov

    def excluded(self, variable) -> bool:
        """Whether `variable` is left out of decay and adaptation."""
        if len(variable.shape) <= self.exclude_rank_at_most:
            return True
        path = getattr(variable, "path", None) or variable.name
        return bool(self.exclude_pattern and re.search(self.exclude_pattern, path))

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self.velocities = [
            self.add_variable_from_reference(v, name="velocity") for v in var_list
        ]

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        velocity = self.velocities[self._get_variable_index(variable)]
        if self.excluded(variable):
            step = lr * g
        else:
            if self.weight_decay_rate:
                g = g + self.weight_decay_rate * variable
            w_norm = ops.sqrt(ops.sum(ops.square(variable)))
            g_norm = ops.sqrt(ops.sum(ops.square(g)))
            both = ops.logical_and(ops.greater(w_norm, 0.0), ops.greater(g_norm, 0.0))
            trust = ops.where(
                both, self.eta * w_norm / ops.where(both, g_norm, 1.0), ops.ones_like(w_norm)
            )
            step = lr * trust * g
        m = ops.cast(self.momentum, variable.dtype)
        new_velocity = m * velocity + step
        self.assign(velocity, new_velocity)
        if self.nesterov:
            self.assign_sub(variable, m * new_velocity + step)
        else:
            self.assign_sub(variable, new_velocity)

    def get_config(self):
        config = super().get_config()
        config.update(
            momentum=self.momentum,
            weight_decay_rate=self.weight_decay_rate,
            eta=self.eta,
            exclude_pattern=self.exclude_pattern,
            exclude_rank_at_most=self.exclude_rank_at_most,
            nesterov=self.nesterov,
        )
        return config


@gin.configurable(module="keras_ssl")
def learning_rate_schedule(
    base_learning_rate: float = 0.1,
    global_batch_size: int = 256,
    total_steps: int = 1000,
    warmup_steps: int = 0,
    decay: str = "cosine",
    scaling: str = "linear",
):
    """A warm-up + decay schedule with the learning rate scaled by batch size.

    Args:
      base_learning_rate: The rate for a batch of 256 images.
      global_batch_size: Images per step over all replicas.
      total_steps: Length of the run (the end of the decay).
      warmup_steps: Steps of linear warm-up from 0.
      decay: `cosine` (to 0 at `total_steps`) or `constant`.
      scaling: `linear` (lr * batch / 256), `sqrt` (lr * sqrt(batch / 256))
        or `none`.

    Returns:
      A `keras.optimizers.schedules.LearningRateSchedule` or a float.
    """
    factors = {
        "linear": global_batch_size / 256,
        "sqrt": math.sqrt(global_batch_size / 256),
        "none": 1.0,
    }
    if scaling not in factors:
        raise ValueError(f"scaling must be one of {sorted(factors)}, got {scaling!r}.")
    peak = base_learning_rate * factors[scaling]
    if decay == "constant":
        if warmup_steps:
            return keras.optimizers.schedules.CosineDecay(
                0.0, 1, alpha=1.0, warmup_target=peak, warmup_steps=warmup_steps
            )
        return peak
    if decay != "cosine":
        raise ValueError(f"decay must be 'cosine' or 'constant', got {decay!r}.")
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else peak,
        decay_steps=max(1, total_steps - warmup_steps),
        warmup_target=peak if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


@gin.configurable(module="keras_ssl")
def build_optimizer(
    learning_rate,
    name: str = "sgd",
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    lars_eta: float = 1e-3,
):
    """Builds the optimizer.

    Args:
      learning_rate: A float or schedule (see `learning_rate_schedule`).
      name: `sgd` (with momentum), `adam`, `adamw`, `lamb` or `lars`.
      momentum: SGD and LARS momentum.
      nesterov: Nesterov momentum for SGD and LARS.
      weight_decay: LARS only: decay added to the gradient of every
        variable but batch-norm parameters and biases (set the backbone's own
        `weight_decay` to 0 when using it, or the decay counts twice).
      lars_eta: LARS trust coefficient.

    Returns:
      A `keras.optimizers.Optimizer`.
    """
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=momentum, nesterov=nesterov)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate)
    if name == "lamb":
        return keras.optimizers.Lamb(learning_rate)
    if name == "lars":
        return LARS(
            learning_rate, momentum=momentum, weight_decay_rate=weight_decay, eta=lars_eta,
            nesterov=nesterov,
        )
    raise ValueError(f"Unknown optimizer {name!r}; choose sgd, adam, adamw, lamb or lars.")
