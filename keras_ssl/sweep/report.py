"""The sweep's outputs over all cells: the results table (CSV, markdown), its pivots and the plots."""

from __future__ import annotations

import os

from keras_ssl.sweep import pivot, table
from keras_ssl.sweep import plots as plots_lib
from keras_ssl.sweep.runner import read_record


def collect_rows(plans, output_dir: str) -> list[dict]:
    """The table rows of every cell in grid order (pending and failed cells included).

    Args:
      plans: The grid's `CellPlan`s.
      output_dir: The sweep's output directory.
    """
    rows = []
    for plan in plans:
        record = read_record(output_dir, plan.cell.name)
        rows.extend(table.cell_rows(plan.cell.name, plan.cell.labels, record))
    return rows


def write_outputs(grid, plans, output_dir: str) -> list[str]:
    """Writes `results.csv`, `results.md` (the grid's pivot tables, then every row) and the
    grid's plots; returns the paths written.

    Args:
      grid: The `keras_ssl.sweep.grid.Grid`.
      plans: Its `CellPlan`s.
      output_dir: The sweep's output directory.
    """
    os.makedirs(output_dir, exist_ok=True)
    rows = collect_rows(plans, output_dir)
    axis_names = grid.axis_names()
    title = f"Sweep {os.path.basename(grid.path)}"
    written = table.write_tables(rows, axis_names, output_dir, title=title,
                                 preamble=pivot.markdown_tables(rows, grid.tables, axis_names))
    drawn = plots_lib.write_plots(rows, grid.plots, axis_names, output_dir)
    written.extend(path for path in drawn.values() if path)
    return written
