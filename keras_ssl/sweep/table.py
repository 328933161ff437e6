"""The sweep's results table: one row per cell x model x layer x protocol (x labels).

Columns: `cell`, `status`, one column per grid axis, then `ROW_COLUMNS`:

- `model`: `step_0` (the random initialisation) or `final`; `step` its step;
- `layer`: the end-point;
- `protocol`: `linear`, `grid_linear`, `grid_mlp`, `knn`, `lowshot_svm`,
  `lowshot_linear`, `utility`, or what another registered protocol names
  (each protocol's `rows`, `keras_ssl_eval.protocols.base`);
- `labels`: low-shot: labelled examples per class k; utility: the label
  budget n; empty otherwise;
- `metric` and `value`: `test_accuracy` (a fraction; the low-shot mean over
  draws), or for utility `utility` (U(n)), `finetuned_accuracy` and
  `scratch_accuracy`;
- `test_count`, `ci95_low`, `ci95_high`: the test examples behind an accuracy
  and its 95% Wilson interval (empty for U(n), for segmentation's mean IoU and
  for results evaluated before keras-ssl-eval reported them);
- `bound`: for a utility clipped at the ends of the scratch curve, `lower`
  (the fine-tuned model beat every scratch budget: U(n) is at least the
  value) or `upper` (it was below the smallest budget's scratch accuracy);
- `reason`: why a cell failed (its last error line).

A failed cell has one row (status `failed`), a cell not run yet one row
(status `pending`).
"""

from __future__ import annotations

import csv
import os

ROW_COLUMNS = ("cell", "status", "model", "step", "layer", "protocol", "labels", "metric",
               "value", "test_count", "ci95_low", "ci95_high", "bound", "reason")
# Shown inside the value's cell in markdown, not as columns of their own.
_INTERVAL_COLUMNS = ("ci95_low", "ci95_high")
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"


def model_rows(role: str, step: int, results: dict) -> list[dict]:
    """Rows of one evaluated model (an entry of a keras_ssl_eval report's `models`).

    Each registered evaluation protocol makes the rows of its own results
    (`keras_ssl_eval.protocols.base.Protocol.rows`), in registry order; results
    stored before the protocols had one layout (the linear probe's under
    `layers`) are read too.

    Args:
      role: `step_0` or `final`.
      step: The model's training step.
      results: The report entry (`linear`, `grid`, `knn`, `lowshot`, `utility`, ...).

    Returns:
      Dicts with the keys `model`, `step`, `layer`, `protocol`, `labels`,
      `metric`, `value`, `test_count`, `ci95_low`, `ci95_high`, `bound`.
    """
    from keras_ssl_eval.protocols.base import registered

    rows = []
    for protocol in registered().values():
        found = protocol.results(results)
        if found:
            rows += [dict(model=role, step=step, **row) for row in protocol.rows(found)]
    return rows


def cell_rows(cell_name: str, labels: dict, record: dict | None) -> list[dict]:
    """All rows of one cell from its record (`results.json`, `failed.json` or None).

    Args:
      cell_name: The cell's directory name.
      labels: `{axis: label}` of the cell.
      record: The cell's results or failure record; None if not run yet.
    """
    base = {"cell": cell_name, **labels}
    if record is None:
        return [{**base, "status": "pending"}]
    if record.get("status") != "ok":
        return [{**base, "status": record.get("status", "failed"),
                 "reason": record.get("reason", "")}]
    rows = []
    for model in record["models"]:
        for row in model_rows(model["role"], model["step"], model["results"]):
            rows.append({**base, "status": "ok", **row})
    return rows


def _columns(axis_names) -> list[str]:
    return ["cell", "status", *axis_names, *ROW_COLUMNS[2:]]


def write_csv(rows: list[dict], axis_names, path: str) -> str:
    """Writes `rows` as CSV (values as full-precision numbers); returns `path`."""
    columns = _columns(axis_names)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row.get(c, "") for c in columns})
    return path


