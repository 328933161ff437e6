"""The plots of a sweep, driven by the grid file's `plots:` section.

Each plot draws `value` (a metric of the results table) against one column
(`x`: a grid axis, or `layer`, `labels`, `protocol`, `model`...), one line per
combination of the `series` columns, over the table rows that match `where`::

    plots:
      - name: accuracy_vs_width        # plots/accuracy_vs_width.png
        x: width
        series: [method, backbone]
        where: {layer: pre_logits, protocol: linear}
        metric: test_accuracy          # the default; utility rows: utility
        log_x: false

Rows of the step-0 model are left out unless `model` is named in `where`,
`x` or `series`. A column the plot does not name that still varies among the
selected rows (another axis, a second protocol) becomes part of the series,
so a point is never an average of different settings. The one exception is
the `seed` axis (`keras_ssl.sweep.aggregate`): unless the plot names it, the
runs of one setting with different seeds make one point, their mean.

Error bars are 95% intervals: Wilson's for a single run's test accuracy; for a
mean over seeds, the seeds' spread and the test noise together
(`keras_ssl_eval.statistics.seed_summary`).
"""

from __future__ import annotations

import os

# Imported first: it selects matplotlib's Agg backend before pyplot is imported.
from keras_ssl_eval.reporting.plots import interval_error, save_figure

import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=wrong-import-position

from keras_ssl.sweep import aggregate  # noqa: E402

PLOTS_DIR = "plots"
# Markers of the results table's `bound` values: U(n) at least / at most the point.
_BOUND_MARKERS = {"lower": "^", "upper": "v"}
_IMPLICIT_SERIES = ("model", "layer", "protocol", "labels")


def _matches(row: dict, where: dict) -> bool:
    for column, wanted in where.items():
        wanted = wanted if isinstance(wanted, list) else [wanted]
        if str(row.get(column)) not in {str(w) for w in wanted}:
            return False
    return True


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def select(rows: list[dict], spec: dict, axis_names) -> tuple[list[dict], list[str]]:
    """The rows a plot draws and its series columns (named ones, then varying ones).

    Rows that differ only by seed come back as one (`aggregate.summarise`:
    the mean, `std`, `n` and the interval), unless the spec names `seed`.

    Args:
      rows: The results table.
      spec: The plot specification.
      axis_names: The grid's axes.
    """
    metric = spec.get("metric", "test_accuracy")
    where = dict(spec.get("where") or {})
    named = {spec["x"], *spec.get("series", []), *where}
    if "model" not in named:
        where["model"] = "final"
    chosen = [row for row in rows if row.get("status") == "ok" and row.get("metric") == metric
              and _matches(row, where) and row.get(spec["x"]) not in (None, "")]
    series = list(spec.get("series", []))
    for column in list(axis_names) + list(_IMPLICIT_SERIES):
        if column in named or column in series or column == aggregate.SEED_AXIS:
            continue
        if len({str(row.get(column)) for row in chosen}) > 1:
            series.append(column)
    # Everything that identifies a result but the seed: only seeds are ever averaged,
    # even where a `where` list lets a named column take several values.
    identity = [c for c in [*axis_names, *aggregate.RESULT_KEY, *series, spec["x"]]
                if c != aggregate.SEED_AXIS or c in named]
    return aggregate.group(chosen, list(dict.fromkeys(identity))), series


def merged_order(sequences) -> list:
    """One order of the values of several sequences that keeps each sequence's order.

    A value new to the order goes right after the value before it in its own
    sequence: VGG's `block5`, `fc6` land between a ResNet's `block4` and
    `pre_logits`, not after them.

    Example:
      >>> merged_order([["block4", "pre_logits"], ["block4", "block5", "fc6", "pre_logits"]])
      ['block4', 'block5', 'fc6', 'pre_logits']
    """
    order = []
    for sequence in sequences:
        previous = None
        for value in sequence:
            if value not in order:
                # `previous` is already placed (or None at the start of the sequence).
                position = 0 if previous is None else order.index(previous) + 1
                order.insert(position, value)
            previous = value
    return order


