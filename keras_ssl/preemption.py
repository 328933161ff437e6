"""SIGTERM as cloud schedulers send it: checkpoint the current step, stop, resume later.

The training loop asks `PreemptionWatch.requested()` between loops; in a
multi-worker run the workers agree, so they all checkpoint the same step.
"""

from __future__ import annotations

import signal
import threading

from keras_ssl.distribute import sum_over_workers

# The exit status of a run stopped by SIGTERM: what a process killed by the
# signal reports, so a scheduler sees it as preempted, not finished.
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM


class Preempted(RuntimeError):
    """SIGTERM stopped the run after it wrote a checkpoint at `step`."""

    def __init__(self, step: int):
        super().__init__(
            f"preempted (SIGTERM): checkpoint written at step {step}; rerun the same "
            f"command to resume from it."
        )
        self.step = step


class PreemptionWatch:
    """SIGTERM sets a flag that the loop reads between loops, on every worker at once.

    In a multi-worker run the workers agree (a sum over replicas) so they all
    checkpoint the same step and stop together, even if the signal reached
    only some of them, or reached them during different loops.
    """

    def __init__(self, strategy):
        self._flag = False
        self._previous = None
        self._sum = sum_over_workers(strategy)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)
        return self

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _on_signal(self, signum, frame):
        del signum, frame
        self._flag = True

    def requested(self) -> bool:
        """Whether any worker got SIGTERM."""
        return self._sum(float(self._flag)) > 0.0
