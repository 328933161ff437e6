"""One cell of a sweep, run in its own process: train, export step 0 and the end, evaluate.

    python -m keras_ssl.sweep.cell CELL_DIR

`CELL_DIR/cell.json` (written by the runner) holds the cell's gin files,
bindings and evaluation settings. The run lives in `CELL_DIR/model`; training
resumes from its latest checkpoint, so a killed cell continues where it
stopped, and exports already written are reused. The results go to
`CELL_DIR/results.json`, written last and atomically: its presence means the
cell is finished.

Exit status: 0 done; 1 with a one-line reason on stderr (a non-finite loss,
a configuration the run refuses); 143 when SIGTERM stopped training after a
checkpoint (not a failure: the next sweep resumes it); anything else is a
crash, whose traceback ends the log.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback

CELL_FILE = "cell.json"
RESULTS_FILE = "results.json"
FAILED_FILE = "failed.json"
LOG_FILE = "log.txt"
MODEL_DIR = "model"
# Protocols that evaluate features of both exports; utility fine-tunes the
# final export against the step-0 export as its from-scratch baseline.
_UTILITY = "utility"


def write_json_atomically(path: str, document: dict) -> None:
    """Writes `document` to `path` through a temporary file and a rename."""
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w") as f:
        json.dump(document, f, indent=1, default=_jsonable)
    os.replace(temporary, path)


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _export(model_dir: str, step: int) -> str:
    from keras_ssl.export import export_checkpoint
    from keras_ssl.run_dir import default_export_dir

    path = default_export_dir(model_dir, step)
    if not os.path.isdir(path):
        export_checkpoint(model_dir, step)
    else:
        print(f"export of step {step} already in {path}", flush=True)
    return path


def _model_results(entry: dict) -> dict:
    """A report's model entry without the gin config (the cell's cell.json has it)."""
    metadata = {k: v for k, v in (entry.get("metadata") or {}).items() if k != "gin_config"}
    return {**entry, "metadata": metadata}


def evaluation_arguments(evaluation: dict):
    """A grid's flat `evaluation:` mapping as `evaluate`'s arguments; the one place that maps it.

    Args:
      evaluation: `{key: value}`: `dataset`, `protocols` and the flat names of
        `keras_ssl_eval.settings.EvaluationSettings` (the binary's flag names:
        `layers`, `max_train_examples`, `knn_k`, `budgets`, ...).

    Returns:
      `(dataset, protocols, settings)`: `dataset` (None when not given), the
      protocols as a list (`all` spelt out), and the `EvaluationSettings`.

    Raises:
      keras_ssl_eval.settings.UnknownSettingError: A key that is no setting.
      ValueError: A value the settings refuse.
    """
    from keras_ssl_eval.protocols.base import protocol_names
    from keras_ssl_eval.settings import EvaluationSettings

    flat = dict(evaluation)
    dataset = flat.pop("dataset", None)
    protocols = flat.pop("protocols", ["linear"])
    protocols = [protocols] if isinstance(protocols, str) else list(protocols)
    if "all" in protocols:
        protocols = list(protocol_names())
    return dataset, protocols, EvaluationSettings.from_flat(flat)


def evaluate_exports(initial: str, final: str, evaluation: dict) -> tuple[dict, dict, dict]:
    """Evaluates the step-0 and final exports with the cell's protocols.

    Args:
      initial, final: The two SavedModel directories.
      evaluation: The cell's flat evaluation mapping, with `dataset` (see
        `evaluation_arguments`).

    Returns:
      `(step-0 results, final results, evaluation settings)`: the report
      entries of the two models and the report's `settings`.
    """
    import dataclasses

    from keras_ssl_eval.protocols.evaluate import evaluate

    dataset, protocols, settings = evaluation_arguments(evaluation)
    on_features = [p for p in protocols if p != _UTILITY]
    results = [{}, {}]
    report_settings = {}
    if on_features:
        print(f"evaluating {', '.join(on_features)} on {dataset}", flush=True)
        report = evaluate([initial, final], dataset, protocols=on_features,
                          **settings.sections())
        results = [_model_results(entry) for entry in report["models"]]
        report_settings = report["settings"]
    if _UTILITY in protocols:
        print(f"evaluating utility on {dataset} (scratch baseline: the step-0 export)", flush=True)
        utility = dataclasses.replace(settings.utility, scratch_model=initial)
        report = evaluate([final], dataset, protocols=[_UTILITY],
                          **settings.replace(utility=utility).sections())
        results[1]["utility"] = report["models"][0]["utility"]
        report_settings = {**report["settings"], **report_settings,
                           "utility": report["settings"]["utility"]}
    return results[0], results[1], report_settings


def run_cell(cell_dir: str) -> dict:
    """Trains, exports and evaluates the cell in `cell_dir`; writes and returns its results.

    Args:
      cell_dir: A directory holding the runner's `cell.json`.

    Returns:
      The results document (also written to `cell_dir/results.json`).
    """
    from keras_ssl import config, training
    from keras_ssl.run_dir import latest_step

    with open(os.path.join(cell_dir, CELL_FILE)) as f:
        spec = json.load(f)
    start = time.time()
    model_dir = os.path.join(cell_dir, MODEL_DIR)
    print(f"cell {spec['name']}: training in {model_dir}", flush=True)
    config.parse_gin(spec["gin_files"], spec["bindings"])
    metrics = training.train(model_dir)
    train_seconds = time.time() - start
    step = latest_step(model_dir)
    final = _export(model_dir, step)
    initial = _export(model_dir, 0)
    initial_results, final_results, settings = evaluate_exports(initial, final,
                                                                spec["evaluation"])
    results = {
        "cell": spec["name"], "labels": spec["labels"], "status": "ok",
        "gin_files": spec["gin_files"], "bindings": spec["bindings"],
        "train": {"steps": step, "seconds": round(train_seconds, 1), "last_loop": metrics},
        "evaluation": settings,
        "models": [
            {"role": "step_0", "step": 0, "path": initial, "results": initial_results},
            {"role": "final", "step": step, "path": final, "results": final_results},
        ],
        "seconds": round(time.time() - start, 1),
    }
    write_json_atomically(os.path.join(cell_dir, RESULTS_FILE), results)
    print(f"cell {spec['name']}: finished in {results['seconds']:.0f} s", flush=True)
    return results


def stop_when_orphaned(interval: float = 5.0) -> None:
    """SIGTERMs this process once its parent (the sweep runner) is gone.

    Cells run in their own session so Ctrl-C reaches the runner only; a runner
    killed outright would leave them training on. With this, an orphaned cell
    checkpoints and exits like a preempted run, and the next sweep resumes it
    instead of racing a leftover process for the same run directory.
    """
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stop_when_orphaned", daemon=True).start()


def main(argv=None) -> int:
    """Runs the cell named on the command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m keras_ssl.sweep.cell CELL_DIR", file=sys.stderr)
        return 2
    stop_when_orphaned()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    from keras_ssl import training
    from keras_ssl.cli_errors import USER_ERRORS, one_line

    try:
        run_cell(argv[0])
    except training.Preempted as e:
        print(f"keras-ssl-sweep cell: {e}", file=sys.stderr, flush=True)
        return training.PREEMPTED_EXIT_CODE
    except USER_ERRORS + (training.NonFiniteLossError, training.TrainingConfigError) as e:
        print(f"keras-ssl-sweep cell: {one_line(e)}", file=sys.stderr, flush=True)
        return 1
    except ValueError as e:
        # Evaluation settings the protocols refuse arrive as ValueError; the
        # traceback stays in the log, the reason is the last line.
        traceback.print_exc()
        print(f"keras-ssl-sweep cell: {one_line(e)}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
