"""Running a sweep's cells as processes: resume, parallelism, failures, progress.

Layout of the output directory::

    grid.yaml                 a copy of the grid file
    .lock                     held by the running sweep (its pid)
    cells/<cell>/cell.json    what the cell runs (gin files, bindings, evaluation)
    cells/<cell>/log.txt      the cell process's output
    cells/<cell>/model/       its run directory (checkpoints, exports)
    cells/<cell>/results.json written last: the cell is finished
    cells/<cell>/failed.json  the cell failed: exit status and reason
    results.csv, results.md   the table (keras_ssl.sweep.table)
    summary.csv               with a seed axis: the results over seeds (keras_ssl.sweep.aggregate)
    plots/*.png               the grid's plots (keras_ssl.sweep.plots)

Each cell runs as `python -m keras_ssl.sweep.cell CELL_DIR` in its own session,
so a crash, an out-of-memory kill or a NaN takes down that cell only, and
several cells can run at once.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

from keras_ssl.sweep.cell import CELL_FILE, FAILED_FILE, LOG_FILE, RESULTS_FILE, write_json_atomically
from keras_ssl.sweep.checks import CellPlan
from keras_ssl.sweep.grid import GridError

CELLS_DIR = "cells"
LOCK_FILE = ".lock"
GRID_COPY = "grid.yaml"
# Exit status of a cell stopped by SIGTERM after writing a checkpoint.
_PREEMPTED = 143
# How the cell process starts its one-line reasons (keras_ssl.sweep.cell.main).
_CELL_ERROR_PREFIX = "keras-ssl-sweep cell: "
# How long running cells get to checkpoint after SIGTERM before they are killed.
_STOP_GRACE_SECONDS = 120


def cell_dir(output_dir: str, name: str) -> str:
    """The directory of cell `name` in the sweep's `output_dir`."""
    return os.path.join(output_dir, CELLS_DIR, name)


def read_record(output_dir: str, name: str) -> dict | None:
    """The cell's `results.json`, else its `failed.json`, else None (not run or unfinished)."""
    for file in (RESULTS_FILE, FAILED_FILE):
        path = os.path.join(cell_dir(output_dir, name), file)
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
    return None


def last_error_line(log_path: str) -> str:
    """The last non-empty line of a cell's log (its one-line reason or the exception)."""
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    lines = [line.strip() for line in lines if line.strip()]
    return lines[-1] if lines else ""


def _last_progress(log_path: str) -> str:
    """The cell's latest training progress line, shortened (for the status display)."""
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if line.startswith("step "):
            return line.split(" | ")[0]
        if line.startswith("exported"):
            return line.split(" to ")[0]
        if line.startswith("evaluating"):
            return line
    return "starting"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def prepare_datasets(plans: list[CellPlan], print_fn=print) -> None:
    """Generates or downloads every dataset the cells train or evaluate on, one at a time.

    Parallel cells would otherwise generate the same dataset at once into one
    data_dir; and a dataset that cannot be prepared (ImageNet without its
    manual files) is refused before any cell runs.

    Raises:
      FileNotFoundError: A dataset is unknown or cannot be prepared; the
        message says how to prepare it.
    """
    from keras_ssl.datasets import prepare_dataset

    needed = []
    for plan in plans:
        for name, data_dir in ((plan.dataset, plan.data_dir),
                               (plan.evaluation["dataset"], plan.evaluation.get("data_dir"))):
            if (name, data_dir) not in needed:
                needed.append((name, data_dir))
    for name, data_dir in needed:
        print_fn(f"preparing dataset {name}" + (f" in {data_dir}" if data_dir else ""))
        prepare_dataset(name, data_dir)


@dataclasses.dataclass
class _Running:
    plan: CellPlan
    process: subprocess.Popen
    started: float
    log: object


