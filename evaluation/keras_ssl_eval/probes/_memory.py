"""Memory checks made before large allocations.

A feature matrix that does not fit otherwise fails deep inside numpy or BLAS
(an opaque ``MemoryError``, or the kernel's OOM killer with no message at
all). The evaluation estimates what it is about to allocate and refuses
early, with the size and the way out.
"""

from __future__ import annotations

import os

__all__ = ["available_bytes", "check_memory", "format_bytes"]

# Leave room for the interpreter, TensorFlow and the temporaries not counted.
_USABLE_FRACTION = 0.9


def available_bytes() -> int | None:
    """Returns the memory the process can still allocate, or None if unknown.

    ``MemAvailable`` of /proc/meminfo (free memory plus reclaimable caches) on
    Linux, else the free physical pages from `os.sysconf`.
    """
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(num_bytes: float) -> str:
    """Returns a size as text, e.g. ``"1.8 GiB"``."""
    if num_bytes < 1024:
        return f"{int(num_bytes)} B"
    for unit in ("KiB", "MiB"):
        num_bytes /= 1024
        if num_bytes < 1024:
            return f"{num_bytes:.1f} {unit}"
    return f"{num_bytes / 1024:.1f} GiB"


def check_memory(needed: int, what: str, fix: str) -> None:
    """Raises `MemoryError` when `needed` bytes exceed the usable available memory.

    Args:
        needed: Bytes about to be allocated (an estimate of the peak).
        what: The computation and its sizes, e.g. ``"the linear probe on
            50000 x 9000 features"``.
        fix: What the user can do instead.

    Raises:
        MemoryError: With `what`, the sizes needed and available, and `fix`.
    """
    available = available_bytes()
    if available is None or needed <= _USABLE_FRACTION * available:
        return
    raise MemoryError(f"{what} needs about {format_bytes(needed)} of memory, but only "
                      f"{format_bytes(available)} is available. {fix}")
