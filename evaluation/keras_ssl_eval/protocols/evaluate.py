"""The evaluation protocols, end to end, as Python functions.

For each SavedModel: read the train and test splits (resized to the model's
input size), extract all requested end-points in one pass per split (or read
them from the feature cache), run every requested protocol on every layer, and
collect everything into a report (see `keras_ssl_eval.reporting.report`). The
``keras-ssl-eval`` binary is a thin wrapper.
"""

from __future__ import annotations

import logging

from keras_ssl_eval.extraction.cache import DEFAULT_CACHE_DIR, FeatureCache
from keras_ssl_eval.extraction.features import split_features
from keras_ssl_eval.extraction.pooling import MAX_FEATURE_VALUES
from keras_ssl_eval.probes.finetune import (
    default_dense_layer, finetune_curve, load_arrays, segmentation_curve,
)
from keras_ssl_eval.protocols import per_layer as P
from keras_ssl_eval.protocols.utility import utility_curve
from keras_ssl_eval.reading.savedmodel import load_representation_model
from keras_ssl_eval.reporting.report import build_report, model_column_name
from keras_ssl_eval.settings import (DataSettings, GridSettings, KnnSettings, LinearSettings,
                                     LowShotSettings, UtilitySettings, record)
from keras_ssl_eval.statistics import accuracy_interval

__all__ = ["PROTOCOLS", "evaluate", "evaluate_linear"]

PROTOCOLS = ("linear", "grid", "knn", "lowshot", "utility")
_FEATURE_PROTOCOLS = ("linear", "grid", "knn", "lowshot")
# How the protocols solve, for the report: `{protocol: (key, description)}`.
_METHODS = {
    "linear": ("solver", "Newton-CG (preconditioned), standardised features"),
    "grid": ("sgd", "momentum 0.9, lr 0.1 per 256, x0.1 at 30/70 and 50/70"),
    "lowshot": ("svm", "one-vs-rest squared hinge, C by 3-fold CV, l2-normalised"),
}
_log = logging.getLogger(__name__)


