"""Evaluation reports: one JSON document and a markdown table.

JSON layout (``schema_version`` 1)::

    {
      "schema_version": 1,
      "protocol": "linear_probe",
      "created": "2025-01-01T12:00:00+00:00",
      "settings": {...},              # every option of the run
      "versions": {"keras_ssl_eval": ..., "tensorflow": ..., "tensorflow_datasets": ...,
                   "numpy": ..., "scipy": ..., "python": ...},
      "dataset": {"name": ..., "num_classes": ..., "class_names": [...],
                  "train": {"split": ..., "num_examples": ..., "num_skipped": ...},
                  "test": {...}},
      "models": [
        {"name": "rotation_revnet50", "path": "...", "metadata": {...},
         "input_size": [224, 224] or null,
         "layers": {"block3": {"test_accuracy": 0.41, "train_accuracy": ...,
                               "l2": ..., "validation_accuracy": {"1e-05": ...},
                               "iterations": ..., "converged": ..., "grad_norm": ...,
                               "num_classes": ..., "feature_dim": 8192,
                               "endpoint_shape": [28, 28, 512], "fit_seconds": ...},
                    ...},
         # Only for the protocols that ran (see docs/evaluation.md):
         "grid": {layer: {head: {"test_accuracy", "solver", "convergence", ...}}},
         "knn": {layer: {"test_accuracy", "k", "temperature"}},
         "lowshot": {layer: {"svm"|"linear": {k: {"mean", "std", ...}}, "skipped": [...]}},
         "utility": {"budgets", "finetuned_accuracy", "scratch_accuracy", "curve", ...}},
        ...
      ]
    }

``protocol`` is ``linear_probe`` for the linear probe alone, else the
protocols joined by ``+`` (e.g. ``grid+knn``).
"""

from __future__ import annotations

import datetime
import importlib
import importlib.metadata
import json
import os
import platform

__all__ = ["SCHEMA_VERSION", "build_report", "markdown_report", "markdown_table",
           "model_column_name", "package_versions", "write_report"]

SCHEMA_VERSION = 1


def package_versions() -> dict:
    """Returns the versions of the packages that determine the results.

    Example:
        >>> sorted(package_versions())[:2]
        ['keras_ssl_eval', 'numpy']
    """
    from keras_ssl_eval import __version__  # pylint: disable=import-outside-toplevel

    versions = {"keras_ssl_eval": __version__, "python": platform.python_version()}
    for key, dist in [("tensorflow", "tensorflow"), ("tensorflow_datasets", "tensorflow-datasets"),
                      ("numpy", "numpy"), ("scipy", "scipy")]:
        try:
            versions[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            # e.g. tensorflow-cpu or a source build: ask the module itself.
            try:
                versions[key] = getattr(importlib.import_module(key), "__version__", None)
            except ImportError:
                versions[key] = None
    return versions


def model_column_name(path: str, metadata: dict) -> str:
    """Returns a model's display name: metadata ``name``, else the directory name.

    Example:
        >>> model_column_name("/models/rotation/", {})
        'rotation'
    """
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return str(name) if name else os.path.basename(os.path.normpath(path))


def build_report(models: list[dict], *, settings: dict, dataset: dict) -> dict:
    """Assembles the JSON-ready report.

    Args:
        models: One dict per model: ``path``, ``metadata``, ``input_size`` and
            ``layers`` (``{layer: result dict}``, e.g. from
            `LinearProbeResult.to_dict` plus feature sizes). A ``name`` is added
            (see `model_column_name`), made unique by a ``#2``-style suffix.
        settings: The options of the run.
        dataset: Dataset description (name, classes, split sizes).

    Returns:
        The report dict (see the module docstring for its layout).

    Example:
        >>> report = build_report([], settings={}, dataset={"name": "cifar10"})
        >>> report["schema_version"]
        1
    """
    seen, named = {}, []
    for model in models:
        name = model_column_name(model["path"], model.get("metadata") or {})
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name} #{seen[name]}"
        named.append({"name": name, **{k: v for k, v in model.items() if k != "name"}})
    return {
        "schema_version": SCHEMA_VERSION,
        "protocol": "linear_probe",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": dict(settings),
        "versions": package_versions(),
        "dataset": dict(dataset),
        "models": named,
    }


def markdown_table(report: dict, metric: str = "test_accuracy") -> str:
    """Returns a markdown table: rows = layers, columns = models, cells = % accuracy.

    Layers appear in the order the models list them; a model without a layer
    shows ``-``.

    Args:
        report: A dict from `build_report`.
        metric: Which per-layer number to show.

    Returns:
        The table as a string (ends with a newline).

    Example:
        >>> print(markdown_table(report))
        | layer | rotation | exemplar |
        | --- | ---: | ---: |
        | pre_logits | 55.4 | 46.0 |
    """
    models = [m for m in report.get("models", []) if "layers" in m]
    layers = []
    for model in models:
        layers.extend(layer for layer in model["layers"] if layer not in layers)
    lines = ["| layer | " + " | ".join(_escape(m["name"]) for m in models) + " |",
             "| --- |" + " ---: |" * len(models)]
    for layer in layers:
        cells = []
        for model in models:
            value = model["layers"].get(layer, {}).get(metric)
            cells.append("-" if value is None else f"{100 * value:.1f}")
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    title = metric.replace("_", " ")
    dataset = report.get("dataset", {}).get("name", "")
    caption = f"Linear probe {title} (%) on {dataset}" if dataset else f"Linear probe {title} (%)"
    return caption + "\n\n" + "\n".join(lines) + "\n"


