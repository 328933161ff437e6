"""The protocol registry: every evaluation protocol, looked up by name.

A protocol is an instance of a `Protocol` subclass, registered with
`register`. It declares everything about itself in one place: its name, its
settings dataclass (whose fields are its flags and sweep keys, see
`keras_ssl_eval.settings`), how it runs (on each layer's features, or on the
whole model), the table rows the sweep makes of its results, its markdown
table and its plots. `evaluate`, the report, the plots, the ``keras-ssl-eval``
flags and the sweep's results table all iterate over `registered()`.

Every protocol's results sit under its own name in a report's model entry
(``models[i][protocol.name]``); a per-layer protocol's are ``{layer: result}``.
Reports of schema version 1 kept the linear probe's under ``layers``: a
protocol's `legacy_keys` name such older keys, and `Protocol.results` reads
them.

The built-in protocols are the modules of this package (`linear`, `grid`,
`knn`, `lowshot`, `utility`), imported on the first look-up; each registers
itself when imported. A protocol of another package registers itself the same
way, before the evaluation (or the binary's flags) are built.

Example:
    >>> from keras_ssl_eval.protocols.base import get_protocol, registered
    >>> list(registered())
    ['linear', 'grid', 'knn', 'lowshot', 'utility']
    >>> get_protocol("knn").settings
    <class 'keras_ssl_eval.settings.KnnSettings'>
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any

__all__ = ["LayerInput", "ModelInput", "Protocol", "get_protocol", "protocol_names",
           "register", "registered", "result_row", "unregister"]

_REGISTRY: dict[str, Protocol] = {}
_BUILTINS_LOADED = False
# Modules of this package that hold no protocol.
_NOT_PROTOCOLS = ("base", "evaluate", "per_layer")


@dataclasses.dataclass(frozen=True)
class LayerInput:
    """One layer's features of one model, what a per-layer protocol runs on.

    Attributes:
        model: The model's display name (for progress lines).
        layer: The end-point's name.
        x, y: Training features ``[N, D]`` and labels ``[N]``.
        xt, yt: Test features and labels.
        endpoint_shape: The end-point's per-image shape before pooling (None
            when unknown).
    """

    model: str
    layer: str
    x: Any
    y: Any
    xt: Any
    yt: Any
    endpoint_shape: list | None = None


@dataclasses.dataclass(frozen=True)
class ModelInput:
    """One model, what a whole-model protocol (one that is not `per_layer`) runs on.

    Attributes:
        path: The SavedModel directory (the ``--model`` path for an adapted model).
        model: The loaded `RepresentationModel` (its ``source`` reopens it for
            fine-tuning).
        dataset: The dataset name of `evaluate`.
        shared: A dict that lives for the whole `evaluate` call, for what a
            protocol computes once for all models (the utility's scratch curve).
    """

    path: str
    model: Any
    dataset: str
    shared: dict


class Protocol:
    """Base class of an evaluation protocol; subclasses set the attributes and override the methods.

    Attributes:
        name: The protocol's name: the ``--protocol`` value, the report key of
            its results and its settings section (``evaluate(..., knn=...)``).
        settings: Its frozen settings dataclass. Each field has a flat name (the
            field's name, or its metadata ``flat``) that must be unique across
            all protocols and `DataSettings`: it is the binary's flag and the
            sweep grid's key.
        order: Position in reports, tables and ``all`` (smaller first).
        per_layer: True: `run_layer` runs on each layer's features and the
            results are ``{layer: result}``; False: `run_model` runs once per
            model.
        method: ``(key, description)`` of how it solves, recorded in the
            report's settings (None: nothing).
        shared_settings: Its settings are recorded at the top of the report's
            ``settings`` in every report, since other protocols use them (the
            linear probe's L2 grid serves the grid's fast solver); otherwise
            they are recorded under ``settings[name]`` when it ran.
        legacy_keys: Report keys older reports kept its results under.
    """

    name: str = ""
    settings: type = None
    order: int = 100
    per_layer: bool = True
    method: tuple[str, str] | None = None
    shared_settings: bool = False
    legacy_keys: tuple[str, ...] = ()

    # ---------------------------------------------------------------- running --

    def check(self, settings) -> None:
        """Raises ValueError when the protocol cannot run with `settings` (before any work)."""

    def in_all(self, settings) -> bool:
        """Whether ``--protocol=all`` includes it with `settings`."""
        del settings
        return True

    def run_layer(self, data: LayerInput, settings, evaluation) -> dict:
        """Runs on one layer's features (per-layer protocols).

        Args:
            data: The layer's features and labels.
            settings: This protocol's settings.
            evaluation: All settings (`keras_ssl_eval.settings.EvaluationSettings`):
                ``evaluation.data.seed`` and other protocols' settings.

        Returns:
            The layer's result dict (JSON-ready).
        """
        raise NotImplementedError(f"protocol {self.name!r} runs per layer but has no run_layer")

    def run_model(self, data: ModelInput, settings, evaluation) -> dict:
        """Runs on a whole model (protocols that are not `per_layer`); returns its result dict."""
        raise NotImplementedError(f"protocol {self.name!r} runs per model but has no run_model")

    # ---------------------------------------------------------------- results --

    def results(self, model: dict):
        """This protocol's results in a report's model entry (under `name` or a legacy key), or None."""
        for key in (self.name, *self.legacy_keys):
            if key in model:
                return model[key]
        return None

    def record(self, settings) -> dict:
        """Its settings as the report records them, with `method` when it has one."""
        from keras_ssl_eval.settings import record  # pylint: disable=import-outside-toplevel

        recorded = record(settings)
        if self.method:
            key, description = self.method
            recorded[key] = description
        return recorded

    def accuracy_entries(self, results):
        """Yields ``(entry, key)``: every result dict holding a test accuracy under `key`.

        `keras_ssl_eval.reporting.report.add_missing_intervals` fills in their
        intervals. The default suits ``{layer: {"test_accuracy": ...}}``.
        """
        for entry in (results or {}).values():
            yield entry, "test_accuracy"

    def rows(self, results) -> list[dict]:
        """The sweep table's rows of one model's results (see `result_row`)."""
        return [result_row(layer, self.name, entry["test_accuracy"], source=entry)
                for layer, entry in (results or {}).items()]

    def layer_series(self, results):
        """Yields ``(label, {layer: entry})``: lines of ``layers.png`` (entries with ``test_accuracy``)."""
        return iter(())

    def markdown(self, report: dict, models: list[dict]) -> str:
        """Its markdown table(s) for `models` (the report's models that have its results)."""
        raise NotImplementedError

    def plots(self, report: dict, output_dir: str) -> list[str]:
        """Writes its own PNG plots into `output_dir`; returns their paths (none by default)."""
        del report, output_dir
        return []


def result_row(layer, protocol: str, value, *, labels="", metric: str = "test_accuracy",
               bound: str = "", source: dict | None = None, ci=None) -> dict:
    """A row of the sweep's results table (`keras_ssl.sweep.table`) without its cell and model.

    Args:
        layer: The end-point.
        protocol: The table's protocol column (``grid_mlp`` for a head of a protocol).
        value: The number.
        labels: Low-shot k or utility n; empty otherwise.
        metric: ``test_accuracy`` or a protocol's own metric.
        bound: ``lower``/``upper`` for a value clipped at a bound.
        source: The result dict it came from (its ``test_count`` and ``ci95``).
        ci: ``[low, high]`` when not the source's ``ci95``.
    """
    source = source or {}
    ci = ci or source.get("ci95") or [None, None]
    return dict(layer=layer, protocol=protocol, labels=labels, metric=metric, value=value,
                test_count=source.get("test_count"), ci95_low=ci[0], ci95_high=ci[1],
                bound=bound)


def _flat_names_of(settings_class) -> list[str]:
    return [f.metadata.get("flat", f.name) for f in dataclasses.fields(settings_class)]


def register(protocol: Protocol) -> Protocol:
    """Adds `protocol` to the registry; returns it.

    Raises:
        ValueError: No name or settings dataclass, a name already registered
            (or ``all``, ``data``, a method of `EvaluationSettings`), or a settings field whose flat name another protocol (or
            `DataSettings`) has.
    """
    # pylint: disable-next=import-outside-toplevel
    from keras_ssl_eval.settings import DataSettings, EvaluationSettings

    _load_builtins()  # So that another package's protocol cannot take a built-in's name.
    if not protocol.name or not dataclasses.is_dataclass(protocol.settings):
        raise ValueError(f"A protocol needs a name and a settings dataclass; got "
                         f"{protocol.name!r}, {protocol.settings!r}.")
    # "all" is the --protocol value; the settings' own names would hide its section.
    if (protocol.name in _REGISTRY or protocol.name in ("all", "data")
            or hasattr(EvaluationSettings, protocol.name)):
        raise ValueError(f"Protocol name {protocol.name!r} is taken; choose another.")
    taken = {name: "DataSettings" for name in _flat_names_of(DataSettings)}
    for other in _REGISTRY.values():
        taken.update({name: other.name for name in _flat_names_of(other.settings)})
    clashes = [f"{name!r} (also in {taken[name]})" for name in _flat_names_of(protocol.settings)
               if name in taken]
    if clashes:
        raise ValueError(f"Protocol {protocol.name!r}: setting names {', '.join(clashes)} are "
                         f"taken; give the fields metadata {{'flat': '{protocol.name}_...'}}.")
    _REGISTRY[protocol.name] = protocol
    return protocol


def unregister(name: str) -> None:
    """Removes a registered protocol (for tests)."""
    _REGISTRY.pop(name)


def _load_builtins() -> None:
    global _BUILTINS_LOADED  # pylint: disable=global-statement
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    package = importlib.import_module("keras_ssl_eval.protocols")
    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_") and module.name not in _NOT_PROTOCOLS:
            importlib.import_module(f"keras_ssl_eval.protocols.{module.name}")


def registered() -> dict[str, Protocol]:
    """``{name: protocol}`` of every registered protocol, in `Protocol.order`."""
    _load_builtins()
    return dict(sorted(_REGISTRY.items(), key=lambda item: (item[1].order, item[0])))


def protocol_names() -> tuple[str, ...]:
    """The registered protocols' names, in order."""
    return tuple(registered())


def get_protocol(name: str) -> Protocol:
    """The protocol registered as `name`.

    Raises:
        ValueError: No such protocol (the message lists them).
    """
    protocols = registered()
    if name not in protocols:
        raise ValueError(f"Unknown protocol {name!r}; use one of {', '.join(protocols)}.")
    return protocols[name]
