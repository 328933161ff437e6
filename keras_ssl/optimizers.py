"""Optimizers and learning-rate schedules, built from gin-bound settings."""

from __future__ import annotations

import math
import re

import gin
import keras
from keras import ops

# Variables whose path matches this are batch-norm parameters or biases, a
# ViT's tokens and position embeddings (`keras_ssl.backbones.vit`, not decayed
# in DeiT, DINO and MAE; LayerNorm and LayerScale vectors go by rank), or an
# online linear probe: no optimizer decays them, and LARS leaves them out of
# trust-ratio adaptation. (With eta = 1e-3 the trust ratio moves a probe's
# weights by ~lr * 1e-3 of their norm per step: on a short run the probe
# stayed at chance.)
DEFAULT_DECAY_EXCLUDE = (r"(batch_norm|batchnorm|_bn/|/bn/|bias|beta|gamma|moving_|probe"
                         r"|position_embedding|class_token|registers|mask_token)")
DEFAULT_LARS_EXCLUDE = DEFAULT_DECAY_EXCLUDE  # the name LARS' docs used first


def decay_excluded(variable, exclude_pattern: str | None = DEFAULT_DECAY_EXCLUDE,
                   exclude_rank_at_most: int = 1) -> bool:
    """Whether weight decay (and LARS' adaptation) leaves `variable` alone.

    Args:
      variable: A Keras or TensorFlow variable (its `path`, else its `name`,
        which for the TensorFlow variable under a Keras one is the path).
      exclude_pattern: Regex searched in the path; None: rank only.
      exclude_rank_at_most: Variables of this rank or less are excluded
        (biases and batch-norm vectors are rank 1). -1 disables it.
    """
    if len(variable.shape) <= exclude_rank_at_most:
        return True
    path = getattr(variable, "path", None) or variable.name
    return bool(exclude_pattern and re.search(exclude_pattern, path))


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
        return decay_excluded(variable, self.exclude_pattern, self.exclude_rank_at_most)

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


class _WeightDecay:
    """Weight decay for a Keras optimizer, applied in `update_step`, excluded variables left alone.

    `weight_decay_mode`:
      - `coupled` (L2): `g <- g + weight_decay * w`, then the optimizer's own
        update of `g` -- PyTorch's `SGD(weight_decay=...)` and
        `Adam(weight_decay=...)`, the decay the SimSiam and DINO (ResNet)
        papers' values mean. With momentum it is averaged like the gradient.
      - `decoupled`: `w <- w - lr * weight_decay * w`, then the optimizer's
        update on the decayed weights -- AdamW (Loshchilov & Hutter), and what
        Keras 3's own `weight_decay` argument does for every optimizer.

    Keras' own `weight_decay` stays off (it cannot exclude by rank); the
    exclusion is LARS' (`decay_excluded`): biases, batch-norm parameters and
    online probes are never decayed.

    With `weight_decay_end`, the rate follows a cosine from
    `weight_decay_rate` at step 0 to `weight_decay_end` at `decay_steps`
    (DINO on ViTs: 0.04 -> 0.4), and stays there.
    """

    def __init__(self, *args, weight_decay_rate: float = 0.0, weight_decay_mode: str = "coupled",
                 exclude_pattern: str | None = DEFAULT_DECAY_EXCLUDE,
                 exclude_rank_at_most: int = 1, weight_decay_end: float | None = None,
                 decay_steps: int | None = None, **kwargs):
        if weight_decay_mode not in ("coupled", "decoupled"):
            raise ValueError(
                f"weight_decay_mode must be 'coupled' or 'decoupled', got {weight_decay_mode!r}.")
        if weight_decay_end is not None and not decay_steps:
            raise ValueError("weight_decay_end needs decay_steps > 0 (the steps of the cosine).")
        super().__init__(*args, **kwargs)
        self.weight_decay_rate = weight_decay_rate
        self.weight_decay_end = weight_decay_end
        self.decay_steps = decay_steps
        self.weight_decay_mode = weight_decay_mode
        self.exclude_pattern = exclude_pattern
        self.exclude_rank_at_most = exclude_rank_at_most

    def excluded(self, variable) -> bool:
        """Whether `variable` is left out of the decay."""
        return decay_excluded(variable, self.exclude_pattern, self.exclude_rank_at_most)

    def current_weight_decay(self):
        """The decay rate at this step (`weight_decay_rate`, or its cosine schedule)."""
        if self.weight_decay_end is None:
            return ops.convert_to_tensor(self.weight_decay_rate, "float32")
        progress = ops.minimum(ops.cast(self.iterations, "float32") / self.decay_steps, 1.0)
        cosine = 0.5 * (1.0 + ops.cos(math.pi * progress))
        return self.weight_decay_end + (self.weight_decay_rate - self.weight_decay_end) * cosine

    def update_step(self, gradient, variable, learning_rate):
        decays = self.weight_decay_rate or self.weight_decay_end
        if decays and not self.excluded(variable):
            rate = ops.cast(self.current_weight_decay(), variable.dtype)
            if self.weight_decay_mode == "coupled":
                gradient = ops.cast(gradient, variable.dtype) + rate * variable
            else:
                self.assign_sub(variable, ops.cast(learning_rate, variable.dtype) * rate * variable)
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config.update(
            weight_decay_rate=self.weight_decay_rate,
            weight_decay_end=self.weight_decay_end,
            decay_steps=self.decay_steps,
            weight_decay_mode=self.weight_decay_mode,
            exclude_pattern=self.exclude_pattern,
            exclude_rank_at_most=self.exclude_rank_at_most,
        )
        return config


