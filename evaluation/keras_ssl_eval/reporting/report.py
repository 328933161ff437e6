"""Evaluation reports: one JSON document and a markdown table.

JSON layout (``schema_version`` 2)::

    {
      "schema_version": 2,
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
         # Each protocol that ran, under its name (keras_ssl_eval.protocols.base):
         "linear": {"block3": {"test_accuracy": 0.41, "test_count": 1000,
                               "ci95": [0.380, 0.441], "train_accuracy": ...,
                               "l2": ..., "validation_accuracy": {"1e-05": ...},
                               "iterations": ..., "converged": ..., "grad_norm": ...,
                               "num_classes": ..., "feature_dim": 8192,
                               "endpoint_shape": [28, 28, 512], "fit_seconds": ...},
                    ...},
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
protocols joined by ``+`` (e.g. ``grid+knn``). Schema version 1 kept the
linear probe's results under ``layers``; every reader here reads both
(`keras_ssl_eval.protocols.base.Protocol.results`), and `upgrade_report`
moves them to ``linear``.

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

from keras_ssl_eval.reporting.tables import format_accuracy
from keras_ssl_eval.statistics import accuracy_interval

__all__ = ["SCHEMA_VERSION", "add_missing_intervals", "build_report", "format_accuracy",
           "markdown_report", "markdown_table", "model_column_name", "package_versions",
           "upgrade_report", "write_report"]

# 2: every protocol's results under its own name (1: the linear probe's under "layers").
SCHEMA_VERSION = 2


def _protocols():
    from keras_ssl_eval.protocols.base import registered  # pylint: disable=import-outside-toplevel

    return registered().values()


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
            each protocol's results under its name (``linear``: ``{layer:
            result dict}``, ...). A ``name`` is added
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
    """Returns the linear probe's markdown table: rows = layers, columns = models, cells = %.

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
    from keras_ssl_eval.protocols.linear import LINEAR, linear_table  # pylint: disable=import-outside-toplevel

    models = [m for m in report.get("models", []) if LINEAR.results(m) is not None]
    return linear_table(report, models, metric)


def markdown_report(report: dict) -> str:
    """Returns every table of a report: one per protocol that has results, in registry order.

    A report of the linear protocol alone gives exactly `markdown_table`; so
    does a report without models.

    Args:
        report: A dict from `build_report` (or `keras_ssl_eval.protocols.evaluate.evaluate`).

    Returns:
        Markdown text, tables separated by blank lines.
    """
    models = report.get("models", [])
    parts = []
    for protocol in _protocols():
        having = [m for m in models if protocol.results(m) is not None]
        if having:
            parts.append(protocol.markdown(report, having))
    if not models:
        parts.append(markdown_table(report))
    adapted = [m for m in models if ((m.get("metadata") or {}).get("adapter"))]
    if adapted:
        parts.append(_adapter_notes(adapted))
    return "\n".join(parts)


def _adapter_notes(models) -> str:
    """What the report says of models read through an adapter (``--model``): which
    end-points, which signature, what input."""
    lines = ["Models read through an adapter (--model):", ""]
    for model in models:
        adapter = model["metadata"]["adapter"]
        mapping = ", ".join(f"{name} = {source}" for name, source in adapter["endpoints"].items())
        chosen = adapter.get("default_endpoints") or f"end-points {mapping}"
        signature = f", signature {adapter['signature']}" if adapter.get("signature") else ""
        lines.append(f"- {model['name']}: {adapter['kind']}{signature}; {chosen}; input: "
                     f"{adapter['input']}; fine-tuning head on {adapter['fine_tune_head']}.")
    return "\n".join(lines) + "\n"


def add_missing_intervals(report: dict) -> dict:
    """Fills in ``test_count`` and ``ci95`` where a report predates them; returns the report.

    A report written before the intervals existed has the test split's size in
    ``dataset.test.num_examples``: every accuracy of its per-layer results
    (each protocol's `accuracy_entries`) was measured on that many examples.
    Entries that have their fields, and reports without the size, are left as
    they are.

    Args:
        report: A report dict; changed in place.
    """
    n = ((report.get("dataset") or {}).get("test") or {}).get("num_examples")
    if not n:
        return report
    for model in report.get("models", []):
        for protocol in _protocols():
            for entry, key in protocol.accuracy_entries(protocol.results(model)):
                if isinstance(entry, dict) and entry.get(key) is not None and "ci95" not in entry:
                    entry.update(accuracy_interval(entry[key], n))
    return report


def upgrade_report(report: dict) -> dict:
    """Moves results kept under an older key to their protocol's name; returns the report.

    A report of schema version 1 has the linear probe's results under
    ``layers``; after this they are under ``linear`` as in every report
    written now. Changed in place.
    """
    for model in report.get("models", []):
        for protocol in _protocols():
            for key in protocol.legacy_keys:
                if key in model and protocol.name not in model:
                    model[protocol.name] = model.pop(key)
    if report.get("schema_version", SCHEMA_VERSION) < SCHEMA_VERSION:
        report["schema_version"] = SCHEMA_VERSION
    return report


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