def draw(rows: list[dict], spec: dict, axis_names, path: str) -> str | None:
    """Draws one plot into `path`; returns it, or None when no row matches.

    Args:
      rows: The results table.
      spec: The plot specification (see the module docstring).
      axis_names: The grid's axes.
      path: The PNG file.
    """
    chosen, series_columns = select(rows, spec, axis_names)
    if not chosen:
        return None
    x_column = spec["x"]
    metric = spec.get("metric", "test_accuracy")
    lines = {}
    for row in chosen:
        key = tuple(row.get(column) for column in series_columns)
        lines.setdefault(key, []).append(row)
    x_values = merged_order([[row.get(x_column) for row in line] for line in lines.values()])
    numeric = all(_is_number(v) for v in x_values)
    scale = 1.0 if metric == "utility" else 100.0
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(x_values) + 3), 4))
    bounds_drawn, with_bars = set(), False
    for index, (key, line_rows) in enumerate(lines.items()):
        line_rows = sorted(line_rows, key=lambda row: (
            row[x_column] if numeric else x_values.index(row.get(x_column))))
        points = [(row[x_column] if numeric else x_values.index(row.get(x_column)),
                   scale * row["value"], row.get("bound") or "") for row in line_rows]
        label = ", ".join(f"{c}={v}" for c, v in zip(series_columns, key)) or metric
        seeds = {row.get("n", 1) for row in line_rows}
        if seeds != {1}:
            label += f" (mean of {'/'.join(str(n) for n in sorted(seeds))} seeds)"
        color = f"C{index % 10}"
        yerr = interval_error([row["value"] for row in line_rows],
                              [aggregate.interval(row) for row in line_rows], scale)
        with_bars = with_bars or yerr is not None
        ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=yerr, capsize=3,
                    marker="o", color=color, label=label)
        # A utility clipped at an end of the scratch curve is a bound, not a value.
        for bound, marker in _BOUND_MARKERS.items():
            clipped = [p for p in points if p[2] == bound]
            if clipped:
                ax.plot([p[0] for p in clipped], [p[1] for p in clipped], ls="none",
                        marker=marker, ms=11, mfc="none", color=color,
                        label=None if bound in bounds_drawn else f"{bound} bound (clipped)")
                bounds_drawn.add(bound)
    if numeric:
        if spec.get("log_x"):
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xticks(sorted(x_values), [str(v) for v in sorted(x_values)])
    else:
        ax.set_xticks(range(len(x_values)), [str(v) for v in x_values], rotation=30)
    ax.set_xlabel(x_column)
    ax.set_ylabel(spec.get("ylabel") or ("U(n) = n_hat / n - 1" if metric == "utility"
                                         else f"{metric.replace('_', ' ')} (%)"))
    filters = ", ".join(f"{k}={v}" for k, v in (spec.get("where") or {}).items())
    ax.set_title((spec.get("title") or f"{metric} vs {x_column}" + (f" ({filters})"
                                                                     if filters else ""))
                 + (" (bars: 95% intervals)" if with_bars else ""))
    if metric == "utility":
        ax.axhline(0, color="grey", lw=0.8)
    return save_figure(fig, ax, path)


def write_plots(rows: list[dict], plots: list[dict], axis_names, output_dir: str) -> dict:
    """Draws every plot of the grid into `output_dir/plots/`.

    Args:
      rows: The results table.
      plots: The grid's plot specifications.
      axis_names: The grid's axes.
      output_dir: The sweep's output directory.

    Returns:
      `{plot name: path, or None when no finished cell had data for it}`.
    """
    directory = os.path.join(output_dir, PLOTS_DIR)
    os.makedirs(directory, exist_ok=True)
    return {spec["name"]: draw(rows, spec, axis_names, os.path.join(directory,
                                                                    f"{spec['name']}.png"))
            for spec in plots}
