"""`keras-ssl-sweep`: runs a grid of training runs and evaluations, then tables and plots.

Example:

    keras-ssl-sweep --grid=gin_configs/experiments/kolesnikov_small.yaml \\
        --output=runs/kolesnikov_small --parallel=2

Before any cell runs, every binding of the grid is parsed with strict gin
parsing and the disk the cells need is estimated; a bad line or a grid that
does not fit is refused with one line. Then each unfinished cell runs as its
own process (docs/sweep.md): finished cells are skipped, a killed cell resumes
from its checkpoint, a failed one is recorded with its reason and the sweep
goes on. The exit status is 1 when a cell failed, after the table and plots
are written. The grid, the checks and the runner are `keras_ssl.sweep`.
"""

from __future__ import annotations

import sys
import time

from absl import flags

from keras_ssl.cli_errors import run_binary

_GRID = flags.DEFINE_string("grid", None, "Grid file (YAML, see docs/sweep.md).", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Output directory (created; reused to resume).",
                              required=True)
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Cells running at once, each its own process.")
_MAX_DISK_GB = flags.DEFINE_float("max_disk_gb", None,
                                  "Refuse the grid if its cells to run need more disk than this.")
_RETRY_FAILED = flags.DEFINE_boolean("retry_failed", False,
                                     "Run cells recorded as failed again.")
_DRY_RUN = flags.DEFINE_boolean("dry_run", False,
                                "Check the grid, list its cells and the disk estimate, run nothing.")
_STATUS_INTERVAL = flags.DEFINE_float("status_interval", 60.0,
                                      "Seconds between status lines of the running cells.")


def main(argv):
    """Checks the grid, runs its unfinished cells, writes the table and plots (absl main).

    Args:
      argv: Positional arguments left by absl (none are used).
    """
    del argv
    from keras_ssl.sweep import checks, grid as grid_lib, report, runner as runner_lib

    start = time.time()
    grid = grid_lib.load_grid(_GRID.value)
    print(f"checking {_GRID.value}: {len(grid.axes)} axes", flush=True)
    plans = checks.plan_cells(grid)
    runner = runner_lib.SweepRunner(
        plans, _OUTPUT.value, parallel=_PARALLEL.value, retry_failed=_RETRY_FAILED.value,
        status_interval=_STATUS_INTERVAL.value,
        print_fn=lambda line: print(line, flush=True))
    todo = runner.pending()
    needed = checks.check_disk(todo, _OUTPUT.value, _MAX_DISK_GB.value, _GRID.value)
    print(f"{len(plans)} cells, {len(todo)} to run; disk for them: about "
          f"{needed / 1e9:.2f} GB", flush=True)
    if not _DRY_RUN.value:
        # Refuses cells an earlier sweep in this output ran with other settings.
        todo = runner.prepare(_GRID.value)
        runner_lib.prepare_datasets(todo, print_fn=lambda line: print(line, flush=True))
    if _DRY_RUN.value:
        for plan in plans:
            state = "to run" if plan in todo else "finished"
            print(f"  {plan.cell.name}: {plan.backbone}, {plan.parameters / 1e6:.2f}M "
                  f"parameters, {plan.train_steps} steps, {plan.disk_bytes / 1e6:.0f} MB "
                  f"({state})", flush=True)
        return
    counts = runner.run()
    written = report.write_outputs(grid, plans, _OUTPUT.value)
    for path in written:
        print(f"wrote {path}", flush=True)
    failed = [p.cell.name for p in plans
              if (runner_lib.read_record(_OUTPUT.value, p.cell.name) or {}).get("status")
              == "failed"]
    print(f"sweep: this run finished {counts['ok']} cells, {counts['failed']} failed, "
          f"{counts['interrupted']} interrupted; {counts['skipped']} were done before; "
          f"{len(failed)} of {len(plans)} cells are recorded as failed "
          f"({time.time() - start:.0f} s)", flush=True)
    if counts["interrupted"]:
        sys.exit("keras-ssl-sweep: interrupted; rerun the same command to resume.")
    if failed:
        sys.exit(f"keras-ssl-sweep: {len(failed)} cells failed ({', '.join(failed[:5])}"
                 f"{', ...' if len(failed) > 5 else ''}); reasons in results.md and each "
                 f"cell's failed.json.")


def run():
    """Console-script entry point of `keras-ssl-sweep`."""
    from keras_ssl.sweep.grid import GridError

    run_binary("keras-ssl-sweep", main, extra_errors=(GridError,))


if __name__ == "__main__":
    run()
