"""Ordering of names that carry numbers (private)."""

from __future__ import annotations

import re


def natural_sort_key(name: str) -> list:
    """Sort key that orders the numbers in `name` by value: `block2` before `block10`."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
