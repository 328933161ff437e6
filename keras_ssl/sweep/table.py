"""The sweep's results table: one row per cell x model x layer x protocol (x labels).

Columns: `cell`, `status`, one column per grid axis, then `ROW_COLUMNS`:

- `model`: `step_0` (the random initialisation) or `final`; `step` its step;
- `layer`: the end-point;
- `protocol`: `linear`, `grid_linear`, `grid_mlp`, `knn`, `lowshot_svm`,
  `lowshot_linear` or `utility`;
- `labels`: low-shot: labelled examples per class k; utility: the label
  budget n; empty otherwise;
- `metric` and `value`: `test_accuracy` (a fraction; the low-shot mean over
  draws), or for utility `utility` (U(n)), `finetuned_accuracy` and
  `scratch_accuracy`;
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
               "value", "bound", "reason")
# keras_ssl_eval.utility's flags of a clipped n_hat, as bounds on U(n).
_UTILITY_BOUNDS = {"above_scratch": "lower", "below_scratch": "upper"}
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"


def model_rows(role: str, step: int, results: dict) -> list[dict]:
    """Rows of one evaluated model (an entry of a keras_ssl_eval report's `models`).

    Args:
      role: `step_0` or `final`.
      step: The model's training step.
      results: The report entry (`layers`, `grid`, `knn`, `lowshot`, `utility`).

    Returns:
      Dicts with the keys `model`, `step`, `layer`, `protocol`, `labels`,
      `metric`, `value`, `bound`.
    """
    rows = []

    def add(layer, protocol, value, labels="", metric="test_accuracy", bound=""):
        rows.append(dict(model=role, step=step, layer=layer, protocol=protocol, labels=labels,
                         metric=metric, value=value, bound=bound))

    for layer, result in results.get("layers", {}).items():
        add(layer, "linear", result["test_accuracy"])
    for layer, heads in results.get("grid", {}).items():
        for head, result in heads.items():
            add(layer, f"grid_{head}", result["test_accuracy"])
    for layer, result in results.get("knn", {}).items():
        add(layer, "knn", result["test_accuracy"])
    for layer, heads in results.get("lowshot", {}).items():
        for head, by_k in heads.items():
            if head == "skipped":
                continue
            for k in sorted(by_k, key=int):
                add(layer, f"lowshot_{head}", by_k[k]["mean"], labels=int(k))
    utility = results.get("utility")
    if utility:
        layer = utility.get("layer") or "pre_logits"
        for row in utility["curve"]:
            add(layer, "utility", row["utility"], labels=row["n"], metric="utility",
                bound=_UTILITY_BOUNDS.get(row.get("flag"), ""))
            add(layer, "utility", row["finetuned_accuracy"], labels=row["n"],
                metric="finetuned_accuracy")
        for n, accuracy in zip(utility["budgets"], utility["scratch_accuracy"]):
            add(layer, "utility", accuracy, labels=n, metric="scratch_accuracy")
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


def format_value(value, metric, bound: str = "") -> str:
    """A metric for a markdown table: accuracies in %, U(n) as a ratio, "" when missing.

    A `lower` bound reads `>= 0.000`, an `upper` one `<= 0.500`.
    """
    if value is None or value == "":
        return ""
    # Accuracies in percent as everywhere else in the reports; utility as a ratio.
    text = f"{value:.3f}" if metric == "utility" else f"{100 * value:.1f}"
    return {"lower": ">= ", "upper": "<= "}.get(bound or "", "") + text


def _format(column, value, metric):
    if column == "value" and isinstance(value, (int, float)):
        return format_value(value, metric)  # the bound has its own column here
    return "" if value is None else str(value).replace("|", "\\|")


def markdown(rows: list[dict], axis_names, title: str = "", preamble: str = "") -> str:
    """The rows as a markdown table (accuracies in %, U(n) as a ratio).

    Args:
      rows: The results table.
      axis_names: The grid's axes.
      title: The `##` heading.
      preamble: Markdown between the heading and the table (the pivot
        tables); the long table then gets an `### All rows` heading.
    """
    columns = [c for c in _columns(axis_names) if c != "cell"]
    lines = [f"## {title}", ""] if title else []
    if preamble:
        lines += [preamble, "### All rows", ""]
    lines += ["| " + " | ".join(columns) + " |",
              "| " + " | ".join("---:" if c == "value" else "---" for c in columns) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(_format(c, row.get(c), row.get("metric"))
                                       for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_tables(rows: list[dict], axis_names, output_dir: str, title: str = "",
                 preamble: str = "") -> list[str]:
    """Writes `results.csv` and `results.md` (`preamble` first) into `output_dir`; returns their paths."""
    md_path = os.path.join(output_dir, RESULTS_MD)
    with open(md_path, "w") as f:
        f.write(markdown(rows, axis_names, title, preamble))
    return [write_csv(rows, axis_names, os.path.join(output_dir, RESULTS_CSV)), md_path]
