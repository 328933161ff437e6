"""The ``linear`` protocol: the linear probe on every layer (`keras_ssl_eval.probes.linear`).

Results per layer: `LinearProbeResult.to_dict` plus ``test_count``, ``ci95``,
``fit_seconds``, ``feature_dim`` and ``endpoint_shape``. Its settings
(`LinearSettings`) are recorded at the top of every report's settings: the
grid's ``fast`` solver uses its L2 grid too.
"""

from __future__ import annotations

import logging
import time

from keras_ssl_eval.probes.linear import fit_linear_probe
from keras_ssl_eval.protocols.base import LayerInput, Protocol, register
from keras_ssl_eval.reporting.tables import count_note, escape, format_accuracy
from keras_ssl_eval.settings import LinearSettings
from keras_ssl_eval.statistics import accuracy_interval

__all__ = ["LinearProtocol", "linear_table", "run_linear"]

_log = logging.getLogger(__name__)


def run_linear(x, y, xt, yt, settings: LinearSettings = LinearSettings(), *,
               seed: int = 0) -> dict:
    """The linear probe on one layer.

    Args:
        x, y: Training features ``[N, D]`` and labels.
        xt, yt: Test features and labels.
        settings: The L2 grid and the hold-out fraction.
        seed: Seed of the hold-out split.

    Returns:
        `LinearProbeResult.to_dict` plus ``test_count``, ``ci95`` and ``fit_seconds``.
    """
    start = time.perf_counter()
    result = fit_linear_probe(x, y, xt, yt, l2_grid=settings.l2_grid,
                              validation_fraction=settings.validation_fraction, seed=seed)
    return {**result.to_dict(), **accuracy_interval(result.test_accuracy, len(yt)),
            "fit_seconds": round(time.perf_counter() - start, 3)}


def linear_table(report: dict, models: list[dict], metric: str = "test_accuracy") -> str:
    """The linear probe's table: rows = layers, columns = models (see `markdown_table`)."""
    results = [LINEAR.results(m) or {} for m in models]
    layers = []
    for layer_results in results:
        layers.extend(layer for layer in layer_results if layer not in layers)
    with_interval = metric == "test_accuracy"
    note, per_cell = count_note([e for r in results for e in r.values()]
                                if with_interval else [])
    lines = ["| layer | " + " | ".join(escape(m["name"]) for m in models) + " |",
             "| --- |" + " ---: |" * len(models)]
    for layer in layers:
        cells = []
        for layer_results in results:
            entry = layer_results.get(layer)
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


class LinearProtocol(Protocol):
    """The linear probe per layer; reports of schema version 1 kept it under ``layers``."""

    name = "linear"
    settings = LinearSettings
    order = 10
    method = ("solver", "Newton-CG (preconditioned), standardised features")
    shared_settings = True
    legacy_keys = ("layers",)

    def run_layer(self, data: LayerInput, settings, evaluation) -> dict:
        result = {**run_linear(data.x, data.y, data.xt, data.yt, settings,
                               seed=evaluation.data.seed),
                  "feature_dim": int(data.x.shape[1]), "endpoint_shape": data.endpoint_shape}
        _log.info("%s, %s: linear probe test accuracy %.4f", data.model, data.layer,
                  result["test_accuracy"])
        return result

    def layer_series(self, results):
        yield "linear", results

    def markdown(self, report, models):
        return linear_table(report, models)


LINEAR = register(LinearProtocol())
