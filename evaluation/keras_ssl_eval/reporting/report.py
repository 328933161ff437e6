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
         "layers": {"block3": {"test_accuracy": 0.41, "test_count": 1000,
                               "ci95": [0.380, 0.441], "train_accuracy": ...,
                               "l2": ..., "validation_accuracy": {"1e-05": ...},
                               "iterations": ..., "converged": ..., "grad_norm": ...,
                               "num_classes": ..., "feature_dim": 8192,
                               "endpoint_shape": [28, 28, 512], "fit_seconds": ...},
                    ...},
         # Only for the protocols that ran (see docs/evaluation.md):
         "grid": {layer: {head: {"test_accuracy", "test_count", "ci95", "solver",
                                 "convergence", ...}}},
         "knn": {layer: {"test_accuracy", "test_count", "ci95", "k", "temperature"}},
         "lowshot": {layer: {"svm"|"linear": {k: {"mean", "std", "test_count", "ci95",
                                                  ...}}, "skipped": [...]}},
         "utility": {"budgets", "finetuned_accuracy", "scratch_accuracy", "curve",
                     "test_count", "finetuned_ci95", "scratch_ci95", ...}},
        ...
      ]
    }

``protocol`` is ``linear_probe`` for the linear probe alone, else the
protocols joined by ``+`` (e.g. ``grid+knn``).

``test_count`` is the number of test examples an accuracy was measured on and
``ci95`` its 95% Wilson score interval (`keras_ssl_eval.statistics`); the
low-shot ``ci95`` is the interval of the mean over draws. The markdown tables
print each accuracy as ``50.8 [46.4, 55.2]`` (%, the interval in brackets)
and the test count in the caption. Reports written before these fields
existed still load; `add_missing_intervals` fills them in from the dataset's
test split size.
"""

from __future__ import annotations

import datetime
import importlib
import importlib.metadata
import json
import os
import platform

from keras_ssl_eval.statistics import accuracy_interval

__all__ = ["SCHEMA_VERSION", "add_missing_intervals", "build_report", "format_accuracy",
           "markdown_report", "markdown_table", "model_column_name", "package_versions",
           "write_report"]

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


def format_accuracy(entry: dict | None, key: str = "test_accuracy",
                    with_count: bool = False) -> str:
    """An accuracy of a result dict in %, with its 95% interval: ``50.8 [46.4, 55.2]``.

    Args:
        entry: A result dict (``test_accuracy`` or `key`, and ``ci95``,
            ``test_count`` where the report has them); None prints ``-``.
        key: The accuracy's key (``mean`` for low-shot).
        with_count: Append ``n=<test_count>`` (for tables whose cells were
            measured on different test sets).

    Example:
        >>> format_accuracy({"test_accuracy": 0.508, "test_count": 500,
        ...                  "ci95": [0.4643, 0.5516]})
        '50.8 [46.4, 55.2]'
    """
    if entry is None or entry.get(key) is None:
        return "-"
    return f"{100 * entry[key]:.1f}" + _interval_text(entry, with_count)


def _interval_text(entry, with_count):
    """`` [46.4, 55.2]`` (and `` n=500``) of a result dict; "" without an interval."""
    text = ""
    if entry.get("ci95"):
        low, high = entry["ci95"]
        text += f" [{100 * low:.1f}, {100 * high:.1f}]"
    if with_count and entry.get("test_count"):
        text += f" n={entry['test_count']}"
    return text


def _count_note(entries) -> tuple[str, bool]:
    """``(caption text, whether each cell needs its own n)`` for the entries' test counts."""
    counts = {e.get("test_count") for e in entries if e and e.get("test_count")}
    if not counts:
        return "", False
    if len(counts) == 1:
        return (f"; {counts.pop()} test images, 95% Wilson interval in brackets"), False
    return "; 95% Wilson interval in brackets, n = test images", True


def markdown_table(report: dict, metric: str = "test_accuracy") -> str:
    """Returns a markdown table: rows = layers, columns = models, cells = % accuracy.

    Layers appear in the order the models list them; a model without a layer
    shows ``-``. A test accuracy with an interval reads ``50.8 [46.4, 55.2]``
    (%, the 95% Wilson interval); the caption gives the test count (or each
    cell its ``n=`` when the models were tested on different counts).

    Args:
        report: A dict from `build_report`.
        metric: Which per-layer number to show.

    Returns:
        The table as a string (ends with a newline).

    Example:
        >>> print(markdown_table(report))
        Linear probe test accuracy (%) on cifar10; 1000 test images, 95% Wilson interval in brackets
        <BLANKLINE>
        | layer | rotation | exemplar |
        | --- | ---: | ---: |
        | pre_logits | 55.4 [52.3, 58.5] | 46.0 [42.9, 49.1] |
    """
    models = [m for m in report.get("models", []) if "layers" in m]
    layers = []
    for model in models:
        layers.extend(layer for layer in model["layers"] if layer not in layers)
    with_interval = metric == "test_accuracy"
    note, per_cell = _count_note([e for m in models for e in m["layers"].values()]
                                 if with_interval else [])
    lines = ["| layer | " + " | ".join(_escape(m["name"]) for m in models) + " |",
             "| --- |" + " ---: |" * len(models)]
    for layer in layers:
        cells = []
        for model in models:
            entry = model["layers"].get(layer)
            if with_interval:
                cells.append(format_accuracy(entry, with_count=per_cell))
            else:
                value = (entry or {}).get(metric)
                cells.append("-" if value is None else f"{100 * value:.1f}")
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    title = metric.replace("_", " ")
    dataset = report.get("dataset", {}).get("name", "")
    caption = f"Linear probe {title} (%) on {dataset}" if dataset else f"Linear probe {title} (%)"
    return caption + note + "\n\n" + "\n".join(lines) + "\n"