class SweepRunner:
    """Runs the cells of a checked grid that are not finished yet.

    Args:
      plans: Every cell of the grid (`keras_ssl.sweep.checks.plan_cells`).
      output_dir: The sweep's output directory.
      parallel: Cells running at once, each its own process.
      retry_failed: Run cells that failed before again (default: keep their
        failure record; a NaN run fails the same way again).
      status_interval: Seconds between status lines of the running cells.
      worker_command: The command that runs one cell, given its directory
        (default `python -m keras_ssl.sweep.cell`); tests substitute stubs.
      print_fn: Where progress lines go.
    """

    def __init__(self, plans: list[CellPlan], output_dir: str, *, parallel: int = 1,
                 retry_failed: bool = False, status_interval: float = 60.0,
                 worker_command=None, print_fn=print):
        if parallel < 1:
            raise ValueError(f"--parallel must be >= 1, got {parallel}.")
        self.plans = plans
        self.output_dir = output_dir
        self.parallel = parallel
        self.retry_failed = retry_failed
        self.status_interval = status_interval
        self.worker_command = list(worker_command or [sys.executable, "-m",
                                                      "keras_ssl.sweep.cell"])
        self._print = print_fn
        self._stop = False

    def pending(self) -> list[CellPlan]:
        """Cells to run: no results yet (and no failure record, unless retrying)."""
        todo = []
        for plan in self.plans:
            record = read_record(self.output_dir, plan.cell.name)
            if record is None or (self.retry_failed and record.get("status") != "ok"):
                todo.append(plan)
        return todo

    def lock(self) -> None:
        """Holds `OUTPUT/.lock` for this process's lifetime: one sweep per output directory.

        Raises:
          GridError: Another sweep holds it.
        """
        import fcntl

        os.makedirs(self.output_dir, exist_ok=True)
        self._lock_file = open(os.path.join(self.output_dir, LOCK_FILE), "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            holder = self._lock_file.read().strip() or "unknown"
            self._lock_file.close()
            raise GridError(f"another keras-ssl-sweep (pid {holder}) is running in "
                            f"{self.output_dir}; wait for it, or stop it (its cells checkpoint "
                            f"and resume on the next run).") from None
        self._lock_file.truncate(0)
        self._lock_file.write(str(os.getpid()))
        self._lock_file.flush()

    def unlock(self) -> None:
        """Releases the output directory (after `run`)."""
        lock_file = getattr(self, "_lock_file", None)
        if lock_file is not None and not lock_file.closed:
            lock_file.close()

    def prepare(self, grid_path: str | None = None) -> list[CellPlan]:
        """Writes every cell's `cell.json`; refuses a cell set up before with other settings.

        Returns:
          The cells to run.

        Raises:
          GridError: Another sweep runs in the output directory, or a cell
            directory holds a run of different bindings, gin files or
            evaluation settings.
        """
        self.lock()
        os.makedirs(os.path.join(self.output_dir, CELLS_DIR), exist_ok=True)
        if grid_path:
            shutil.copyfile(grid_path, os.path.join(self.output_dir, GRID_COPY))
        for plan in self.plans:
            directory = cell_dir(self.output_dir, plan.cell.name)
            path = os.path.join(directory, CELL_FILE)
            spec = plan.spec()
            if os.path.exists(path):
                with open(path) as f:
                    before = json.load(f)
                changed = [key for key in ("gin_files", "bindings", "evaluation")
                           if before.get(key) != json.loads(json.dumps(spec[key]))]
                if changed:
                    raise GridError(
                        f"cell {plan.cell.name} in {self.output_dir} was run with other "
                        f"{' and '.join(changed)}; use another --output, or delete {directory} "
                        f"to rerun it with the grid's settings.")
                continue
            os.makedirs(directory, exist_ok=True)
            write_json_atomically(path, spec)
        return self.pending()

    def _start(self, plan: CellPlan) -> _Running:
        directory = cell_dir(self.output_dir, plan.cell.name)
        failed = os.path.join(directory, FAILED_FILE)
        if os.path.exists(failed):
            os.remove(failed)
        log = open(os.path.join(directory, LOG_FILE), "a")
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
                   PYTHONUNBUFFERED="1")
        # Its own session: Ctrl-C reaches the runner only, which stops cells cleanly.
        process = subprocess.Popen(self.worker_command + [directory], stdout=log,
                                   stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return _Running(plan, process, time.time(), log)

    def _record_failure(self, running: _Running, returncode: int) -> str:
        directory = cell_dir(self.output_dir, running.plan.cell.name)
        reason = last_error_line(os.path.join(directory, LOG_FILE)) or "no output"
        reason = reason.removeprefix(_CELL_ERROR_PREFIX)
        if returncode < 0:
            name = signal.Signals(-returncode).name
            reason = f"killed by {name} (out of memory?); last output: {reason}"
        write_json_atomically(os.path.join(directory, FAILED_FILE), {
            "cell": running.plan.cell.name, "labels": running.plan.cell.labels,
            "status": "failed", "exit_code": returncode, "reason": reason,
            "seconds": round(time.time() - running.started, 1),
            "log": os.path.join(directory, LOG_FILE)})
        return reason

    def _request_stop(self, signum=None, frame=None):
        del signum, frame
        self._stop = True

    def stop(self) -> None:
        """Asks `run` to stop: running cells checkpoint and exit, queued ones stay queued."""
        self._request_stop()

    def run(self) -> dict:
        """Runs the pending cells; returns counts `{ok, failed, interrupted, skipped}`."""
        todo = collections.deque(self.pending())
        total = len(self.plans)
        finished_before = total - len(todo)
        failed_before = sum(1 for p in self.plans
                            if (read_record(self.output_dir, p.cell.name) or {}).get("status")
                            == "failed" and p not in todo)
        counts = {"ok": 0, "failed": 0, "interrupted": 0, "skipped": finished_before}
        self._print(f"{total} cells: {finished_before} finished before "
                    f"({failed_before} of them failed), {len(todo)} to run, "
                    f"{self.parallel} at a time")
        durations, running = [], {}
        previous_handlers = {}
        if threading.current_thread() is threading.main_thread():
            # Python lets only the main thread set handlers; elsewhere the caller stops it.
            previous_handlers = {s: signal.signal(s, self._request_stop)
                                 for s in (signal.SIGINT, signal.SIGTERM)}
        last_status = time.time()
        try:
            while (todo or running) and not self._stop:
                while todo and len(running) < self.parallel and not self._stop:
                    plan = todo.popleft()
                    running[plan.cell.name] = self._start(plan)
                    self._print(self._line(counts, finished_before, todo, running, durations,
                                           f"started {plan.cell.name}"))
                time.sleep(0.2)
                for name, item in list(running.items()):
                    returncode = item.process.poll()
                    if returncode is None:
                        continue
                    item.log.close()
                    del running[name]
                    seconds = time.time() - item.started
                    if returncode == 0 and read_record(self.output_dir, name) is not None:
                        counts["ok"] += 1
                        durations.append(seconds)
                        event = f"finished {name} in {seconds:.0f} s"
                    elif returncode == _PREEMPTED:
                        counts["interrupted"] += 1
                        event = f"stopped {name} after a checkpoint; it resumes on the next run"
                    else:
                        counts["failed"] += 1
                        durations.append(seconds)
                        reason = self._record_failure(item, returncode)
                        event = f"FAILED {name} after {seconds:.0f} s: {reason}"
                    self._print(self._line(counts, finished_before, todo, running, durations,
                                           event))
                if running and time.time() - last_status >= self.status_interval:
                    last_status = time.time()
                    for name, item in running.items():
                        log = os.path.join(cell_dir(self.output_dir, name), LOG_FILE)
                        self._print(f"  {name}: {_last_progress(log)} "
                                    f"({time.time() - item.started:.0f} s)")
        finally:
            if running:
                self._stop_running(running, counts)
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            self.unlock()
        if self._stop:
            counts["interrupted"] += len(todo)
            self._print(f"interrupted: {counts['interrupted']} cells not finished; run the same "
                        f"command again to resume them")
        return counts

    def _stop_running(self, running: dict, counts: dict) -> None:
        """SIGTERM to every running cell (training checkpoints and exits), then SIGKILL."""
        for item in running.values():
            if item.process.poll() is None:
                item.process.send_signal(signal.SIGTERM)
        deadline = time.time() + _STOP_GRACE_SECONDS
        for name, item in running.items():
            try:
                item.process.wait(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                item.process.kill()
                item.process.wait()
            item.log.close()
            counts["interrupted"] += 1
            self._print(f"stopped {name}; it resumes from its last checkpoint on the next run")

    def _line(self, counts, finished_before, todo, running, durations, event) -> str:
        done = finished_before + counts["ok"] + counts["failed"]
        left = len(todo) + len(running)
        if durations and left:
            eta = _duration(sum(durations) / len(durations) * left / min(self.parallel, left))
        else:
            eta = "unknown" if left else "0:00:00"
        failed = counts["failed"]
        return (f"[{done}/{len(self.plans)} done, {failed} failed, {len(running)} running, "
                f"{len(todo)} queued, ETA {eta}] {event}")
