"""Reporting: the report of an evaluation, its markdown tables, its plots, and merged reports.

- `report`: `build_report`, `results.json` and `results.md` (each protocol's
  table from the protocol registry, `keras_ssl_eval.protocols.base`).
- `tables`: the pieces of those tables (an accuracy with its interval, captions).
- `plots`: the PNG plots of a report, and `save_figure`, which keras_ssl's sweep plots use too.
- `compare`: several reports side by side.
"""
