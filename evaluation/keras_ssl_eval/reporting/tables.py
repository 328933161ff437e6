"""The pieces of the reports' markdown tables, shared by every protocol's table.

An accuracy reads ``50.8 [46.4, 55.2]`` (%, its 95% Wilson interval) and a
table's caption gives the test count (`count_note`), or each cell its ``n=``
when the cells were measured on different counts.
"""

from __future__ import annotations

__all__ = ["count_note", "escape", "format_accuracy", "interval_text", "table", "union"]


def format_accuracy(entry: dict | None, key: str = "test_accuracy",
                    with_count: bool = False) -> str:
    """An accuracy of a result dict in %, with its 95% interval: ``50.8 [46.4, 55.2]``.

    Args:
        entry: A result dict (``test_accuracy`` or `key`, and ``ci95``,
            ``test_count`` where the report has them); None prints ``-``.
        key: The accuracy's key (``mean`` for low-shot).
        with_count: Append ``n=<test_count>`` (for tables whose cells were
            measured on different test sets).

    Example:
        >>> format_accuracy({"test_accuracy": 0.508, "test_count": 500,
        ...                  "ci95": [0.4643, 0.5516]})
        '50.8 [46.4, 55.2]'
    """
    if entry is None or entry.get(key) is None:
        return "-"
    return f"{100 * entry[key]:.1f}" + interval_text(entry, with_count)


def interval_text(entry: dict, with_count: bool) -> str:
    """`` [46.4, 55.2]`` (and `` n=500``) of a result dict; "" without an interval."""
    text = ""
    if entry.get("ci95"):
        low, high = entry["ci95"]
        text += f" [{100 * low:.1f}, {100 * high:.1f}]"
    if with_count and entry.get("test_count"):
        text += f" n={entry['test_count']}"
    return text


def count_note(entries) -> tuple[str, bool]:
    """``(caption text, whether each cell needs its own n)`` for the entries' test counts."""
    counts = {e.get("test_count") for e in entries if e and e.get("test_count")}
    if not counts:
        return "", False
    if len(counts) == 1:
        return (f"; {counts.pop()} test images, 95% Wilson interval in brackets"), False
    return "; 95% Wilson interval in brackets, n = test images", True


def table(caption: str, header, rows, text_columns: int = 1) -> str:
    """A captioned markdown table; the first `text_columns` columns left-aligned, the rest right."""
    lines = [caption, "", "| " + " | ".join(escape(h) for h in header) + " |",
             "|" + " --- |" * text_columns + " ---: |" * (len(header) - text_columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def union(items, keys_of) -> list:
    """The keys of all `items` (``keys_of(item)``), each once, in the order they first come."""
    keys = []
    for item in items:
        keys.extend(k for k in keys_of(item) if k not in keys)
    return keys


def escape(text) -> str:
    """`text` safe inside a markdown table cell."""
    return str(text).replace("|", "\\|")
