"""The evaluation protocols, end to end, as Python functions.

For each SavedModel: read the train and test splits (resized to the model's
input size), extract all requested end-points in one pass per split (or read
them from the feature cache), run every requested protocol on every layer, and
collect everything into a report (see `keras_ssl_eval.reporting.report`). The
``keras-ssl-eval`` binary is a thin wrapper.
"""

from __future__ import annotations

import logging

from keras_ssl_eval.protocols import per_layer as P
from keras_ssl_eval.extraction.cache import DEFAULT_CACHE_DIR, DEFAULT_MAX_BYTES, FeatureCache
from keras_ssl_eval.probes.finetune import (
    default_dense_layer, finetune_curve, load_arrays, segmentation_curve,
)
from keras_ssl_eval.extraction.features import split_features
from keras_ssl_eval.probes.linear import DEFAULT_L2_GRID
from keras_ssl_eval.protocols.lowshot import DEFAULT_SHOTS
from keras_ssl_eval.reporting.report import build_report, model_column_name
from keras_ssl_eval.reading.savedmodel import load_representation_model
from keras_ssl_eval.protocols.utility import utility_curve

__all__ = ["PROTOCOLS", "evaluate", "evaluate_linear"]

PROTOCOLS = ("linear", "grid", "knn", "lowshot", "utility")
UTILITY_TASKS = ("classification", "segmentation")
_FEATURE_PROTOCOLS = ("linear", "grid", "knn", "lowshot")
_log = logging.getLogger(__name__)


