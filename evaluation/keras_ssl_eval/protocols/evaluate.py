"""The evaluation protocols, end to end, as Python functions.

For each SavedModel: read the train and test splits (resized to the model's
input size), extract all requested end-points in one pass per split (or read
them from the feature cache), run every requested protocol on every layer, and
collect everything into a report (see `keras_ssl_eval.reporting.report`). The
protocols are those of the registry (`keras_ssl_eval.protocols.base`). The
``keras-ssl-eval`` binary is a thin wrapper.
"""

from __future__ import annotations

from keras_ssl_eval.extraction.cache import DEFAULT_CACHE_DIR, FeatureCache
from keras_ssl_eval.extraction.features import split_features
from keras_ssl_eval.extraction.pooling import MAX_FEATURE_VALUES
from keras_ssl_eval.protocols.base import LayerInput, ModelInput, protocol_names, registered
from keras_ssl_eval.reading.adapters import ModelSource, open_model
from keras_ssl_eval.reporting.report import build_report, model_column_name
from keras_ssl_eval.settings import DataSettings, EvaluationSettings, record

__all__ = ["PROTOCOLS", "evaluate", "evaluate_linear"]

# The built-in protocols; `keras_ssl_eval.protocols.base.protocol_names()` has
# those registered since too.
PROTOCOLS = protocol_names()


def evaluate(saved_models, dataset: str, *, protocols=("linear",),
             data: DataSettings | None = None, progress: bool = False, **settings) -> dict:
    """Runs the requested protocols on every layer of every model; returns the report.

    Each protocol's settings are a frozen dataclass, passed under the
    protocol's name (``knn=KnnSettings(k=20)``; one left out keeps its
    defaults); `EvaluationSettings.sections()` gives all of them as keyword
    arguments, and `EvaluationSettings.from_flat` builds them from the
    binary's flag names. The protocols are those of the registry
    (`keras_ssl_eval.protocols.base`).

    Args:
        saved_models: SavedModel directories following the contract (a single path
            is accepted too), and any `keras_ssl_eval.reading.adapters.ModelSource`
            (a ``.keras`` file, a keras-hub preset or another SavedModel, read
            through an adapter: ``--model``).
        dataset: A `keras_ssl_eval.reading.data.load_images` name; it must have labels.
        protocols: Any registered protocols (``linear``, ``grid``, ``knn``,
            ``lowshot``, ``utility``, ...), or ``"all"`` (utility only with a
            scratch model).
        data: The splits, layers, subsets, seed, pooling and feature cache.
        progress: Show a progress bar while extracting.
        **settings: Each protocol's settings by its name: ``linear`` (its L2
            grid also serves the grid's ``fast`` solver), ``grid``, ``knn``,
            ``lowshot``, ``utility`` (``utility.scratch_model`` is the step-0
            export ``utility`` needs).

    Returns:
        The report dict of `keras_ssl_eval.reporting.report.build_report`: per
        model, each protocol's results under its name (``linear``, ``grid``,
        ``knn``, ``lowshot``, ``utility``); ``settings`` records the settings
        of the protocols that ran. Every test accuracy has its ``test_count``
        and 95% Wilson interval ``ci95`` (`keras_ssl_eval.statistics`).

    Raises:
        TypeError: A settings keyword that is no protocol's.
        ValueError: An unknown protocol, or one that cannot run with its settings.

    Example:
        >>> report = evaluate(["/models/a"], "cifar10", protocols=["knn", "grid"],
        ...                   knn=KnnSettings(k=20), data=DataSettings(layers=["pre_logits"]))
        >>> report["models"][0]["knn"]["pre_logits"]["test_accuracy"]
        0.62
    """
    evaluation = EvaluationSettings(data=data, **settings)
    data = evaluation.data
    saved_models = ([saved_models] if isinstance(saved_models, (str, ModelSource))
                    else list(saved_models))
    if not saved_models:
        raise ValueError("Pass at least one SavedModel directory (or --model).")
    selected = _protocols(protocols, evaluation)
    on_layers = [p for p in selected if p.per_layer]
    cache = FeatureCache(DEFAULT_CACHE_DIR if data.cache_dir is None else (data.cache_dir or None),
                         max_bytes=data.cache_max_bytes)
    train_split, test_split = data.train_split, data.test_split
    limits = {train_split: data.max_train_examples, test_split: data.max_test_examples}
    results, description, shared = [], None, {}
    for source in saved_models:
        model = open_model(source)
        path = model.path
        name = model_column_name(path, model.metadata)
        entry = {"path": path, "metadata": model.metadata,
                 "input_size": list(model.input_size) if model.input_size else None}
        if on_layers:
            model_layers = list(data.layers or model.endpoint_names)
            train, test = (split_features(
                model, dataset, split, model_layers, data_dir=data.data_dir,
                batch_size=data.batch_size, limit=limits[split], seed=data.seed,
                pooling=data.pooling, cache=cache, progress=progress)
                for split in (train_split, test_split))
            description = description or _describe(dataset, train, test, train_split,
                                                   test_split)
            for protocol in on_layers:
                entry[protocol.name] = {}
            for layer in model_layers:
                layer_input = LayerInput(
                    model=name, layer=layer, x=train.features[layer], y=train.labels,
                    xt=test.features[layer], yt=test.labels,
                    endpoint_shape=train.endpoint_shapes.get(layer))
                for protocol in on_layers:
                    entry[protocol.name][layer] = protocol.run_layer(
                        layer_input, getattr(evaluation, protocol.name), evaluation)
        for protocol in selected:
            if not protocol.per_layer:
                entry[protocol.name] = protocol.run_model(
                    ModelInput(path=path, model=model, dataset=dataset, shared=shared),
                    getattr(evaluation, protocol.name), evaluation)
        results.append(entry)
    names = [p.name for p in selected]
    description = description or {"name": dataset, "train": {"split": train_split},
                                   "test": {"split": test_split}}
    report = build_report(results, settings=_report_settings(dataset, names, evaluation),
                          dataset=description)
    report["protocol"] = "linear_probe" if names == ["linear"] else "+".join(names)
    return report