def _table(caption, header, rows, text_columns=1):
    lines = [caption, "", "| " + " | ".join(_escape(h) for h in header) + " |",
             "|" + " --- |" * text_columns + " ---: |" * (len(header) - text_columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _pct(value):
    return "-" if value is None else f"{100 * value:.1f}"


def _union(models, getter):
    keys = []
    for model in models:
        keys.extend(k for k in getter(model) if k not in keys)
    return keys


def _grid_table(report):
    models = [m for m in report["models"] if "grid" in m]
    rows = []
    for layer in _union(models, lambda m: m["grid"]):
        for head in _union(models, lambda m, l=layer: m["grid"].get(l, {})):
            cells = []
            for m in models:
                entry = m["grid"].get(layer, {}).get(head)
                cells.append("-" if entry is None else
                             f"{_pct(entry['test_accuracy'])} ({entry['solver']}, "
                             f"grad {entry['convergence']['grad_norm']:.1e})")
            rows.append([layer, head, *cells])
    return _table(f"Kolesnikov grid: test accuracy (%) per layer and head on "
                  f"{report['dataset'].get('name', '')}",
                  ["layer", "head", *[m["name"] for m in models]], rows, 2)


def _knn_table(report):
    models = [m for m in report["models"] if "knn" in m]
    rows = [[layer, *[_pct(m["knn"].get(layer, {}).get("test_accuracy")) for m in models]]
            for layer in _union(models, lambda m: m["knn"])]
    k = report["settings"].get("knn", {})
    return _table(f"kNN test accuracy (%) (k = min({k.get('k')}, training examples), "
                  f"T = {k.get('temperature')}) on "
                  f"{report['dataset'].get('name', '')}",
                  ["layer", *[m["name"] for m in models]], rows)


def _lowshot_table(report):
    models = [m for m in report["models"] if "lowshot" in m]
    rows = []
    for layer in _union(models, lambda m: m["lowshot"]):
        heads = _union(models, lambda m, l=layer: [h for h in m["lowshot"].get(l, {})
                                                    if h != "skipped"])
        for head in heads:
            for k in _union(models, lambda m, l=layer, h=head: m["lowshot"][l].get(h, {})):
                cells = []
                for m in models:
                    entry = m["lowshot"].get(layer, {}).get(head, {}).get(k)
                    cells.append("-" if entry is None else
                                 f"{_pct(entry['mean'])} ± {100 * entry['std']:.1f}")
                rows.append([layer, head, k, *cells])
    return _table(f"Low-shot test accuracy (%), mean ± std over draws, on "
                  f"{report['dataset'].get('name', '')}",
                  ["layer", "head", "k", *[m["name"] for m in models]], rows, 2)


def _utility_table(report):
    models = [m for m in report["models"] if "utility" in m]
    rows = []
    for n in _union(models, lambda m: m["utility"]["budgets"]):
        cells = []
        for m in models:
            row = next((r for r in m["utility"]["curve"] if r["n"] == n), None)
            cells.append("-" if row is None else f"{row['utility']:.2f}"
                         + (f" ({row['flag']})" if row["flag"] else ""))
        rows.append([str(n), *cells])
    task = models[0]["utility"].get("task", "classification") if models else "classification"
    metric = models[0]["utility"].get("metric", "accuracy") if models else "accuracy"
    return _table(f"Utility U(n) = n_hat / n - 1 of fine-tuning vs. training from scratch "
                  f"({task}, {metric})", ["labels n", *[m["name"] for m in models]], rows)


def markdown_report(report: dict) -> str:
    """Returns every table of a report: linear, grid, kNN, low-shot, utility.

    A report of the linear protocol alone gives exactly `markdown_table`.

    Args:
        report: A dict from `build_report` (or `keras_ssl_eval.protocols.evaluate.evaluate`).

    Returns:
        Markdown text, tables separated by blank lines.
    """
    models = report.get("models", [])
    parts = []
    if not models or any("layers" in m for m in models):
        parts.append(markdown_table(report))
    for key, table in (("grid", _grid_table), ("knn", _knn_table),
                       ("lowshot", _lowshot_table), ("utility", _utility_table)):
        if any(key in m for m in models):
            parts.append(table(report))
    return "\n".join(parts)


def _escape(text):
    return str(text).replace("|", "\\|")


def write_report(report: dict, output_dir: str) -> tuple[str, str]:
    """Writes ``results.json`` and ``results.md`` (`markdown_report`) into `output_dir`.

    Args:
        report: A dict from `build_report`.
        output_dir: Directory, created if missing.

    Returns:
        The paths of the JSON and markdown files.

    Example:
        >>> write_report(report, "/tmp/eval")
        ('/tmp/eval/results.json', '/tmp/eval/results.md')
    """
    os.makedirs(output_dir, exist_ok=True)
    json_path = os.path.join(output_dir, "results.json")
    md_path = os.path.join(output_dir, "results.md")
    with open(json_path, "w") as f:
        json.dump(report, f, indent=2, sort_keys=False, default=_jsonable)
        f.write("\n")
    with open(md_path, "w") as f:
        f.write(markdown_report(report))
    return json_path, md_path


def _jsonable(value):
    """Converts numpy scalars/arrays and tuples that json cannot write."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
