"""The settings of an evaluation: one frozen dataclass per protocol, every default declared once.

`keras_ssl_eval.protocols.evaluate.evaluate` takes them as keyword arguments
(``data=DataSettings(...)``, ``knn=KnnSettings(...)``, ...); the functions under
it (`keras_ssl_eval.probes.knn.knn_accuracy`, `keras_ssl_eval.protocols.per_layer.run_knn`,
...) take their defaults from the same fields, and the report records them with
`dataclasses.asdict` (see `record`).

Every field also has a *flat name*: the field's own name, or the one given in its
metadata where a bare name would be ambiguous (`KnnSettings.k` is ``knn_k``,
`UtilitySettings.task` is ``utility_task``). The flat names are the flags of the
``keras-ssl-eval`` binary and the keys of a sweep grid's ``evaluation:`` mapping;
`EvaluationSettings.from_flat` turns such a mapping into the settings objects and
refuses an unknown key.

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
    "UtilitySettings", "record",
]

HEADS = ("linear", "mlp")
SOLVERS = ("fast", "sgd")
POOLINGS = ("adaptive", "vissl")
UTILITY_TASKS = ("classification", "segmentation")


def _flat(default, name: str):
    """A field whose flat name (flag, grid key) is `name` rather than the field's own."""
    return dataclasses.field(default=default, metadata={"flat": name})


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

    data_dir: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    layers: tuple[str, ...] | None = None
    batch_size: int = 64
    max_train_examples: int | None = None
    max_test_examples: int | None = None
    seed: int = 0
    pooling: str = "adaptive"
    cache_dir: str | None = None
    cache_max_bytes: int | None = 10 * 2**30

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

    l2_grid: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    validation_fraction: float = 0.2

    def __post_init__(self):
        _tuple(self, "l2_grid")


@dataclasses.dataclass(frozen=True)
class GridSettings:
    """Kolesnikov's heads (`keras_ssl_eval.protocols.per_layer.run_grid`).

    Attributes:
        heads: Any of `HEADS`.
        solver: For the linear head: ``"fast"`` (Newton-CG to the regularised
            optimum, on the linear probe's L2 grid) or ``"sgd"`` (the paper's
            schedule). The MLP always uses the SGD schedule.
        epochs: Epochs of the SGD schedule (lr x0.1 at 30/70 and 50/70 of them).
        sgd_batch_size: SGD batch size.
        mlp_hidden: MLP hidden width.
    """

    heads: tuple[str, ...] = HEADS
    solver: str = "fast"
    epochs: int = 70
    sgd_batch_size: int = 256
    mlp_hidden: int = 1000

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

    k: int = _flat(200, "knn_k")
    temperature: float = _flat(0.1, "knn_temperature")


@dataclasses.dataclass(frozen=True)
class LowShotSettings:
    """Goyal's low-shot protocol (`keras_ssl_eval.protocols.lowshot.low_shot`).

    Attributes:
        shots: Examples per class k; those above the smallest class count are skipped.
        draws: Seeded draws per k.
    """

    shots: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 96)
    draws: int = 5

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
        task: One of `UTILITY_TASKS`: ``"classification"`` (accuracy of a linear
            classifier on the pre-logits) or ``"segmentation"`` (mean IoU of a
            per-pixel linear classifier on `layer`; needs a dataset with
            segmentation masks, e.g. synthetic_shapes).
        layer: The segmentation head's end-point (None: the deepest one at least
            1/4 of the input size, see `default_dense_layer`).
    """

    scratch_model: str | None = None
    budgets: tuple[int, ...] = (10, 100, 1000)
    finetune_steps: int = 100
    finetune_batch_size: int = 32
    finetune_learning_rate: float = 0.01
    task: str = _flat("classification", "utility_task")
    layer: str | None = _flat(None, "utility_layer")

    def __post_init__(self):
        _tuple(self, "budgets")
        if self.task not in UTILITY_TASKS:
            raise ValueError(f"Unknown utility task {self.task!r}; use one of {UTILITY_TASKS}.")


class UnknownSettingError(ValueError):
    """A flat settings mapping has a key no settings field has (see `EvaluationSettings.from_flat`)."""

    def __init__(self, key: str, accepted):
        close = difflib.get_close_matches(key, list(accepted), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(accepted)}."
        super().__init__(f"unknown evaluation setting {key!r}; {hint}")
        self.key = key


@dataclasses.dataclass(frozen=True)
class EvaluationSettings:
    """All settings of an evaluation; its fields are `evaluate`'s keyword arguments.

    Example:
        >>> settings = EvaluationSettings(knn=KnnSettings(k=20))
        >>> report = evaluate(models, "cifar10", protocols=["knn"], **settings.sections())
    """

    data: DataSettings = DataSettings()
    linear: LinearSettings = LinearSettings()
    grid: GridSettings = GridSettings()
    knn: KnnSettings = KnnSettings()
    lowshot: LowShotSettings = LowShotSettings()
    utility: UtilitySettings = UtilitySettings()

    def sections(self) -> dict[str, Any]:
        """``{section name: settings object}``: keyword arguments of `evaluate`."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def flat_names(cls) -> dict[str, tuple[str, str]]:
        """``{flat name: (section, field)}`` of every setting, in declaration order."""
        names = {}
        for section in dataclasses.fields(cls):
            for f in dataclasses.fields(section.default):
                names[f.metadata.get("flat", f.name)] = (section.name, f.name)
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
        values = {section.name: {} for section in dataclasses.fields(cls)}
        for key, value in mapping.items():
            if key not in names:
                raise UnknownSettingError(key, names)
            section, name = names[key]
            values[section][name] = value
        return cls(**{section.name: type(section.default)(**values[section.name])
                      for section in dataclasses.fields(cls)})


def record(settings) -> dict:
    """The settings as the report records them: `dataclasses.asdict`, tuples as lists."""
    recorded = {name: list(value) if isinstance(value, tuple) else value
                for name, value in dataclasses.asdict(settings).items()}
    for name in getattr(settings, "_NOT_RECORDED", ()):
        recorded.pop(name)
    return recorded