def _table(caption, header, rows, text_columns=1):
    lines = [caption, "", "| " + " | ".join(_escape(h) for h in header) + " |",
             "|" + " --- |" * text_columns + " ---: |" * (len(header) - text_columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _union(models, getter):
    keys = []
    for model in models:
        keys.extend(k for k in getter(model) if k not in keys)
    return keys


def _grid_table(report):
    models = [m for m in report["models"] if "grid" in m]
    entries = [e for m in models for heads in m["grid"].values() for e in heads.values()]
    note, per_cell = _count_note(entries)
    rows = []
    for layer in _union(models, lambda m: m["grid"]):
        for head in _union(models, lambda m, l=layer: m["grid"].get(l, {})):
            cells = []
            for m in models:
                entry = m["grid"].get(layer, {}).get(head)
                cells.append("-" if entry is None else
                             f"{format_accuracy(entry, with_count=per_cell)} "
                             f"({entry['solver']}, "
                             f"grad {entry['convergence']['grad_norm']:.1e})")
            rows.append([layer, head, *cells])
    return _table(f"Kolesnikov grid: test accuracy (%) per layer and head on "
                  f"{report['dataset'].get('name', '')}{note}",
                  ["layer", "head", *[m["name"] for m in models]], rows, 2)


def _knn_table(report):
    models = [m for m in report["models"] if "knn" in m]
    note, per_cell = _count_note([e for m in models for e in m["knn"].values()])
    rows = [[layer, *[format_accuracy(m["knn"].get(layer), with_count=per_cell)
                      for m in models]]
            for layer in _union(models, lambda m: m["knn"])]
    k = report["settings"].get("knn", {})
    return _table(f"kNN test accuracy (%) (k = min({k.get('k')}, training examples), "
                  f"T = {k.get('temperature')}) on "
                  f"{report['dataset'].get('name', '')}{note}",
                  ["layer", *[m["name"] for m in models]], rows)


def _lowshot_table(report):
    models = [m for m in report["models"] if "lowshot" in m]
    entries = [e for m in models for heads in m["lowshot"].values()
               for head, by_k in heads.items() if head != "skipped" for e in by_k.values()]
    note, per_cell = _count_note(entries)
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
                                 f"{100 * entry['mean']:.1f} ± {100 * entry['std']:.1f}"
                                 + _interval_text(entry, per_cell))
                rows.append([layer, head, k, *cells])
    note = note.replace("95% Wilson interval", "95% Wilson interval of the mean")
    return _table(f"Low-shot test accuracy (%), mean ± std over draws, on "
                  f"{report['dataset'].get('name', '')}{note}",
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
    tables = [_table(f"Utility U(n) = n_hat / n - 1 of fine-tuning vs. training from scratch "
                     f"({task}, {metric})", ["labels n", *[m["name"] for m in models]], rows)]
    with_counts = [m for m in models if m["utility"].get("test_count")]
    if with_counts:
        tables.append(_utility_accuracy_table(with_counts))
    return "\n".join(tables)


def _utility_accuracy_table(models):
    """The accuracies behind U(n): fine-tuned and from scratch, with their intervals."""
    def entries(m, which):
        u = m["utility"]
        return {n: {"test_accuracy": a, "ci95": ci, "test_count": u["test_count"]}
                for n, a, ci in zip(u["budgets"], u[f"{which}_accuracy"], u[f"{which}_ci95"])}
    columns = [(m, which) for m in models for which in ("finetuned", "scratch")]
    by_column = [entries(m, which) for m, which in columns]
    note, per_cell = _count_note([e for c in by_column for e in c.values()])
    rows = [[str(n), *[format_accuracy(c.get(n), with_count=per_cell) for c in by_column]]
            for n in _union(models, lambda m: m["utility"]["budgets"])]
    return _table(f"Test accuracy (%) behind U(n): fine-tuned and from scratch{note}",
                  ["labels n", *[f"{m['name']} {which}" for m, which in columns]], rows)


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


def add_missing_intervals(report: dict) -> dict:
    """Fills in ``test_count`` and ``ci95`` where a report predates them; returns the report.

    A report written before the intervals existed has the test split's size in
    ``dataset.test.num_examples``: every accuracy of its linear, grid, kNN and
    low-shot results was measured on that many examples. Entries that have
    their fields, and reports without the size, are left as they are.

    Args:
        report: A report dict; changed in place.
    """
    n = ((report.get("dataset") or {}).get("test") or {}).get("num_examples")
    if not n:
        return report

    def fill(entry, key="test_accuracy"):
        if isinstance(entry, dict) and entry.get(key) is not None and "ci95" not in entry:
            entry.update(accuracy_interval(entry[key], n))
    for model in report.get("models", []):
        for entry in model.get("layers", {}).values():
            fill(entry)
        for heads in model.get("grid", {}).values():
            for entry in heads.values():
                fill(entry)
        for entry in model.get("knn", {}).values():
            fill(entry)
        for heads in model.get("lowshot", {}).values():
            for head, by_k in heads.items():
                if head != "skipped":
                    for entry in by_k.values():
                        fill(entry, "mean")
    return report


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
