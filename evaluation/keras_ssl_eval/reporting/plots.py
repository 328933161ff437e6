"""Plots of evaluation reports (matplotlib, Agg backend: no display needed).

- ``layers.png``: test accuracy per layer, one line per model and head
  (Kolesnikov et al. Fig. 5 style), from every protocol's
  `Protocol.layer_series` (the linear probe, the grid's heads, kNN); error
  bars are the 95% Wilson intervals (``ci95``).
- then each protocol's own plots (`Protocol.plots`): ``lowshot.png``
  (`keras_ssl_eval.protocols.lowshot`), ``utility.png``
  (`keras_ssl_eval.protocols.utility`).

`save_figure` finishes and writes a figure; keras_ssl's sweep plots use it too.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

__all__ = ["interval_error", "line_style", "save_figure", "write_plots"]

_STYLES = ["-", "--", ":", "-."]


def line_style(index: int) -> str:
    """The `index`-th line style (solid, dashed, dotted, dash-dot, again)."""
    return _STYLES[index % len(_STYLES)]


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
    from keras_ssl_eval.protocols.base import registered  # pylint: disable=import-outside-toplevel

    for index, model in enumerate(report["models"]):
        style = 0
        for protocol in registered().values():
            results = protocol.results(model)
            if results is None:
                continue
            for label, by_layer in protocol.layer_series(results):
                if by_layer:
                    yield (index, style, f"{model['name']} {label}", list(by_layer),
                           list(by_layer.values()))
                style += 1


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
                    linestyle=line_style(style), label=label)
    ax.set_xticks(range(len(order)), order, rotation=30)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Accuracy per layer on {report['dataset'].get('name', '')}"
                 + (" (bars: 95% intervals)" if with_bars else ""))
    return save_figure(fig, ax, path)


def write_plots(report: dict, output_dir: str) -> list[str]:
    """Writes the plots the report has data for into `output_dir`.

    Args:
        report: A report from `keras_ssl_eval.protocols.evaluate.evaluate` or `compare`.
        output_dir: Directory, created if missing.

    Returns:
        Paths of the PNG files written, those with data: ``layers.png``, then
        each protocol's own (``lowshot.png``, ``utility.png``) in registry order.

    Example:
        >>> write_plots(report, "/tmp/eval")
        ['/tmp/eval/layers.png']
    """
    from keras_ssl_eval.protocols.base import registered  # pylint: disable=import-outside-toplevel

    os.makedirs(output_dir, exist_ok=True)
    written = [_layers_plot(report, os.path.join(output_dir, "layers.png"))]
    for protocol in registered().values():
        written += protocol.plots(report, output_dir)
    return [p for p in written if p]
