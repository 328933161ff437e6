"""Plots of evaluation reports (matplotlib, Agg backend: no display needed).

- ``layers.png``: test accuracy per layer, one line per model and head
  (Kolesnikov et al. Fig. 5 style), from the linear probe and the grid.
- ``lowshot.png``: low-shot accuracy vs. k (log x), mean ± std, per model/head.
- ``utility.png``: utility U(n) vs. label budget n (log x), per model.

`save_figure` finishes and writes a figure; keras_ssl's sweep plots use it too.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

__all__ = ["save_figure", "write_plots"]

_STYLES = ["-", "--", ":", "-."]


def save_figure(fig, ax, path: str) -> str:
    """Adds the grid and the legend (right of the axes), writes the PNG, closes the figure.

    The common tail of every plot here and of keras_ssl's sweep plots.

    Returns:
        `path`.
    """
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _layer_series(report):
    """Yields ``(model index, style index, label, layers, accuracies)``."""
    for index, model in enumerate(report["models"]):
        if "layers" in model:
            layers = list(model["layers"])
            yield (index, 0, f"{model['name']} linear", layers,
                   [model["layers"][l]["test_accuracy"] for l in layers])
        for style, head in enumerate(("linear", "mlp"), start=1):
            layers = [l for l in model.get("grid", {}) if head in model["grid"][l]]
            if layers:
                solver = model["grid"][layers[0]][head]["solver"]
                yield (index, style, f"{model['name']} grid {head} ({solver})", layers,
                       [model["grid"][l][head]["test_accuracy"] for l in layers])
        if "knn" in model:
            layers = list(model["knn"])
            yield (index, 3, f"{model['name']} kNN", layers,
                   [model["knn"][l]["test_accuracy"] for l in layers])


def _layers_plot(report, path):
    series = list(_layer_series(report))
    if not series:
        return None
    order = []
    for *_, layers, _ in series:
        order.extend(l for l in layers if l not in order)
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(order)), 4))
    for index, style, label, layers, accuracies in series:
        ax.plot([order.index(l) for l in layers], [100 * a for a in accuracies], marker="o",
                color=f"C{index % 10}", linestyle=_STYLES[style], label=label)
    ax.set_xticks(range(len(order)), order, rotation=30)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Accuracy per layer on {report['dataset'].get('name', '')}")
    return save_figure(fig, ax, path)


def _lowshot_plot(report, path):
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn, ticks = False, set()
    for index, model in enumerate(report["models"]):
        for layer_index, (layer, heads) in enumerate(model.get("lowshot", {}).items()):
            for head, by_k in heads.items():
                if head == "skipped" or not by_k:
                    continue
                ks = sorted(by_k, key=int)
                ax.errorbar([int(k) for k in ks], [100 * by_k[k]["mean"] for k in ks],
                            yerr=[100 * by_k[k]["std"] for k in ks], capsize=3,
                            marker="o" if head == "svm" else "s", color=f"C{index % 10}",
                            linestyle=_STYLES[layer_index % len(_STYLES)],
                            label=f"{model['name']} {layer} {head}")
                ticks.update(int(k) for k in ks)
                drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log")
    ax.set_xticks(sorted(ticks), [str(k) for k in sorted(ticks)])
    ax.minorticks_off()
    ax.set_xlabel("labelled examples per class k")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Low-shot accuracy (mean ± std over draws)")
    return save_figure(fig, ax, path)


def _utility_plot(report, path):
    models = [m for m in report["models"] if m.get("utility", {}).get("curve")]
    if not models:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for model in models:
        curve = model["utility"]["curve"]
        ax.plot([r["n"] for r in curve], [r["utility"] for r in curve], marker="o",
                label=model["name"])
        flagged = [r for r in curve if r["flag"]]
        ax.scatter([r["n"] for r in flagged], [r["utility"] for r in flagged], marker="x",
                   color="k", zorder=3)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    budgets = sorted({r["n"] for m in models for r in m["utility"]["curve"]})
    ax.set_xticks(budgets, [str(n) for n in budgets])
    ax.minorticks_off()
    ax.set_xlabel("labels n")
    ax.set_ylabel("utility U(n) = n_hat / n - 1")
    task = models[0]["utility"].get("task", "classification")
    ax.set_title(f"Utility of pretraining, {task} (x: clipped at the scratch curve)")
    return save_figure(fig, ax, path)


def write_plots(report: dict, output_dir: str) -> list[str]:
    """Writes the plots the report has data for into `output_dir`.

    Args:
        report: A report from `keras_ssl_eval.protocols.evaluate.evaluate` or `compare`.
        output_dir: Directory, created if missing.

    Returns:
        Paths of the PNG files written (``layers.png``, ``lowshot.png``,
        ``utility.png``, those with data).

    Example:
        >>> write_plots(report, "/tmp/eval")
        ['/tmp/eval/layers.png']
    """
    os.makedirs(output_dir, exist_ok=True)
    written = [_layers_plot(report, os.path.join(output_dir, "layers.png")),
               _lowshot_plot(report, os.path.join(output_dir, "lowshot.png")),
               _utility_plot(report, os.path.join(output_dir, "utility.png"))]
    return [p for p in written if p]
