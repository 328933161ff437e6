"""The settings of an evaluation: one frozen dataclass per protocol, every default declared once.

`keras_ssl_eval.protocols.evaluate.evaluate` takes them as keyword arguments
named as the protocols (``data=DataSettings(...)``, ``knn=KnnSettings(...)``,
...); the probes under them (`keras_ssl_eval.probes.knn.knn_accuracy`,
`keras_ssl_eval.protocols.knn.run_knn`, ...) take their defaults from the same
fields, and the report records them with `dataclasses.asdict` (see `record`).
The built-in protocols' settings live here, below the probes that share their
defaults; each protocol names its settings class
(`keras_ssl_eval.protocols.base.Protocol.settings`), and a new protocol may
declare its own in its own module.

Every field is declared with `setting`: its default, its flag's help and
bounds, and its *flat name*: the field's own name, or the one given where a
bare name would be ambiguous (`KnnSettings.k` is ``knn_k``,
`UtilitySettings.task` is ``utility_task``). The flat names are the flags of
the ``keras-ssl-eval`` binary (`keras_ssl_eval.cli.eval.define_setting_flags`)
and the keys of a sweep grid's ``evaluation:`` mapping;
`EvaluationSettings` has one section per registered protocol, and
`EvaluationSettings.from_flat` turns such a mapping into the settings objects
and refuses an unknown key.

Example:
    >>> settings = EvaluationSettings.from_flat({"knn_k": 20, "max_train_examples": 1000})
    >>> settings.knn
    KnnSettings(k=20, temperature=0.1)
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

__all__ = [
    "HEADS", "POOLINGS", "SOLVERS", "UTILITY_TASKS", "DataSettings", "EvaluationSettings",
    "GridSettings", "KnnSettings", "LinearSettings", "LowShotSettings", "UnknownSettingError",
    "UtilitySettings", "record", "setting",
]

HEADS = ("linear", "mlp")
SOLVERS = ("fast", "sgd")
POOLINGS = ("adaptive", "vissl")
UTILITY_TASKS = ("classification", "segmentation")


def setting(default, help_text: str, *, flat: str | None = None, lower=None, upper=None,
            choices=None, flag: str | None = None, unit: float | None = None):
    """A settings field with what its flag needs, in its metadata.

    Args:
        default: The default.
        help_text: The flag's help.
        flat: The flat name (flag, sweep key) when not the field's own name.
        lower, upper: Bounds the flag enforces.
        choices: The values a string flag accepts.
        flag, unit: A flag under another name whose value is the setting in
            `unit`s (``--cache_max_gb`` for ``cache_max_bytes``; 0 is None).
    """
    metadata = {"help": help_text, "flat": flat, "lower": lower, "upper": upper,
                "choices": choices, "flag": flag, "unit": unit}
    return dataclasses.field(default=default,
                             metadata={k: v for k, v in metadata.items() if v is not None})


def _tuple(settings, *names) -> None:
    """Stores the sequences `names` of a frozen dataclass as tuples (YAML and flags give lists)."""
    for name in names:
        value = getattr(settings, name)
        if value is not None and not isinstance(value, tuple):
            value = (value,) if isinstance(value, str) else tuple(value)
            object.__setattr__(settings, name, value)


def _one_of(value, choices, what: str) -> None:
    if value not in choices:
        raise ValueError(f"Unknown {what} {value!r}; use one of {choices}.")


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """What is read and how: the images, the end-points, the pooling, the cache.

    Attributes:
        data_dir: TFDS data directory.
        train_split, test_split: Splits to train and test on.
        layers: End-point names (None: all end-points of each model).
        batch_size: Images per forward pass.
        max_train_examples, max_test_examples: Seeded subsets (see `load_images`).
        seed: Seed of subsets, hold-outs, draws, heads and fine-tuning.
        pooling: ``"adaptive"`` (Kolesnikov) or ``"vissl"`` (Goyal fixed pools).
        cache_dir: Feature cache directory (None: ``~/.cache/keras_ssl_eval``;
            ``""`` disables the cache).
        cache_max_bytes: Size bound of the cache; least recently used entries
            are deleted past it (None: unbounded).
    """

    data_dir: str | None = setting(None, "TFDS data directory (TFDS default if unset).")
    train_split: str = setting("train", "Split the probe is trained on.")
    test_split: str = setting("test", "Split the probe is tested on.")
    layers: tuple[str, ...] | None = setting(
        None, "Comma-separated end-points, e.g. block2,block3,pre_logits (default: all "
        "end-points of each model).")
    batch_size: int = setting(64, "Images per forward pass.", lower=1)
    max_train_examples: int | None = setting(
        None, "Use this many training images (a seeded random subset; for TFDS the first "
        "ones after a seeded shuffle of the shards).", lower=1)
    max_test_examples: int | None = setting(
        None, "The same as --max_train_examples for the test split.", lower=1)
    seed: int = setting(0, "Seed of the subsets, the probe's hold-out split, the draws, the "
                        "heads and fine-tuning.")
    pooling: str = setting(
        "adaptive", "Pooling of feature maps: Kolesnikov adaptive max, or VISSL's fixed pools "
        "(ResNet-50 224 px; other maps fall back to adaptive).", choices=POOLINGS)
    cache_dir: str | None = setting(
        None, "Feature cache directory (default: ~/.cache/keras_ssl_eval); empty disables "
        "the cache.")
    cache_max_bytes: int | None = setting(
        10 * 2**30, "Size bound of the feature cache in GB (2^30 bytes): least recently used "
        "entries are deleted past it; 0 = unbounded.", lower=0, flag="cache_max_gb",
        unit=2**30)

    # Where features are cached does not change the results: not in the report.
    _NOT_RECORDED = ("cache_dir", "cache_max_bytes")

    def __post_init__(self):
        _tuple(self, "layers")
        _one_of(self.pooling, POOLINGS, "pooling")


@dataclasses.dataclass(frozen=True)
class LinearSettings:
    """The linear probe (`keras_ssl_eval.probes.linear.fit_linear_probe`).

    Attributes:
        l2_grid: L2 strengths the probe chooses from by hold-out accuracy.
        validation_fraction: Share of the training set held out to choose L2.
    """

    l2_grid: tuple[float, ...] = setting(
        (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
        "L2 strengths the probe chooses from by hold-out accuracy.")
    validation_fraction: float = setting(
        0.2, "Share of the training set the probe holds out to choose L2.", lower=0, upper=1)

    def __post_init__(self):
        _tuple(self, "l2_grid")


@dataclasses.dataclass(frozen=True)
class GridSettings:
    """Kolesnikov's heads (`keras_ssl_eval.protocols.grid.run_grid`).

    Attributes:
        heads: Any of `HEADS`.
        solver: For the linear head: ``"fast"`` (Newton-CG to the regularised
            optimum, on the linear probe's L2 grid) or ``"sgd"`` (the paper's
            schedule). The MLP always uses the SGD schedule.
        epochs: Epochs of the SGD schedule (lr x0.1 at 30/70 and 50/70 of them).
        sgd_batch_size: SGD batch size.
        mlp_hidden: MLP hidden width.
    """

    heads: tuple[str, ...] = setting(HEADS, f"grid: heads, any of {', '.join(HEADS)}.")
    solver: str = setting("fast", "grid: solver of the linear head (fast = Newton-CG to the "
                          "optimum, sgd = the paper's schedule).", choices=SOLVERS)
    epochs: int = setting(70, "grid: SGD epochs (lr x0.1 at 30/70 and 50/70).", lower=1)
    sgd_batch_size: int = setting(256, "grid: SGD batch size.", lower=1)
    mlp_hidden: int = setting(1000, "grid: MLP hidden width.", lower=1)

    def __post_init__(self):
        _tuple(self, "heads")
        unknown = [h for h in self.heads if h not in HEADS]
        if unknown or self.solver not in SOLVERS:
            raise ValueError(f"heads must be in {HEADS} and solver in {SOLVERS}, got "
                             f"{list(self.heads)}, {self.solver!r}.")


@dataclasses.dataclass(frozen=True)
class KnnSettings:
    """Weighted kNN (`keras_ssl_eval.probes.knn`), k = 200 and T = 0.1 as in the papers.

    Attributes:
        k: Neighbours (capped at the training set size).
        temperature: Votes are ``exp(cosine / temperature)``.
    """

    k: int = setting(200, "knn: neighbours.", flat="knn_k", lower=1)
    temperature: float = setting(0.1, "knn: vote temperature.", flat="knn_temperature")


@dataclasses.dataclass(frozen=True)
class LowShotSettings:
    """Goyal's low-shot protocol (`keras_ssl_eval.protocols.lowshot.low_shot`).

    Attributes:
        shots: Examples per class k; those above the smallest class count are skipped.
        draws: Seeded draws per k.
    """

    shots: tuple[int, ...] = setting((1, 2, 4, 8, 16, 32, 64, 96),
                                     "lowshot: examples per class.")
    draws: int = setting(5, "lowshot: seeded draws per k.", lower=1)

    def __post_init__(self):
        _tuple(self, "shots")


@dataclasses.dataclass(frozen=True)
class UtilitySettings:
    """Newell & Deng's utility of pretraining (`keras_ssl_eval.probes.finetune`).

    Attributes:
        scratch_model: The step-0 (random init) export of the same architecture.
        budgets: Label budgets n.
        finetune_steps, finetune_batch_size, finetune_learning_rate: Fine-tuning
            (SGD with momentum 0.9) per budget.
        finetune_layer_decay: Layer-wise learning-rate decay in (0, 1] (1: off;
            see `keras_ssl_eval.probes.finetune`).
        task: One of `UTILITY_TASKS`: ``"classification"`` (accuracy of a linear
            classifier on the pre-logits) or ``"segmentation"`` (mean IoU of a
            per-pixel linear classifier on `layer`; needs a dataset with
            segmentation masks, e.g. synthetic_shapes).
        layer: The segmentation head's end-point (None: the deepest one at least
            1/4 of the input size, see `default_dense_layer`).
    """

    scratch_model: str | None = setting(None, "utility: step-0 export trained from scratch.")
    budgets: tuple[int, ...] = setting((10, 100, 1000), "utility: label budgets n.")
    finetune_steps: int = setting(100, "utility: steps per budget.", lower=1)
    finetune_batch_size: int = setting(32, "utility: batch size.", lower=1)
    finetune_learning_rate: float = setting(0.01, "utility: SGD learning rate.")
    finetune_layer_decay: float = setting(
        1.0, "utility: layer-wise learning-rate decay d (BEiT): a backbone variable learns at "
        "d**k times the head's rate, k end-points below the head; 1 turns it off.",
        lower=0.0, upper=1.0)
    task: str = setting(
        "classification", "utility: the fine-tuning task: classification (accuracy, linear "
        "head on the pre-logits) or segmentation (mean IoU, per-pixel linear head on "
        "--utility_layer; needs segmentation masks, e.g. synthetic_shapes).",
        flat="utility_task", choices=UTILITY_TASKS)
    layer: str | None = setting(
        None, "utility: end-point under the segmentation head (default: the deepest at "
        "least 1/4 of the input size).", flat="utility_layer")

    def __post_init__(self):
        _tuple(self, "budgets")
        if not 0.0 < self.finetune_layer_decay <= 1.0:
            raise ValueError(f"finetune_layer_decay = {self.finetune_layer_decay} is outside "
                             f"(0, 1]; 1 turns layer-wise decay off.")
        if self.task not in UTILITY_TASKS:
            raise ValueError(f"Unknown utility task {self.task!r}; use one of {UTILITY_TASKS}.")


class UnknownSettingError(ValueError):
    """A flat settings mapping has a key no settings field has (see `EvaluationSettings.from_flat`)."""

    def __init__(self, key: str, accepted):
        close = difflib.get_close_matches(key, list(accepted), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(accepted)}."
        super().__init__(f"unknown evaluation setting {key!r}; {hint}")
        self.key = key


class EvaluationSettings:
    """All settings of an evaluation: `data`, and one section per registered protocol.

    Its sections are `evaluate`'s keyword arguments. Built from the protocol
    registry (`keras_ssl_eval.protocols.base`): a protocol's section is named
    as the protocol and holds its settings dataclass, so a registered protocol
    has its section, flat names and flags without a change here. Frozen,
    compared by value; `replace` gives a copy with sections replaced.

    Example:
        >>> settings = EvaluationSettings(knn=KnnSettings(k=20))
        >>> settings.knn.k
        20
        >>> report = evaluate(models, "cifar10", protocols=["knn"], **settings.sections())
    """

    def __init__(self, data: DataSettings | None = None, **protocols):
        """Takes `data` and any protocol's settings by the protocol's name (others: defaults).

        Raises:
            TypeError: A section that no protocol has, or settings of the
                wrong class.
        """
        classes = _section_classes()
        unknown = [name for name in protocols if name not in classes]
        if unknown:
            raise TypeError(f"Unknown settings section(s) {unknown}; the sections are "
                            f"{', '.join(classes)}.")
        given = {"data": data, **protocols}
        sections = {}
        for name, cls in classes.items():
            value = given.get(name)
            if value is None:
                value = cls()
            elif not isinstance(value, cls):
                raise TypeError(f"Settings section {name!r} must be a {cls.__name__}, got "
                                f"{type(value).__name__}.")
            sections[name] = value
        object.__setattr__(self, "_sections", sections)

    def __getattr__(self, name):
        sections = self.__dict__.get("_sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(f"EvaluationSettings has no section {name!r}")

    def __setattr__(self, name, value):
        raise dataclasses.FrozenInstanceError(f"cannot assign to {name!r}: the settings are "
                                              f"frozen; use replace()")

    def __eq__(self, other):
        return isinstance(other, EvaluationSettings) and self._sections == other._sections

    def __hash__(self):
        return hash(tuple(self._sections.items()))

    def __repr__(self):
        return ("EvaluationSettings("
                + ", ".join(f"{k}={v!r}" for k, v in self._sections.items()) + ")")

    def sections(self) -> dict[str, Any]:
        """``{section name: settings object}``: keyword arguments of `evaluate`."""
        return dict(self._sections)

    def replace(self, **sections) -> EvaluationSettings:
        """A copy with the given sections replaced (as `dataclasses.replace`)."""
        return EvaluationSettings(**{**self._sections, **sections})

    @classmethod
    def flat_names(cls) -> dict[str, tuple[str, str]]:
        """``{flat name: (section, field)}`` of every setting, in declaration order."""
        names = {}
        for section, settings_class in _section_classes().items():
            for f in dataclasses.fields(settings_class):
                names[f.metadata.get("flat", f.name)] = (section, f.name)
        return names

    @classmethod
    def from_flat(cls, mapping: dict) -> EvaluationSettings:
        """Builds the settings from ``{flat name: value}`` (flags, a grid's ``evaluation:``).

        Raises:
            UnknownSettingError: A key is no setting's flat name (the message
                names it and the closest valid one).
            ValueError: A value a settings class refuses.
        """
        names = cls.flat_names()
        classes = _section_classes()
        values = {section: {} for section in classes}
        for key, value in mapping.items():
            if key not in names:
                raise UnknownSettingError(key, names)
            section, name = names[key]
            values[section][name] = value
        return cls(**{section: classes[section](**values[section]) for section in classes})


def _section_classes() -> dict[str, type]:
    """``{section: settings dataclass}``: `DataSettings`, then each registered protocol's."""
    from keras_ssl_eval.protocols.base import registered  # pylint: disable=import-outside-toplevel

    return {"data": DataSettings,
            **{name: protocol.settings for name, protocol in registered().items()}}


def record(settings) -> dict:
    """The settings as the report records them: `dataclasses.asdict`, tuples as lists."""
    recorded = {name: list(value) if isinstance(value, tuple) else value
                for name, value in dataclasses.asdict(settings).items()}
    for name in getattr(settings, "_NOT_RECORDED", ()):
        recorded.pop(name)
    return recorded
