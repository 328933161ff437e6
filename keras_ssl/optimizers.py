"""Optimizers and learning-rate schedules, built from gin-bound settings."""

from __future__ import annotations

import math

import gin
import keras


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
def build_optimizer(learning_rate, name: str = "sgd", momentum: float = 0.9, nesterov: bool = False):
    """Builds the optimizer.

    Args:
      learning_rate: A float or schedule (see `learning_rate_schedule`).
      name: `sgd` (with momentum), `adam`, `adamw` or `lamb`.
      momentum: SGD momentum.
      nesterov: Nesterov momentum for SGD.

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
    raise ValueError(f"Unknown optimizer {name!r}; choose sgd, adam, adamw or lamb.")