def evaluate(saved_models, dataset: str, *, protocols=("linear",), data_dir: str | None = None,
             train_split: str = "train", test_split: str = "test", layers=None,
             batch_size: int = 64, max_train_examples: int | None = None,
             max_test_examples: int | None = None, l2_grid=DEFAULT_L2_GRID, seed: int = 0,
             pooling: str = "adaptive", cache_dir: str | None = None,
             cache_max_bytes: int | None = DEFAULT_MAX_BYTES, progress: bool = False,
             heads=P.HEADS, solver: str = "fast", epochs: int = 70, sgd_batch_size: int = 256,
             mlp_hidden: int = 1000, knn_k: int = 200, knn_temperature: float = 0.1,
             shots=DEFAULT_SHOTS, draws: int = 5, scratch_model: str | None = None,
             budgets=(10, 100, 1000), finetune_steps: int = 100,
             finetune_batch_size: int = 32, finetune_learning_rate: float = 0.01,
             utility_task: str = "classification", utility_layer: str | None = None) -> dict:
    """Runs the requested protocols on every layer of every model; returns the report.

    Args:
        saved_models: SavedModel directories (a single path is accepted too).
        dataset: A `keras_ssl_eval.reading.data.load_images` name; it must have labels.
        protocols: Any of `PROTOCOLS`, or ``"all"`` (utility only with a scratch model).
        data_dir: TFDS data directory.
        train_split, test_split: Splits to train and test on.
        layers: End-point names (default: all end-points of each model).
        batch_size: Images per forward pass.
        max_train_examples, max_test_examples: Seeded subsets (see `load_images`).
        l2_grid: L2 strengths of the linear probe.
        seed: Seed of subsets, hold-outs, draws and heads.
        pooling: ``"adaptive"`` (Kolesnikov) or ``"vissl"`` (Goyal fixed pools).
        cache_dir: Feature cache directory (default ``~/.cache/keras_ssl_eval``;
            ``""`` disables the cache).
        cache_max_bytes: Size bound of the cache; least recently used entries
            are deleted past it (None: unbounded).
        progress: Show a progress bar while extracting.
        heads, solver, epochs, sgd_batch_size, mlp_hidden: ``grid`` settings (see
            `keras_ssl_eval.protocols.per_layer.run_grid`).
        knn_k, knn_temperature: ``knn`` settings.
        shots, draws: ``lowshot`` settings.
        scratch_model: The step-0 (random init) export for ``utility``.
        budgets: Label budgets n of ``utility``.
        finetune_steps, finetune_batch_size, finetune_learning_rate: Fine-tuning
            settings of ``utility``.
        utility_task: ``"classification"`` (accuracy of a linear classifier on the
            pre-logits) or ``"segmentation"`` (mean IoU of a per-pixel linear
            classifier on `utility_layer`; needs a dataset with segmentation
            masks, e.g. synthetic_shapes).
        utility_layer: The segmentation head's end-point (default: the deepest
            one at least 1/4 of the input size, see `default_dense_layer`).

    Returns:
        The report dict of `keras_ssl_eval.reporting.report.build_report`: per model,
        ``layers`` (linear), ``grid``, ``knn``, ``lowshot`` and ``utility``.

    Example:
        >>> report = evaluate(["/models/a"], "cifar10", protocols=["knn", "grid"])
        >>> report["models"][0]["knn"]["pre_logits"]["test_accuracy"]
        0.62
    """
    saved_models = [saved_models] if isinstance(saved_models, str) else list(saved_models)
    if not saved_models:
        raise ValueError("Pass at least one SavedModel directory.")
    protocols = _protocols(protocols, scratch_model)
    if utility_task not in UTILITY_TASKS:
        raise ValueError(f"Unknown utility task {utility_task!r}; use one of {UTILITY_TASKS}.")
    if layers is not None:
        layers = [layers] if isinstance(layers, str) else list(layers)
    cache = FeatureCache(DEFAULT_CACHE_DIR if cache_dir is None else (cache_dir or None),
                         max_bytes=cache_max_bytes)
    limits = {train_split: max_train_examples, test_split: max_test_examples}
    results, description, scratch_curve = [], None, None
    for path in saved_models:
        model = load_representation_model(path)
        name = model_column_name(path, model.metadata)
        entry = {"path": path, "metadata": model.metadata,
                 "input_size": list(model.input_size) if model.input_size else None}
        if any(p in _FEATURE_PROTOCOLS for p in protocols):
            model_layers = layers or list(model.endpoint_names)
            train, test = (split_features(
                model, dataset, split, model_layers, data_dir=data_dir, batch_size=batch_size,
                limit=limits[split], seed=seed, pooling=pooling, cache=cache,
                progress=progress) for split in (train_split, test_split))
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
                    entry["layers"][layer] = {**P.run_linear(*args, l2_grid=l2_grid, seed=seed),
                                              **sizes}
                    _log.info("%s, %s: linear probe test accuracy %.4f", name, layer,
                              entry["layers"][layer]["test_accuracy"])
                if "grid" in protocols:
                    entry["grid"][layer] = P.run_grid(
                        *args, heads=heads, solver=solver, epochs=epochs,
                        batch_size=sgd_batch_size, l2_grid=l2_grid, hidden=mlp_hidden, seed=seed)
                if "knn" in protocols:
                    entry["knn"][layer] = P.run_knn(*args, k=knn_k, temperature=knn_temperature)
                if "lowshot" in protocols:
                    entry["lowshot"][layer] = P.run_lowshot(*args, shots=shots, draws=draws,
                                                            seed=seed)
        if "utility" in protocols:
            if model.patch_spec is not None:
                raise ValueError(f"The utility protocol fine-tunes image models; {path!r} is "
                                 f"patch-based.")
            dense = utility_task == "segmentation"
            arrays = [load_arrays(dataset, split, model.input_size, data_dir=data_dir,
                                  limit=limits[split], seed=seed, segmentation=dense)
                      for split in (train_split, test_split)]
            usable = [int(n) for n in budgets if n <= len(arrays[0][1])]
            tune = dict(steps=finetune_steps, batch_size=finetune_batch_size,
                        learning_rate=finetune_learning_rate, seed=seed)
            if dense:
                (images, labels, maps), (test_images, _, test_maps) = arrays
                layer = utility_layer or default_dense_layer(
                    _endpoint_shapes(model, images[:1]), images.shape[1])
                tune.update(layer=layer, num_classes=int(max(maps.max(), test_maps.max())) + 1)

                def curve(model_path):
                    return segmentation_curve(model_path, images, labels, maps, test_images,
                                              test_maps, usable, **tune)
            else:
                def curve(model_path):
                    return finetune_curve(model_path, *arrays[0], *arrays[1], usable, **tune)
            if scratch_curve is None:
                scratch_curve = curve(scratch_model)
            finetuned = curve(path)
            entry["utility"] = {
                "scratch_model": scratch_model, "budgets": usable, "task": utility_task,
                "metric": "mean_iou" if dense else "accuracy",
                "skipped_budgets": [int(n) for n in budgets if n > len(arrays[0][1])],
                "finetuned_accuracy": finetuned, "scratch_accuracy": scratch_curve,
                "curve": utility_curve(usable, finetuned, usable, scratch_curve)}
            if dense:
                entry["utility"].update(layer=tune["layer"], num_classes=tune["num_classes"])
            description = description or {"name": dataset, "train": {"split": train_split},
                                           "test": {"split": test_split}}
        results.append(entry)
    settings = {"dataset": dataset, "data_dir": data_dir, "train_split": train_split,
                "test_split": test_split, "layers": layers, "batch_size": batch_size,
                "max_train_examples": max_train_examples,
                "max_test_examples": max_test_examples, "l2_grid": list(l2_grid),
                "validation_fraction": 0.2, "seed": seed, "max_feature_values": 9000,
                "pooling": "adaptive_max" if pooling == "adaptive" else pooling,
                "solver": "Newton-CG (preconditioned), standardised features", "protocols": protocols}
    if "grid" in protocols:
        settings["grid"] = {"heads": list(heads), "linear_solver": solver, "epochs": epochs,
                            "batch_size": sgd_batch_size, "mlp_hidden": mlp_hidden,
                            "sgd": "momentum 0.9, lr 0.1 per 256, x0.1 at 30/70 and 50/70"}
    if "knn" in protocols:
        settings["knn"] = {"k": knn_k, "temperature": knn_temperature}
    if "lowshot" in protocols:
        settings["lowshot"] = {"shots": list(shots), "draws": draws,
                               "svm": "one-vs-rest squared hinge, C by 3-fold CV, l2-normalised"}
    if "utility" in protocols:
        settings["utility"] = {"scratch_model": scratch_model, "budgets": list(budgets),
                               "task": utility_task, "layer": utility_layer,
                               "steps": finetune_steps, "batch_size": finetune_batch_size,
                               "learning_rate": finetune_learning_rate}
    report = build_report(results, settings=settings, dataset=description or {"name": dataset})
    report["protocol"] = "linear_probe" if protocols == ["linear"] else "+".join(protocols)
    return report


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
        **kwargs: Options of `evaluate` (``data_dir``, ``layers``,
            ``max_train_examples``, ``l2_grid``, ``seed``, ...).

    Returns:
        The report dict of `keras_ssl_eval.reporting.report.build_report`.

    Example:
        >>> report = evaluate_linear(["/models/rotation"], "cifar10", layers=["pre_logits"])
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
