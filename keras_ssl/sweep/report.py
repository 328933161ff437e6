"""The sweep's outputs over all cells: the results table (CSV, markdown), its pivots and the plots.

With a `seed` axis, `summary.csv` adds the results aggregated over seeds (mean,
std, n, 95% interval: `keras_ssl.sweep.aggregate`).

`write_outputs` reads the cells' records; `python -m keras_ssl.sweep.report
--grid=GRID --csv=results.csv --output=DIR [--test_count=N]` regenerates the
tables and plots from a stored `results.csv` alone (the docs/results/ studies
keep only that), giving accuracies from before the intervals existed their
test count and Wilson interval.
"""

from __future__ import annotations

import os

import argparse
import csv

from keras_ssl.sweep import aggregate, pivot, table
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


SUMMARY_CSV = "summary.csv"
SUMMARY_COLUMNS = ("model", "step", "layer", "protocol", "labels", "metric", "value", "std", "n",
                   "seeds", "test_count", "ci95_low", "ci95_high", "bound")


def write_summary(rows: list[dict], axis_names, path: str) -> str:
    """Writes the finished results aggregated over seeds as CSV; returns `path`.

    One row per setting (the axes but `seed`) and result: `value` is the mean
    over the seeds, `std` their sample standard deviation (empty for one
    seed), `n` their number, `seeds` their labels, `ci95_low`/`ci95_high` the
    interval of `keras_ssl_eval.statistics.seed_summary`.
    """
    columns = [a for a in axis_names if a != aggregate.SEED_AXIS] + list(SUMMARY_COLUMNS)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in aggregate.summary_rows(rows, axis_names):
            row = {**row, "seeds": " ".join(str(s) for s in row["seeds"])}
            writer.writerow({c: "" if row.get(c) is None else row[c] for c in columns})
    return path


def write_from_rows(grid, rows: list[dict], output_dir: str) -> list[str]:
    """Writes `results.csv`, `results.md`, `summary.csv` (with a seed axis) and the plots.

    Args:
      grid: The `keras_ssl.sweep.grid.Grid`.
      rows: The results table.
      output_dir: Where they go.

    Returns:
      The paths written.
    """
    os.makedirs(output_dir, exist_ok=True)
    axis_names = grid.axis_names()
    title = f"Sweep {os.path.basename(grid.path)}"
    written = table.write_tables(rows, axis_names, output_dir, title=title,
                                 preamble=pivot.markdown_tables(rows, grid.tables, axis_names))
    if aggregate.SEED_AXIS in axis_names:
        written.append(write_summary(rows, axis_names, os.path.join(output_dir, SUMMARY_CSV)))
    drawn = plots_lib.write_plots(rows, grid.plots, axis_names, output_dir)
    written.extend(path for path in drawn.values() if path)
    return written


def write_outputs(grid, plans, output_dir: str) -> list[str]:
    """Writes `results.csv`, `results.md` (the grid's pivot tables, then every row),
    `summary.csv` (with a seed axis) and the grid's plots; returns the paths written.

    Args:
      grid: The `keras_ssl.sweep.grid.Grid`.
      plans: Its `CellPlan`s.
      output_dir: The sweep's output directory.
    """
    return write_from_rows(grid, collect_rows(plans, output_dir), output_dir)


def main(argv=None) -> None:
    """Regenerates a sweep's tables and plots from its grid and a stored `results.csv`."""
    from keras_ssl.sweep.grid import load_grid

    parser = argparse.ArgumentParser(
        prog="python -m keras_ssl.sweep.report",
        description="Regenerates a sweep's results.md, plots and summary from its grid file "
                    "and a stored results.csv (no cell runs).")
    parser.add_argument("--grid", required=True, help="the grid file the sweep ran")
    parser.add_argument("--csv", required=True, help="its results.csv")
    parser.add_argument("--output", required=True, help="directory for the outputs")
    parser.add_argument("--test_count", type=int, default=None,
                        help="test examples behind each accuracy of a results.csv written "
                             "before the interval columns (min of the test split and "
                             "max_test_examples)")
    args = parser.parse_args(argv)
    rows = table.read_csv(args.csv)
    if args.test_count:
        table.fill_intervals(rows, args.test_count)
    for path in write_from_rows(load_grid(args.grid), rows, args.output):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
