"""The linear evaluation protocol, end to end, as a Python function.

For each SavedModel: read the train and test splits once (resized to the
model's input size), extract all requested end-points in one pass per split,
fit one linear probe per end-point, and collect everything into a report (see
`keras_ssl_eval.report`). The ``keras-ssl-eval`` binary is a thin wrapper.
"""

from __future__ import annotations

import logging
import time

from keras_ssl_eval.data import FOLDER_PREFIX, load_images
from keras_ssl_eval.linear import DEFAULT_L2_GRID, fit_linear_probe
from keras_ssl_eval.report import build_report, model_column_name
from keras_ssl_eval.savedmodel import load_representation_model

__all__ = ["evaluate_linear"]

_log = logging.getLogger(__name__)


def evaluate_linear(saved_models, dataset: str, *, data_dir: str | None = None,
                    train_split: str = "train", test_split: str = "test", layers=None,
                    batch_size: int = 64, max_train_examples: int | None = None,
                    max_test_examples: int | None = None, l2_grid=DEFAULT_L2_GRID,
                    seed: int = 0) -> dict:
    """Runs the linear probe on every end-point of every model; returns the report.

    Args:
        saved_models: SavedModel directories (a single path is accepted too).
        dataset: A `keras_ssl_eval.data.load_images` name (TFDS name or
            ``folder:/path``); it must have labels.
        data_dir: TFDS data directory.
        train_split: Split the probe is trained on.
        test_split: Split it is evaluated on.
        layers: End-point names (default: all end-points of each model).
        batch_size: Images per forward pass.
        max_train_examples: Use at most this many training images: a seeded
            random subset for folders; for TFDS the first ones after a seeded
            shuffle of the shards (TFDS shuffles examples when preparing).
        max_test_examples: The same for the test split.
        l2_grid: L2 strengths the probe chooses from.
        seed: Seed of the subsets and of the probe's hold-out split.

    Returns:
        The report dict of `keras_ssl_eval.report.build_report`.

    Example:
        >>> report = evaluate_linear(["/models/rotation"], "cifar10", layers=["pre_logits"])
        >>> report["models"][0]["layers"]["pre_logits"]["test_accuracy"]
        0.61
    """
    if isinstance(saved_models, str):
        saved_models = [saved_models]
    if not saved_models:
        raise ValueError("Pass at least one SavedModel directory.")
    if layers is not None:
        layers = [layers] if isinstance(layers, str) else list(layers)
    limits = {train_split: max_train_examples, test_split: max_test_examples}
    results, description = [], None
    for path in saved_models:
        model = load_representation_model(path)
        model_layers = layers or list(model.endpoint_names)
        name = model_column_name(path, model.metadata)
        features, infos = {}, {}
        for split in (train_split, test_split):
            start = time.perf_counter()
            features[split], infos[split] = _extract_split(
                model, model_layers, dataset, split, data_dir, batch_size, limits[split], seed)
            _log.info("%s: extracted %d %s images in %.1fs.", name, len(features[split][1]),
                      split, time.perf_counter() - start)
        description = description or _describe(dataset, infos, features, train_split, test_split)
        (train_x, train_y), (test_x, test_y) = features[train_split], features[test_split]
        layer_results = {}
        for layer in model_layers:
            start = time.perf_counter()
            result = fit_linear_probe(train_x[layer], train_y, test_x[layer], test_y,
                                      l2_grid=l2_grid, seed=seed)
            layer_results[layer] = {
                **result.to_dict(), "feature_dim": int(train_x[layer].shape[1]),
                "endpoint_shape": model.last_endpoint_shapes.get(layer),
                "fit_seconds": round(time.perf_counter() - start, 3)}
            _log.info("%s %s: test accuracy %.4f (l2=%g).", name, layer,
                      result.test_accuracy, result.l2)
        results.append({"path": path, "metadata": model.metadata,
                        "input_size": list(model.input_size) if model.input_size else None,
                        "layers": layer_results})
    settings = {"dataset": dataset, "data_dir": data_dir, "train_split": train_split,
                "test_split": test_split, "layers": layers, "batch_size": batch_size,
                "max_train_examples": max_train_examples,
                "max_test_examples": max_test_examples, "l2_grid": list(l2_grid),
                "validation_fraction": 0.2, "seed": seed, "max_feature_values": 9000,
                "pooling": "adaptive_max", "solver": "L-BFGS (scipy), standardised features"}
    return build_report(results, settings=settings, dataset=description)


def _extract_split(model, layers, dataset, split, data_dir, batch_size, limit, seed):
    """Returns ``((features by layer, labels), DatasetInfo)`` for one split."""
    ds, info = load_images(dataset, split, data_dir=data_dir, image_size=model.input_size,
                           shuffle_files=limit is not None, seed=seed)
    if info.num_classes == 0 and dataset.startswith(FOLDER_PREFIX):
        raise ValueError(f"Dataset {dataset!r}, split {split!r} has no labels; the linear "
                         f"probe needs labelled data (for a folder: one sub-folder per class).")
    if limit is not None:
        ds = ds.take(limit)
    features, labels = model.extract(ds, layers, batch_size=batch_size, with_labels=True)
    if len(labels) == 0:
        raise ValueError(f"Dataset {dataset!r}, split {split!r} yielded no images.")
    if (labels < 0).all():
        raise ValueError(f"Dataset {dataset!r}, split {split!r} has no labels; the linear "
                         f"probe needs labelled data.")
    return (features, labels), info


def _describe(dataset, infos, features, train_split, test_split):
    train_info = infos[train_split]
    return {
        "name": dataset, "num_classes": train_info.num_classes,
        "class_names": list(train_info.class_names),
        "train": {"split": train_split, "num_examples": len(features[train_split][1]),
                  "num_skipped": train_info.num_skipped},
        "test": {"split": test_split, "num_examples": len(features[test_split][1]),
                 "num_skipped": infos[test_split].num_skipped},
    }