def _report_settings(dataset, names, evaluation) -> dict:
    """The report's ``settings``: the data settings and the shared protocols' (the
    linear probe's) at the top, each other protocol's under its name when it ran,
    with how it solves."""
    data = evaluation.data
    settings = {"dataset": dataset, **record(data)}
    protocols = registered()
    for protocol in protocols.values():
        if protocol.shared_settings:
            settings.update(protocol.record(getattr(evaluation, protocol.name)))
    # The order of the keys as before the registry: the methods of the shared
    # protocols after the pooling.
    methods = {p.method[0]: settings.pop(p.method[0]) for p in protocols.values()
               if p.shared_settings and p.method}
    settings.update(max_feature_values=MAX_FEATURE_VALUES,
                    pooling="adaptive_max" if data.pooling == "adaptive" else data.pooling,
                    **methods, protocols=names)
    for name in names:
        if not protocols[name].shared_settings:
            settings[name] = protocols[name].record(getattr(evaluation, name))
    return settings


def _protocols(protocols, evaluation) -> list:
    """The registered protocols named (``all`` spelt out), in registry order."""
    if isinstance(protocols, str):
        protocols = [protocols]
    known = registered()
    if "all" in protocols:
        protocols = [name for name, p in known.items()
                     if p.in_all(getattr(evaluation, name))]
    unknown = [p for p in protocols if p not in known]
    if unknown:
        raise ValueError(f"Unknown protocol(s) {unknown}; use {tuple(known)} or 'all'.")
    selected = [p for name, p in known.items() if name in protocols]
    for protocol in selected:
        protocol.check(getattr(evaluation, protocol.name))
    return selected


def evaluate_linear(saved_models, dataset: str, **kwargs) -> dict:
    """Runs the linear probe on every end-point of every model; returns the report.

    Args:
        saved_models: SavedModel directories (a single path is accepted too).
        dataset: A `keras_ssl_eval.reading.data.load_images` name with labels.
        **kwargs: Keyword arguments of `evaluate` (``data``, ``linear``, ``progress``).

    Returns:
        The report dict of `keras_ssl_eval.reporting.report.build_report`.

    Example:
        >>> report = evaluate_linear(["/models/rotation"], "cifar10",
        ...                          data=DataSettings(layers=["pre_logits"]))
        >>> report["models"][0]["linear"]["pre_logits"]["test_accuracy"]
        0.61
    """
    return evaluate(saved_models, dataset, protocols=("linear",), **kwargs)


def _describe(dataset, train, test, train_split, test_split):
    return {
        "name": dataset, "num_classes": train.info.num_classes,
        "class_names": list(train.info.class_names),
        "train": {"split": train_split, "num_examples": len(train.labels),
                  "num_skipped": train.info.num_skipped},
        "test": {"split": test_split, "num_examples": len(test.labels),
                 "num_skipped": test.info.num_skipped},
    }
