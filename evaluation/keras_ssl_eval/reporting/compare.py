"""Putting the results of several runs side by side.

`compare_reports` merges ``results.json`` files (each from one or several
models) into one report whose models are the union, in order; names are made
unique (``#2``). Runs on different datasets or protocol settings can be
merged, with a warning, since their numbers are then not comparable. Reports
written before test counts and intervals existed get them from their own test
split's size (`keras_ssl_eval.reporting.report.add_missing_intervals`), so every
accuracy of the merged report has its interval, and their results move to the
current layout (`keras_ssl_eval.reporting.report.upgrade_report`: the linear
probe's from ``layers`` to ``linear``).
"""

from __future__ import annotations

import json
import logging

from keras_ssl_eval.reporting.report import add_missing_intervals, build_report, upgrade_report

__all__ = ["compare_reports", "load_reports"]

_log = logging.getLogger(__name__)


def load_reports(paths) -> list[dict]:
    """Reads ``results.json`` files.

    Args:
        paths: File paths.

    Returns:
        The report dicts, in order.
    """
    reports = []
    for path in paths:
        with open(path) as f:
            reports.append(json.load(f))
    return reports


def compare_reports(reports, sources=None) -> dict:
    """Merges reports into one with all their models side by side.

    Args:
        reports: Report dicts (from `keras_ssl_eval.protocols.evaluate.evaluate`).
        sources: Optional names of where each came from (recorded in settings).

    Returns:
        A report: the first report's dataset and settings, plus
        ``settings["compared"]`` listing each source with its protocol and
        settings; models concatenated.

    Raises:
        ValueError: No reports.
    """
    reports = [add_missing_intervals(upgrade_report(report)) for report in reports]
    if not reports:
        raise ValueError("Pass at least one results.json to compare.")
    sources = list(sources or [f"#{i}" for i in range(len(reports))])
    datasets = {r.get("dataset", {}).get("name") for r in reports}
    if len(datasets) > 1:
        _log.warning("Comparing results on different datasets %s: the numbers are not "
                     "comparable.", sorted(map(str, datasets)))
    protocol_settings = [{k: v for k, v in r.get("settings", {}).items()
                          if k not in ("layers",)} for r in reports]
    if any(s != protocol_settings[0] for s in protocol_settings[1:]):
        _log.warning("The runs used different settings; see settings.compared in the report.")
    models = [{k: v for k, v in m.items() if k != "name"} | {"metadata": m.get("metadata") or
                                                              {"name": m["name"]}}
              for r in reports for m in r.get("models", [])]
    settings = dict(reports[0].get("settings", {}))
    settings["compared"] = [{"source": src, "protocol": r.get("protocol"),
                             "settings": r.get("settings")} for src, r in zip(sources, reports)]
    merged = build_report(models, settings=settings, dataset=reports[0].get("dataset", {}))
    protocols = []
    for r in reports:
        for p in str(r.get("protocol", "")).split("+"):
            if p and p not in protocols:
                protocols.append(p)
    merged["protocol"] = "+".join(protocols)
    return merged