# What SGD's momentum buffer holds (build_optimizer's `momentum_form`).
MOMENTUM_FORMS = ("keras", "pytorch")


class _MomentumForm(keras.optimizers.SGD):
    """Keras' SGD, or with `momentum_form='pytorch'` PyTorch's momentum buffer.

    Keras keeps the step: `v <- m v - lr g`, `w <- w + v` (Nesterov:
    `w <- w + m v - lr g`). PyTorch keeps the gradients: `b <- m b + g`,
    `w <- w - lr b` (Nesterov: `w <- w - lr (g + m b)`). At a constant
    learning rate the two are the same update; under a schedule Keras' buffer
    carries the earlier, larger rates into later steps.
    """

    def __init__(self, *args, momentum_form: str = "keras", **kwargs):
        if momentum_form not in MOMENTUM_FORMS:
            raise ValueError(f"momentum_form must be one of {MOMENTUM_FORMS}, got {momentum_form!r}.")
        super().__init__(*args, **kwargs)
        self.momentum_form = momentum_form

    def update_step(self, gradient, variable, learning_rate):
        if self.momentum_form == "keras" or self.momentum == 0:
            return super().update_step(gradient, variable, learning_rate)
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        momentum = ops.cast(self.momentum, variable.dtype)
        buffer = self.momentums[self._get_variable_index(variable)]
        # PyTorch's first step puts the gradient itself in the (empty) buffer:
        # with b = 0 that is m b + g.
        self.assign(buffer, ops.add(ops.multiply(buffer, momentum), gradient))
        step = ops.add(gradient, ops.multiply(buffer, momentum)) if self.nesterov else buffer
        self.assign_sub(variable, ops.multiply(step, learning_rate))

    def get_config(self):
        return {**super().get_config(), "momentum_form": self.momentum_form}


class SGD(_WeightDecay, _MomentumForm):
    """`keras.optimizers.SGD` with `_WeightDecay`'s decay (coupled by default) and `momentum_form`."""


class Adam(_WeightDecay, keras.optimizers.Adam):
    """`keras.optimizers.Adam` with `_WeightDecay`'s decay (coupled by default: L2)."""


