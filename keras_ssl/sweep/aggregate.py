"""Seeds and intervals in a sweep's outputs: rows that differ only by seed, as one.

A grid's `seeds: [0, 1, 2]` (or an axis named `seed`) repeats every cell once per
training seed. The tables and plots then show, per setting, the mean over the
seeds with its standard deviation, the number of seeds and a 95% interval
(`keras_ssl_eval.statistics.seed_summary`: the seeds' spread, Student t, and
the test set's sampling noise, Wilson, added in quadrature). A single run's
accuracy gets its Wilson interval alone.

Comparisons: `overlap_marks` marks, within one column of a pivot table, the
best entry and the entries whose interval overlaps the best one's (not shown
to differ from it), and `random_init_mark` compares an entry with the step-0
entry (the same network at random initialisation, `random_init_rows`): an
overlap means no gain is shown, an interval wholly below means training made
the layer worse for the probe. docs/sweep.md explains the
marks and their limits.
"""

from __future__ import annotations

from keras_ssl_eval.statistics import intervals_overlap, seed_summary

from keras_ssl.sweep.grid import SEED_AXIS
# The columns that identify a result apart from the grid's axes.
RESULT_KEY = ("model", "step", "layer", "protocol", "labels", "metric")
# Marks in pivot tables (docs/sweep.md).
BEST_MARK, NEAR_BEST_MARK, RANDOM_INIT_MARK, BELOW_RANDOM_INIT_MARK = "**", "≈", "†", "↓"


def interval(row: dict) -> list[float] | None:
    """`[low, high]` of a table row, or None when it has no interval."""
    low, high = row.get("ci95_low"), row.get("ci95_high")
    if low in (None, "") or high in (None, ""):
        return None
    return [float(low), float(high)]


def _combined_bound(rows) -> str:
    # The mean of values of which some are lower bounds is a lower bound; mixed kinds: neither.
    kinds = {row.get("bound") or "" for row in rows} - {""}
    return kinds.pop() if len(kinds) == 1 else ""


def summarise(rows: list[dict]) -> dict:
    """One row standing for `rows`, the same result of the same setting over seeds.

    Args:
      rows: Results-table rows that differ only by seed (one row: a single run).

    Returns:
      A copy of the first row with `value` the mean, `std` (None for one
      seed), `n` (seeds), `seeds` (their labels), `test_count`, `ci95_low`,
      `ci95_high` (`seed_summary`; a single run keeps its own interval) and
      `bound` (a lower or upper bound when the seeds' bounds are all of one
      kind); `seed` and `cell` are left out when there are several seeds.
    """
    first = rows[0]
    if len(rows) == 1:
        return {**first, "std": None, "n": 1, "seeds": [first.get(SEED_AXIS)]}
    counts = {row.get("test_count") or None for row in rows}
    test_count = counts.pop() if len(counts) == 1 else None
    summary = seed_summary([row["value"] for row in rows], test_count=test_count)
    low, high = summary["ci95"] or (None, None)
    merged = {k: v for k, v in first.items() if k not in ("cell", SEED_AXIS)}
    merged.update(value=summary["mean"], std=summary["std"], n=summary["n"],
                  seeds=[row.get(SEED_AXIS) for row in rows], test_count=test_count,
                  ci95_low=low, ci95_high=high, bound=_combined_bound(rows))
    return merged


def group(rows: list[dict], columns) -> list[dict]:
    """`summarise` of each group of `rows` that agree on `columns`, in first-seen order."""
    groups = {}
    for row in rows:
        groups.setdefault(tuple(str(row.get(c)) for c in columns), []).append(row)
    return [summarise(members) for members in groups.values()]


def summary_rows(rows: list[dict], axis_names) -> list[dict]:
    """The finished rows aggregated over seeds: one row per setting and result.

    Args:
      rows: The results table.
      axis_names: The grid's axes (the seed axis among them).
    """
    key = [a for a in axis_names if a != SEED_AXIS] + list(RESULT_KEY)
    return group([row for row in rows if row.get("status") == "ok"], key)


def random_init_rows(rows: list[dict], axis_names) -> dict:
    """`{setting: summarised step-0 row}`, the random-initialisation baselines.

    The key is `baseline_key` of a row: its axes but the seed, layer, protocol,
    labels and metric.
    """
    initial = [row for row in rows if row.get("status") == "ok" and row.get("model") == "step_0"]
    return {baseline_key(row, axis_names): row
            for row in group(initial, [a for a in axis_names if a != SEED_AXIS]
                             + ["layer", "protocol", "labels", "metric"])}


def baseline_key(row: dict, axis_names) -> tuple:
    """The key of `random_init_rows` that a (final-export) row is compared with."""
    return tuple(str(row.get(c)) for c in [a for a in axis_names if a != SEED_AXIS]
                 + ["layer", "protocol", "labels", "metric"])


def overlap_marks(entries: list[dict | None]) -> list[str]:
    """Marks of the entries of one pivot column: `**` the best, `≈` overlapping it, else "".

    The best is the largest value; an entry whose interval overlaps the best
    one's is not shown to be worse. With fewer than two entries with
    intervals nothing is marked.

    Args:
      entries: Summarised rows (None for a blank cell).
    """
    scored = [e for e in entries if e is not None and interval(e) is not None]
    marks = ["" for _ in entries]
    if len(scored) < 2:
        return marks
    best = max(scored, key=lambda e: e["value"])
    for i, entry in enumerate(entries):
        if entry is best:
            marks[i] = BEST_MARK
        elif entry is not None and interval(entry) is not None and intervals_overlap(
                interval(entry), interval(best)):
            marks[i] = NEAR_BEST_MARK
    return marks


def random_init_mark(entry: dict, baselines: dict, axis_names) -> str:
    """The mark of a final-export entry against its step-0 baseline.

    Returns:
      `†` when the two intervals overlap (no difference shown), `↓` when the
      entry's lies wholly below the baseline's (worse than random
      initialisation), "" when it lies above or there is nothing to compare.
    """
    if entry.get("model") != "final":
        return ""
    baseline = baselines.get(baseline_key(entry, axis_names))
    if baseline is None or interval(entry) is None or interval(baseline) is None:
        return ""
    if intervals_overlap(interval(entry), interval(baseline)):
        return RANDOM_INIT_MARK
    return BELOW_RANDOM_INIT_MARK if interval(entry)[1] < interval(baseline)[0] else ""


__all__ = ["BELOW_RANDOM_INIT_MARK", "BEST_MARK", "NEAR_BEST_MARK", "RANDOM_INIT_MARK",
           "RESULT_KEY", "SEED_AXIS", "baseline_key", "group", "interval", "overlap_marks",
           "random_init_mark", "random_init_rows", "summarise", "summary_rows"]
