"""The ``grid`` protocol: Kolesnikov's heads x layers (`keras_ssl_eval.probes.heads`).

Heads ``linear`` (solver ``fast`` = Newton-CG on the linear probe's L2 grid,
or ``sgd`` = the paper's schedule) and ``mlp`` (always the SGD schedule).
Results per layer: ``{head: {"test_accuracy", "test_count", "ci95",
"train_accuracy", "solver", "convergence", "fit_seconds"}}``.
"""

from __future__ import annotations

import time

from keras_ssl_eval.probes.heads import train_head
from keras_ssl_eval.probes.linear import fit_linear_probe
from keras_ssl_eval.protocols.base import LayerInput, Protocol, register, result_row
from keras_ssl_eval.reporting.tables import count_note, format_accuracy, table, union
from keras_ssl_eval.settings import GridSettings, LinearSettings
from keras_ssl_eval.statistics import accuracy_interval

__all__ = ["GridProtocol", "run_grid"]


def run_grid(x, y, xt, yt, settings: GridSettings = GridSettings(), *,
             linear: LinearSettings = LinearSettings(), seed: int = 0) -> dict:
    """Kolesnikov's heads on one layer.

    Args:
        x, y, xt, yt: Train and test features and labels.
        settings: The heads, the linear head's solver (``"fast"``: Newton-CG
            to the regularised optimum; ``"sgd"``: momentum 0.9, lr 0.1 per
            256, x0.1 at 30/70 and 50/70 of the epochs; the MLP always uses
            the SGD schedule), epochs, SGD batch size and MLP width.
        linear: The L2 grid of the ``fast`` solver.
        seed: Seed.

    Returns:
        ``{head: {"test_accuracy", "test_count", "ci95", "train_accuracy", "solver",
        "convergence": {...}, "fit_seconds"}}``. ``convergence`` holds ``grad_norm`` (largest entry of
        the full-batch gradient at the end) for every head, plus
        ``iterations``/``converged`` (fast) or ``final_loss``/``loss_history`` (SGD).
    """
    results = {}
    for head in settings.heads:
        start = time.perf_counter()
        if head == "linear" and settings.solver == "fast":
            probe = fit_linear_probe(x, y, xt, yt, l2_grid=linear.l2_grid,
                                     validation_fraction=linear.validation_fraction, seed=seed)
            entry = {"test_accuracy": probe.test_accuracy,
                     "train_accuracy": probe.train_accuracy, "solver": "fast",
                     "l2": probe.l2,
                     "convergence": {"iterations": probe.iterations,
                                     "converged": probe.converged,
                                     "grad_norm": probe.grad_norm}}
        else:
            result = train_head(x, y, xt, yt, head=head, epochs=settings.epochs,
                                batch_size=settings.sgd_batch_size, hidden=settings.mlp_hidden,
                                seed=seed)
            entry = {"test_accuracy": result.test_accuracy,
                     "train_accuracy": result.train_accuracy, "solver": "sgd",
                     "convergence": {"epochs": result.epochs, "final_loss": result.final_loss,
                                     "grad_norm": result.grad_norm,
                                     "spectral_scale": result.spectral_scale,
                                     "loss_history": result.loss_history}}
        entry.update(accuracy_interval(entry["test_accuracy"], len(yt)))
        entry["fit_seconds"] = round(time.perf_counter() - start, 3)
        results[head] = entry
    return results


class GridProtocol(Protocol):
    """Kolesnikov's linear and MLP heads per layer."""

    name = "grid"
    settings = GridSettings
    order = 20
    method = ("sgd", "momentum 0.9, lr 0.1 per 256, x0.1 at 30/70 and 50/70")

    def run_layer(self, data: LayerInput, settings, evaluation) -> dict:
        return run_grid(data.x, data.y, data.xt, data.yt, settings, linear=evaluation.linear,
                        seed=evaluation.data.seed)

    def accuracy_entries(self, results):
        for heads in (results or {}).values():
            for entry in heads.values():
                yield entry, "test_accuracy"

    def rows(self, results):
        return [result_row(layer, f"grid_{head}", entry["test_accuracy"], source=entry)
                for layer, heads in (results or {}).items() for head, entry in heads.items()]

    def layer_series(self, results):
        for head in union([results], lambda r: [h for heads in r.values() for h in heads]):
            by_layer = {layer: heads[head] for layer, heads in results.items() if head in heads}
            solver = next(iter(by_layer.values()))["solver"]
            yield f"grid {head} ({solver})", by_layer

    def markdown(self, report, models):
        results = [self.results(m) for m in models]
        note, per_cell = count_note([e for r in results for e, _ in self.accuracy_entries(r)])
        rows = []
        for layer in union(results, lambda r: r):
            for head in union(results, lambda r, l=layer: r.get(l, {})):
                cells = []
                for r in results:
                    entry = r.get(layer, {}).get(head)
                    cells.append("-" if entry is None else
                                 f"{format_accuracy(entry, with_count=per_cell)} "
                                 f"({entry['solver']}, "
                                 f"grad {entry['convergence']['grad_norm']:.1e})")
                rows.append([layer, head, *cells])
        return table(f"Kolesnikov grid: test accuracy (%) per layer and head on "
                     f"{report['dataset'].get('name', '')}{note}",
                     ["layer", "head", *[m["name"] for m in models]], rows, 2)


GRID = register(GridProtocol())
