"""Plots of evaluation reports (matplotlib, Agg backend: no display needed).

- ``layers.png``: test accuracy per layer, one line per model and head
  (Kolesnikov et al. Fig. 5 style), from the linear probe, the grid and kNN;
  error bars are the 95% Wilson intervals (``ci95``).
- ``lowshot.png``: low-shot accuracy vs. k (log x), the mean over draws with its
  95% interval as error bars and ± std over draws as a band, per model/head.
- ``utility.png``: utility U(n) vs. label budget n (log x), per model.

`save_figure` finishes and writes a figure; keras_ssl's sweep plots use it too.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

__all__ = ["interval_error", "save_figure", "write_plots"]

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


def interval_error(values, intervals, scale: float = 100.0):
    """Matplotlib's ``yerr`` (``[[below...], [above...]]``) of `values` and their intervals.

    Args:
        values: The plotted values (unscaled).
        intervals: ``[low, high]`` per value, or None where a value has none
            (no bar is drawn there).
        scale: Multiplies both (100: fractions to %).

    Returns:
        The array, or None when no value has an interval.
    """
    if not any(intervals):
        return None
    below = [0.0 if ci is None else scale * max(v - ci[0], 0.0)
             for v, ci in zip(values, intervals)]
    above = [0.0 if ci is None else scale * max(ci[1] - v, 0.0)
             for v, ci in zip(values, intervals)]
    return [below, above]


def _layer_series(report):
    """Yields ``(model index, style index, label, layers, entries)`` (result dicts)."""
    for index, model in enumerate(report["models"]):
        if "layers" in model:
            layers = list(model["layers"])
            yield (index, 0, f"{model['name']} linear", layers,
                   [model["layers"][l] for l in layers])
        for style, head in enumerate(("linear", "mlp"), start=1):
            layers = [l for l in model.get("grid", {}) if head in model["grid"][l]]
            if layers:
                solver = model["grid"][layers[0]][head]["solver"]
                yield (index, style, f"{model['name']} grid {head} ({solver})", layers,
                       [model["grid"][l][head] for l in layers])
        if "knn" in model:
            layers = list(model["knn"])
            yield (index, 3, f"{model['name']} kNN", layers,
                   [model["knn"][l] for l in layers])


def _layers_plot(report, path):
    series = list(_layer_series(report))
    if not series:
        return None
    order = []
    for *_, layers, _ in series:
        order.extend(l for l in layers if l not in order)
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(order)), 4))
    with_bars = False
    for index, style, label, layers, entries in series:
        accuracies = [e["test_accuracy"] for e in entries]
        yerr = interval_error(accuracies, [e.get("ci95") for e in entries])
        with_bars = with_bars or yerr is not None
        ax.errorbar([order.index(l) for l in layers], [100 * a for a in accuracies],
                    yerr=yerr, capsize=3, marker="o", color=f"C{index % 10}",
                    linestyle=_STYLES[style], label=label)
    ax.set_xticks(range(len(order)), order, rotation=30)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Accuracy per layer on {report['dataset'].get('name', '')}"
                 + (" (bars: 95% intervals)" if with_bars else ""))
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
                x, means = [int(k) for k in ks], [by_k[k]["mean"] for k in ks]
                stds = [by_k[k]["std"] for k in ks]
                color = f"C{index % 10}"
                # Reports from before the intervals: the std as the bars, as then.
                yerr = (interval_error(means, [by_k[k].get("ci95") for k in ks])
                        or [100 * s for s in stds])
                ax.errorbar(x, [100 * m for m in means], yerr=yerr, capsize=3,
                            marker="o" if head == "svm" else "s", color=color,
                            linestyle=_STYLES[layer_index % len(_STYLES)],
                            label=f"{model['name']} {layer} {head}")
                ax.fill_between(x, [100 * (m - s) for m, s in zip(means, stds)],
                                [100 * (m + s) for m, s in zip(means, stds)], color=color,
                                alpha=0.15, linewidth=0)
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
    ax.set_title("Low-shot accuracy: mean over draws, bars 95% intervals, band ± std")
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