class Lamb(_WeightDecay, keras.optimizers.Lamb):
    """`keras.optimizers.Lamb` with `_WeightDecay`'s decay (decoupled, before the trust ratio, as Keras does)."""


# build_optimizer's options and the optimizers they apply to; weight_decay applies to all.
OPTIMIZER_NAMES = ("sgd", "adam", "adamw", "lamb", "lars")
_OPTION_APPLIES_TO = {
    "weight_decay_end": ("sgd", "adam", "adamw", "lamb"),
    "momentum": ("sgd", "lars"),
    "nesterov": ("sgd", "lars"),
    "momentum_form": ("sgd",),
    "lars_eta": ("lars",),
    "beta_1": ("adam", "adamw", "lamb"),
    "beta_2": ("adam", "adamw", "lamb"),
}
# How each optimizer applies `weight_decay` (LARS: coupled, inside the trust ratio).
WEIGHT_DECAY_MODES = {
    "sgd": "coupled", "adam": "coupled", "adamw": "decoupled", "lamb": "decoupled", "lars": "coupled",
}


@gin.configurable(module="keras_ssl")
def build_optimizer(
    learning_rate,
    name: str = "sgd",
    momentum: float | None = None,
    nesterov: bool | None = None,
    momentum_form: str | None = None,
    weight_decay: float = 0.0,
    weight_decay_end: float | None = None,
    lars_eta: float | None = None,
    clip_global_norm: float | None = None,
    beta_1: float | None = None,
    beta_2: float | None = None,
    total_steps: int | None = None,
):
    """Builds the optimizer.

    Every option changes the update of the optimizers it applies to; setting
    it (to anything but None) for another optimizer is refused with one line,
    so no setting is silently ignored.

    Args:
      learning_rate: A float or schedule (see `learning_rate_schedule`).
      name: `sgd` (with momentum), `adam`, `adamw`, `lamb` or `lars`.
      momentum: SGD and LARS momentum (None: 0.9).
      nesterov: Nesterov momentum, SGD and LARS (None: off; needs momentum > 0).
      momentum_form: SGD's momentum buffer (None: `keras`): `keras` keeps the
        learning-rate-scaled step (`v <- m v - lr g`), `pytorch` the gradients
        (`b <- m b + g`, step `lr b`), as `torch.optim.SGD` does. The same
        update at a constant learning rate; under a decaying schedule Keras'
        later steps are slightly larger. Bind `pytorch` to reproduce a PyTorch
        recipe step for step.
      weight_decay: Every optimizer. Never applied to biases, batch-norm
        parameters or online probes (`decay_excluded`). `sgd`, `adam` and
        `lars` add `weight_decay * w` to the gradient (coupled L2, as
        PyTorch's `weight_decay` and the papers using SGD mean it; LARS then
        adapts the sum); `adamw` and `lamb` shrink the weights by
        `lr * weight_decay * w` before their update (decoupled, as AdamW's
        paper and Keras mean it; `adamw` with 0 is `adam`). Set the backbone's
        own `weight_decay` to 0 when using it, or the decay counts twice.
      weight_decay_end: With it, the decay follows a cosine from
        `weight_decay` at the first step to this at the last (DINO's ViTs:
        0.04 -> 0.4); sgd, adam, adamw and lamb.
      lars_eta: LARS trust coefficient (None: 1e-3).
      clip_global_norm: Every optimizer: scale the step's gradient down to
        this global norm when it is larger (DINO's ViTs: 3.0). The norm is
        that of the global batch's gradient, summed over replicas
        (`keras_ssl.cross_replica.clip_by_global_norm`, applied by
        `keras_ssl.Method.train_step`); Keras' `global_clipnorm` would clip
        each replica's share.
      beta_1, beta_2: The moment decay rates of adam, adamw and lamb (None:
        Keras' 0.9 and 0.999; MAE trains with beta_2 = 0.95).
      total_steps: The run's steps (the training binary passes them): where
        `weight_decay_end` arrives.

    Returns:
      A `keras.optimizers.Optimizer`.

    Raises:
      keras_ssl.config.ConfigError: An unknown name, a negative decay, an
        option set for an optimizer it does not apply to, or Nesterov without
        momentum.
    """
    from keras_ssl.config import ConfigError

    if name not in OPTIMIZER_NAMES:
        raise ConfigError(
            f"Unknown optimizer {name!r} (keras_ssl.build_optimizer.name); choose "
            f"{', '.join(OPTIMIZER_NAMES[:-1])} or {OPTIMIZER_NAMES[-1]}.")
    options = {"momentum": momentum, "nesterov": nesterov, "momentum_form": momentum_form,
               "lars_eta": lars_eta,
               "weight_decay_end": weight_decay_end, "beta_1": beta_1, "beta_2": beta_2}
    for option, value in options.items():
        if value is not None and name not in _OPTION_APPLIES_TO[option]:
            raise ConfigError(
                f"keras_ssl.build_optimizer.{option} = {value!r} does nothing for the optimizer "
                f"{name!r} (it applies to {' and '.join(_OPTION_APPLIES_TO[option])}); remove "
                f"the binding or choose an optimizer it applies to.")
    for option, value in (("weight_decay", weight_decay), ("weight_decay_end", weight_decay_end)):
        if value is not None and value < 0:
            raise ConfigError(f"keras_ssl.build_optimizer.{option} must be >= 0, got {value}.")
    if clip_global_norm is not None and not clip_global_norm > 0:
        raise ConfigError(
            f"keras_ssl.build_optimizer.clip_global_norm must be > 0 (or None: no clipping), "
            f"got {clip_global_norm}.")
    if weight_decay_end is not None and not total_steps:
        raise ConfigError(
            "keras_ssl.build_optimizer.weight_decay_end needs the run's total_steps (the "
            "training binary passes them); pass total_steps when building it yourself.")
    for option, value in (("beta_1", beta_1), ("beta_2", beta_2)):
        if value is not None and not 0 <= value < 1:
            raise ConfigError(f"keras_ssl.build_optimizer.{option} must be in [0, 1), got {value}.")
    betas = {key: value for key, value in (("beta_1", beta_1), ("beta_2", beta_2))
             if value is not None}
    momentum = 0.9 if momentum is None else momentum
    if nesterov and not momentum:
        raise ConfigError(
            f"keras_ssl.build_optimizer.nesterov = True needs momentum > 0 (got momentum = "
            f"{momentum}); set a momentum or drop nesterov.")
    nesterov = bool(nesterov)
    if momentum_form is not None and momentum_form not in MOMENTUM_FORMS:
        raise ConfigError(
            f"keras_ssl.build_optimizer.momentum_form must be one of {', '.join(MOMENTUM_FORMS)}, "
            f"got {momentum_form!r}.")
    decay = dict(weight_decay_rate=weight_decay, weight_decay_mode=WEIGHT_DECAY_MODES[name],
                 weight_decay_end=weight_decay_end,
                 decay_steps=total_steps if weight_decay_end is not None else None)
    if name == "sgd":
        optimizer = SGD(learning_rate, momentum=momentum, nesterov=nesterov,
                        momentum_form=momentum_form or "keras", **decay)
    elif name in ("adam", "adamw"):
        optimizer = Adam(learning_rate, name=name, **betas, **decay)
    elif name == "lamb":
        optimizer = Lamb(learning_rate, **betas, **decay)
    else:
        optimizer = LARS(
            learning_rate, momentum=momentum, weight_decay_rate=weight_decay,
            eta=1e-3 if lars_eta is None else lars_eta, nesterov=nesterov,
        )
    # Read by `keras_ssl.Method.train_step`, which clips before the optimizer sums replicas.
    optimizer.clip_global_norm = clip_global_norm
    return optimizer
