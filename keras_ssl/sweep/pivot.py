"""Pivot tables of a sweep, driven by the grid file's `tables:` section.

The long results table has one row per cell x model x layer x protocol; a
pivot puts one column's values side by side (`columns`, e.g. `layer` or
`model`), one table row per combination of the `rows` columns, over the
table rows that match `where`::

    tables:
      - name: per_layer                 # a section of results.md
        rows: [method, backbone, width]
        columns: layer
        where: {protocol: grid_linear}
        metric: test_accuracy           # the default; utility rows: utility
        title: Linear probe per layer

Rows are selected as a plot selects them (`keras_ssl.sweep.plots.select`):
the step-0 model is left out unless `model` is named, and a column the table
does not name that still varies among the selected rows becomes part of the
row key, so a cell of the table is never an average of different settings;
only runs that differ by their seed are averaged (mean ± std over the seeds).

Each entry shows its 95% interval in brackets, and marks (docs/sweep.md):
``**bold**`` the best entry of its column, ``≈`` an entry whose interval
overlaps the best one's, ``†`` a final-export entry whose interval overlaps
the same setting's at random initialisation (step 0), ``↓`` one whose
interval lies wholly below it.
"""

from __future__ import annotations

from keras_ssl.sweep import aggregate
from keras_ssl.sweep.plots import merged_order, select
from keras_ssl.sweep.table import format_value


def pivot(rows: list[dict], spec: dict, axis_names) -> tuple[list[str], list[str], list[list]]:
    """The pivot of `rows`: `(row columns, pivoted values, body)`.

    Args:
      rows: The results table.
      spec: The table specification (see the module docstring).
      axis_names: The grid's axes.

    Returns:
      The columns that key a table row (the named `rows`, then those that
      vary), the pivoted column's values in order, and one list per table
      row: its key values, then the results-table row per pivoted value
      (None where missing). The body is empty when no finished cell matches.
    """
    column = spec["columns"]
    chosen, row_columns = select(
        rows, {"x": column, "series": spec["rows"], "where": spec.get("where") or {},
               "metric": spec.get("metric", "test_accuracy")}, axis_names)
    by_key = {}
    for row in chosen:
        by_key.setdefault(tuple(row.get(c) for c in row_columns), []).append(row)
    # Each key's values in the order its rows came, merged: VGG's extra layers
    # land between the layers they sit between.
    order = merged_order([[row.get(column) for row in key_rows] for key_rows in by_key.values()])
    body = []
    for key, key_rows in by_key.items():
        by_value = {row.get(column): row for row in key_rows}
        body.append([*key, *(by_value.get(v) for v in order)])
    return row_columns, order, body


def _legend(body, row_columns, metric, baselines_shown) -> str:
    """The line under a table saying what its numbers and marks mean."""
    entries = [c for entry in body for c in entry[len(row_columns):] if c is not None]
    parts = []
    seeds = sorted({c.get("n", 1) for c in entries})
    if seeds != [1]:
        parts.append(f"mean ± std over {'/'.join(map(str, seeds))} seeds")
    counts = sorted({c.get("test_count") for c in entries if c.get("test_count")})
    if any(aggregate.interval(c) for c in entries):
        source = (f"{'/'.join(map(str, counts))} test images" if counts else "the seeds")
        parts.append(f"[95% interval] ({source})")
        parts.append("**bold**: best in its column; ≈: interval overlaps the best one's "
                     "(not shown to differ)")
        if baselines_shown:
            parts.append("†: interval overlaps the same network's at random "
                         "initialisation (step 0): no gain shown; ↓: wholly below it")
    return ("Entries: " + "; ".join(parts) + ".") if parts else ""


def markdown(rows: list[dict], spec: dict, axis_names) -> str:
    """One pivot table as a markdown section (`### title`); says so when it has no rows.

    Entries read ``45.5 [42.4, 48.6]`` (one run) or ``45.5 ± 1.2 [40.1, 50.9]``
    (mean ± std over seeds), with the marks of the module docstring; a
    legend under the table says what they mean.
    """
    metric = spec.get("metric", "test_accuracy")
    filters = ", ".join(f"{k}={v}" for k, v in (spec.get("where") or {}).items())
    title = spec.get("title") or f"{metric} by {spec['columns']}"
    unit = "U(n) = n_hat / n - 1" if metric == "utility" else f"{metric.replace('_', ' ')} (%)"
    named = [spec["columns"], *spec["rows"], *(spec.get("where") or {})]
    scope = f"the rows where {filters}" if filters else "every row"
    if "model" not in named:
        scope += " (final exports)"
    lines = [f"### {title}", "", f"`{spec['name']}`: {unit}, by {spec['columns']}, over "
             f"{scope}.", ""]
    row_columns, order, body = pivot(rows, spec, axis_names)
    if not body:
        return "\n".join(lines + ["No finished cell has these rows yet.", ""])
    baselines = aggregate.random_init_rows(rows, axis_names) if "model" not in named else {}
    # Marks compare the entries of one column: the same layer (or budget...) across settings.
    marks = [aggregate.overlap_marks([entry[len(row_columns) + i] for entry in body])
             for i in range(len(order))]
    baselines_shown = False
    lines.append("| " + " | ".join([*row_columns, *(str(v) for v in order)]) + " |")
    lines.append("| " + " | ".join(["---"] * len(row_columns) + ["---:"] * len(order)) + " |")
    for r, entry in enumerate(body):
        keys, cells = entry[:len(row_columns)], entry[len(row_columns):]
        texts = []
        for i, c in enumerate(cells):
            if c is None:
                texts.append("")
                continue
            text = format_value(c["value"], metric, c.get("bound"), aggregate.interval(c),
                                c.get("std"))
            mark = marks[i][r]
            if mark == aggregate.BEST_MARK:
                text = f"**{text}**"
            elif mark:
                text += f" {mark}"
            versus_init = aggregate.random_init_mark(c, baselines, axis_names)
            if versus_init:
                text += f" {versus_init}"
                baselines_shown = True
            texts.append(text)
        lines.append("| " + " | ".join([*("" if k is None else str(k) for k in keys),
                                        *texts]) + " |")
    legend = _legend(body, row_columns, metric, baselines_shown)
    return "\n".join(lines + ([""] + [legend] if legend else [])) + "\n"


def markdown_tables(rows: list[dict], tables: list[dict], axis_names) -> str:
    """Every pivot table of the grid, as markdown sections ("" when the grid has none)."""
    return "\n".join(markdown(rows, spec, axis_names) for spec in tables)


__all__ = ["markdown", "markdown_tables", "pivot"]
