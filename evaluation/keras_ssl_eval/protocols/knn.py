"""The ``knn`` protocol: weighted kNN on every layer (`keras_ssl_eval.probes.knn`).

Results per layer: ``{"test_accuracy", "test_count", "ci95", "k", "temperature"}``.
"""

from __future__ import annotations

from keras_ssl_eval.probes.knn import knn_accuracy
from keras_ssl_eval.protocols.base import LayerInput, Protocol, register
from keras_ssl_eval.reporting.tables import count_note, format_accuracy, table, union
from keras_ssl_eval.settings import KnnSettings
from keras_ssl_eval.statistics import accuracy_interval

__all__ = ["KnnProtocol", "run_knn"]


def run_knn(x, y, xt, yt, settings: KnnSettings = KnnSettings()) -> dict:
    """Weighted kNN on one layer; see `keras_ssl_eval.probes.knn.knn_accuracy`.

    Args:
        x, y, xt, yt: Train and test features and labels.
        settings: Neighbours (capped at the training set size) and vote temperature.

    Returns:
        ``{"test_accuracy", "test_count", "ci95", "k", "temperature"}``.
    """
    result = knn_accuracy(x, y, xt, yt, k=settings.k, temperature=settings.temperature)
    return {"test_accuracy": result["test_accuracy"],
            **accuracy_interval(result["test_accuracy"], len(yt)),
            **{k: v for k, v in result.items() if k != "test_accuracy"}}


class KnnProtocol(Protocol):
    """Weighted kNN per layer (k = 200, T = 0.1 as in the papers)."""

    name = "knn"
    settings = KnnSettings
    order = 30

    def run_layer(self, data: LayerInput, settings, evaluation) -> dict:
        return run_knn(data.x, data.y, data.xt, data.yt, settings)

    def layer_series(self, results):
        yield "kNN", results

    def markdown(self, report, models):
        results = [self.results(m) for m in models]
        note, per_cell = count_note([e for r in results for e in r.values()])
        rows = [[layer, *[format_accuracy(r.get(layer), with_count=per_cell) for r in results]]
                for layer in union(results, lambda r: r)]
        k = report["settings"].get("knn", {})
        return table(f"kNN test accuracy (%) (k = min({k.get('k')}, training examples), "
                     f"T = {k.get('temperature')}) on "
                     f"{report['dataset'].get('name', '')}{note}",
                     ["layer", *[m["name"] for m in models]], rows)


KNN = register(KnnProtocol())