def evaluate(saved_models, dataset: str, *, protocols=("linear",),
             data: DataSettings | None = None, linear: LinearSettings | None = None,
             grid: GridSettings | None = None, knn: KnnSettings | None = None,
             lowshot: LowShotSettings | None = None, utility: UtilitySettings | None = None,
             progress: bool = False) -> dict:
    """Runs the requested protocols on every layer of every model; returns the report.

    Each protocol's settings are a frozen dataclass of `keras_ssl_eval.settings`
    (None: its defaults); `EvaluationSettings.sections()` gives all of them as
    keyword arguments, and `EvaluationSettings.from_flat` builds them from the
    binary's flag names.

    Args:
        saved_models: SavedModel directories (a single path is accepted too).
        dataset: A `keras_ssl_eval.reading.data.load_images` name; it must have labels.
        protocols: Any of `PROTOCOLS`, or ``"all"`` (utility only with a scratch model).
        data: The splits, layers, subsets, seed, pooling and feature cache.
        linear: The linear probe (its L2 grid also serves the grid's ``fast``
            solver).
        grid, knn, lowshot, utility: The settings of those protocols
            (``utility.scratch_model`` is the step-0 export ``utility`` needs).
        progress: Show a progress bar while extracting.

    Returns:
        The report dict of `keras_ssl_eval.reporting.report.build_report`: per model,
        ``layers`` (linear), ``grid``, ``knn``, ``lowshot`` and ``utility``;
        ``settings`` records the settings of the protocols that ran. Every test
        accuracy has its ``test_count`` and 95% Wilson interval ``ci95``
        (`keras_ssl_eval.statistics`).

    Example:
        >>> report = evaluate(["/models/a"], "cifar10", protocols=["knn", "grid"],
        ...                   knn=KnnSettings(k=20), data=DataSettings(layers=["pre_logits"]))
        >>> report["models"][0]["knn"]["pre_logits"]["test_accuracy"]
        0.62
    """
    data, linear, grid = data or DataSettings(), linear or LinearSettings(), grid or GridSettings()
    knn, lowshot = knn or KnnSettings(), lowshot or LowShotSettings()
    utility = utility or UtilitySettings()
    saved_models = [saved_models] if isinstance(saved_models, str) else list(saved_models)
    if not saved_models:
        raise ValueError("Pass at least one SavedModel directory.")
    protocols = _protocols(protocols, utility.scratch_model)
    cache = FeatureCache(DEFAULT_CACHE_DIR if data.cache_dir is None else (data.cache_dir or None),
                         max_bytes=data.cache_max_bytes)
    train_split, test_split = data.train_split, data.test_split
    limits = {train_split: data.max_train_examples, test_split: data.max_test_examples}
    results, description, scratch_curve = [], None, None
    for path in saved_models:
        model = load_representation_model(path)
        name = model_column_name(path, model.metadata)
        entry = {"path": path, "metadata": model.metadata,
                 "input_size": list(model.input_size) if model.input_size else None}
        if any(p in _FEATURE_PROTOCOLS for p in protocols):
            model_layers = list(data.layers or model.endpoint_names)
            train, test = (split_features(
                model, dataset, split, model_layers, data_dir=data.data_dir,
                batch_size=data.batch_size, limit=limits[split], seed=data.seed,
                pooling=data.pooling, cache=cache, progress=progress)
                for split in (train_split, test_split))
            description = description or _describe(dataset, train, test, train_split,
                                                   test_split)
            for protocol in _FEATURE_PROTOCOLS:
                if protocol in protocols:
                    entry["layers" if protocol == "linear" else protocol] = {}
            for layer in model_layers:
                args = (train.features[layer], train.labels, test.features[layer], test.labels)
                sizes = {"feature_dim": int(args[0].shape[1]),
                         "endpoint_shape": train.endpoint_shapes.get(layer)}
                if "linear" in protocols:
                    entry["layers"][layer] = {**P.run_linear(*args, linear, seed=data.seed),
                                              **sizes}
                    _log.info("%s, %s: linear probe test accuracy %.4f", name, layer,
                              entry["layers"][layer]["test_accuracy"])
                if "grid" in protocols:
                    entry["grid"][layer] = P.run_grid(*args, grid, linear=linear, seed=data.seed)
                if "knn" in protocols:
                    entry["knn"][layer] = P.run_knn(*args, knn)
                if "lowshot" in protocols:
                    entry["lowshot"][layer] = P.run_lowshot(*args, lowshot, seed=data.seed)
        if "utility" in protocols:
            if model.patch_spec is not None:
                raise ValueError(f"The utility protocol fine-tunes image models; {path!r} is "
                                 f"patch-based.")
            dense = utility.task == "segmentation"
            arrays = [load_arrays(dataset, split, model.input_size, data_dir=data.data_dir,
                                  limit=limits[split], seed=data.seed, segmentation=dense)
                      for split in (train_split, test_split)]
            usable = [int(n) for n in utility.budgets if n <= len(arrays[0][1])]
            tune = dict(steps=utility.finetune_steps, batch_size=utility.finetune_batch_size,
                        learning_rate=utility.finetune_learning_rate, seed=data.seed)
            if dense:
                (images, labels, maps), (test_images, _, test_maps) = arrays
                layer = utility.layer or default_dense_layer(
                    _endpoint_shapes(model, images[:1]), images.shape[1])
                tune.update(layer=layer, num_classes=int(max(maps.max(), test_maps.max())) + 1)

                def curve(model_path):
                    return segmentation_curve(model_path, images, labels, maps, test_images,
                                              test_maps, usable, **tune)
            else:
                def curve(model_path):
                    return finetune_curve(model_path, *arrays[0], *arrays[1], usable, **tune)
            if scratch_curve is None:
                scratch_curve = curve(utility.scratch_model)
            finetuned = curve(path)
            entry["utility"] = {
                "scratch_model": utility.scratch_model, "budgets": usable, "task": utility.task,
                "metric": "mean_iou" if dense else "accuracy",
                "skipped_budgets": [int(n) for n in utility.budgets if n > len(arrays[0][1])],
                "finetuned_accuracy": finetuned, "scratch_accuracy": scratch_curve,
                "curve": utility_curve(usable, finetuned, usable, scratch_curve)}
            if dense:
                entry["utility"].update(layer=tune["layer"], num_classes=tune["num_classes"])
            else:  # Pixels of one image are not independent: no binomial interval for IoU.
                test_count = len(arrays[1][1])
                entry["utility"].update(
                    test_count=test_count,
                    finetuned_ci95=[accuracy_interval(a, test_count)["ci95"] for a in finetuned],
                    scratch_ci95=[accuracy_interval(a, test_count)["ci95"]
                                  for a in scratch_curve])
            description = description or {"name": dataset, "train": {"split": train_split},
                                           "test": {"split": test_split}}
        results.append(entry)
    settings = _report_settings(dataset, protocols, data=data, linear=linear, grid=grid,
                                knn=knn, lowshot=lowshot, utility=utility)
    report = build_report(results, settings=settings, dataset=description or {"name": dataset})
    report["protocol"] = "linear_probe" if protocols == ["linear"] else "+".join(protocols)
    return report


def _report_settings(dataset, protocols, *, data, linear, **sections) -> dict:
    """The report's ``settings``: the data and linear settings at the top (as ever),
    each other protocol's under its name when it ran, with how it solves."""
    key, method = _METHODS["linear"]
    settings = {"dataset": dataset, **record(data), **record(linear),
                "max_feature_values": MAX_FEATURE_VALUES,
                "pooling": "adaptive_max" if data.pooling == "adaptive" else data.pooling,
                key: method, "protocols": protocols}
    for protocol, section in sections.items():
        if protocol in protocols:
            settings[protocol] = record(section)
            if protocol in _METHODS:
                key, method = _METHODS[protocol]
                settings[protocol][key] = method
    return settings


def _endpoint_shapes(model, images) -> dict:
    """Per-image end-point shapes in network order (signature outputs have none)."""
    outputs = model.endpoints(images)
    return {name: list(outputs[name].shape[1:]) for name in model.endpoint_names}


def _protocols(protocols, scratch_model):
    if isinstance(protocols, str):
        protocols = [protocols]
    if "all" in protocols:
        protocols = [p for p in PROTOCOLS if p != "utility" or scratch_model]
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"Unknown protocol(s) {unknown}; use {PROTOCOLS} or 'all'.")
    if "utility" in protocols and not scratch_model:
        raise ValueError("The utility protocol needs scratch_model (--scratch_model): the "
                         "step-0 export of the same architecture, trained from scratch.")
    return [p for p in PROTOCOLS if p in protocols]


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
        >>> report["models"][0]["layers"]["pre_logits"]["test_accuracy"]
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