def format_value(value, metric, bound: str = "", interval=None, std=None) -> str:
    """A metric for a markdown table: accuracies in %, U(n) as a ratio, "" when missing.

    A `lower` bound reads `>= 0.000`, an `upper` one `<= 0.500`; a standard
    deviation over seeds follows as `± 1.2`, a 95% interval as `[42.4, 48.6]`.

    Example:
      >>> format_value(0.455, "test_accuracy", interval=[0.424, 0.486])
      '45.5 [42.4, 48.6]'
    """
    if value is None or value == "":
        return ""
    # Accuracies in percent as everywhere else in the reports; utility as a ratio.
    def number(v):
        return f"{v:.3f}" if metric == "utility" else f"{100 * v:.1f}"
    text = {"lower": ">= ", "upper": "<= "}.get(bound or "", "") + number(value)
    if std is not None:
        text += f" ± {number(std)}"
    if interval is not None:
        text += f" [{number(interval[0])}, {number(interval[1])}]"
    return text


def row_interval(row: dict):
    """`[ci95_low, ci95_high]` of a row, or None."""
    low, high = row.get("ci95_low"), row.get("ci95_high")
    return None if low in (None, "") or high in (None, "") else [float(low), float(high)]


def _format(column, row):
    value = row.get(column)
    if column == "value" and isinstance(value, (int, float)):
        # The bound has its own column here.
        return format_value(value, row.get("metric"), interval=row_interval(row))
    return "" if value is None else str(value).replace("|", "\\|")


def markdown(rows: list[dict], axis_names, title: str = "", preamble: str = "") -> str:
    """The rows as a markdown table (accuracies in %, U(n) as a ratio, intervals in brackets).

    Args:
      rows: The results table.
      axis_names: The grid's axes.
      title: The `##` heading.
      preamble: Markdown between the heading and the table (the pivot
        tables); the long table then gets an `### All rows` heading.
    """
    columns = [c for c in _columns(axis_names) if c != "cell" and c not in _INTERVAL_COLUMNS]
    lines = [f"## {title}", ""] if title else []
    if preamble:
        lines += [preamble, "### All rows", ""]
    lines += ["| " + " | ".join(columns) + " |",
              "| " + " | ".join("---:" if c == "value" else "---" for c in columns) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(_format(c, row) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_tables(rows: list[dict], axis_names, output_dir: str, title: str = "",
                 preamble: str = "") -> list[str]:
    """Writes `results.csv` and `results.md` (`preamble` first) into `output_dir`; returns their paths."""
    md_path = os.path.join(output_dir, RESULTS_MD)
    with open(md_path, "w") as f:
        f.write(markdown(rows, axis_names, title, preamble))
    return [write_csv(rows, axis_names, os.path.join(output_dir, RESULTS_CSV)), md_path]


def _typed(text: str):
    """A CSV cell as the number it spells (int before float), else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_csv(path: str) -> list[dict]:
    """Reads a `results.csv` back into table rows (numbers as numbers, blanks as None).

    Args:
      path: A sweep's `results.csv`, this version's or an earlier one without
        the interval columns.
    """
    with open(path, newline="") as f:
        return [{column: None if text == "" else (text if column in ("cell", "status", "reason",
                                                                       "bound", "model",
                                                                       "metric")
                                                  else _typed(text))
                 for column, text in row.items()}
                for row in csv.DictReader(f)]


_ACCURACY_METRICS = ("test_accuracy", "finetuned_accuracy", "scratch_accuracy")


def fill_intervals(rows: list[dict], test_count: int) -> list[dict]:
    """Gives accuracy rows without an interval their test count and Wilson interval.

    For tables from before the intervals existed, whose accuracies were all
    measured on `test_count` test examples (the evaluation's test split, or its
    `max_test_examples` when smaller). Rows that have an interval, and U(n)
    rows, are kept as they are.

    Args:
      rows: Table rows; changed in place.
      test_count: The test examples behind every accuracy.

    Returns:
      `rows`.

    Raises:
      ValueError: An accuracy that is no whole number of `test_count`
        examples (a sign that `test_count` is wrong).
    """
    from keras_ssl_eval.statistics import accuracy_interval

    for row in rows:
        if (row.get("status") != "ok" or row.get("metric") not in _ACCURACY_METRICS
                or row.get("ci95_low") not in (None, "")):
            continue
        correct = row["value"] * test_count
        if abs(correct - round(correct)) > 1e-6 * test_count:
            raise ValueError(f"{row.get('cell')}: accuracy {row['value']} is no whole number "
                             f"of {test_count} test examples; pass the test count the cell "
                             f"was evaluated on.")
        fields = accuracy_interval(round(correct) / test_count, test_count)
        row.update(test_count=test_count, ci95_low=fields["ci95"][0],
                   ci95_high=fields["ci95"][1])
    return rows
