"""``keras-ssl-eval``: evaluation of SavedModels, side by side.

Usage:
    keras-ssl-eval --saved_model=/models/rotation --saved_model=/models/exemplar \\
        --dataset=cifar10 --layers=block3,pre_logits --output=/tmp/eval
    keras-ssl-eval --protocol=grid,knn,lowshot --saved_model=... --dataset=... --output=...
    keras-ssl-eval --protocol=utility --scratch_model=/runs/x/export/step_0 ...
    keras-ssl-eval compare --results=/tmp/a/results.json,/tmp/b/results.json --output=/tmp/ab

Writes ``results.json``, ``results.md`` and plots to ``--output`` and prints
the markdown tables (rows = layers, columns = models). While it works it
prints one plain line per step on stderr (features extracted, probe
accuracies); ``--verbosity=0`` shows TensorFlow's and absl's logs as well.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags

from keras_ssl_eval import quiet
from keras_ssl_eval.extraction.cache import DEFAULT_CACHE_DIR
from keras_ssl_eval.protocols.evaluate import PROTOCOLS, evaluate
from keras_ssl_eval.reporting.compare import compare_reports, load_reports
from keras_ssl_eval.reporting.plots import write_plots
from keras_ssl_eval.reporting.report import markdown_report, write_report
from keras_ssl_eval.settings import (HEADS, POOLINGS, SOLVERS, UTILITY_TASKS, DataSettings,
                                     GridSettings, KnnSettings, LinearSettings, LowShotSettings,
                                     UtilitySettings)

__all__ = ["main", "run"]

_log = logging.getLogger("keras_ssl_eval")
_GB = 2**30


def _strings(values):
    return [f"{v:g}" if isinstance(v, float) else str(v) for v in values]


# Every flag's default is read from the settings dataclasses (keras_ssl_eval.settings).
_SAVED_MODEL = flags.DEFINE_multi_string(
    "saved_model", None, "SavedModel directory following the keras-ssl contract. "
    "Repeat the flag to evaluate several models side by side.")
_DATASET = flags.DEFINE_string(
    "dataset", None, "TFDS name (e.g. cifar10, synthetic_shapes/TCVL) or "
    "folder:/path/to/images (one sub-folder per class).")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", DataSettings.data_dir, "TFDS data directory (TFDS default if unset).")
_TRAIN_SPLIT = flags.DEFINE_string(
    "train_split", DataSettings.train_split, "Split the probe is trained on.")
_TEST_SPLIT = flags.DEFINE_string(
    "test_split", DataSettings.test_split, "Split the probe is tested on.")
_LAYERS = flags.DEFINE_list(
    "layers", DataSettings.layers, "Comma-separated end-points, e.g. block2,block3,pre_logits "
    "(default: all end-points of each model).")
_OUTPUT = flags.DEFINE_string(
    "output", None, "Directory for results.json and results.md.")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", DataSettings.batch_size, "Images per forward pass.", lower_bound=1)
_MAX_TRAIN_EXAMPLES = flags.DEFINE_integer(
    "max_train_examples", DataSettings.max_train_examples,
    "Use this many training images (a seeded random subset; for TFDS the first ones "
    "after a seeded shuffle of the shards).", lower_bound=1)
_MAX_TEST_EXAMPLES = flags.DEFINE_integer(
    "max_test_examples", DataSettings.max_test_examples,
    "The same as --max_train_examples for the test split.", lower_bound=1)
_L2_GRID = flags.DEFINE_list(
    "l2_grid", _strings(LinearSettings.l2_grid),
    "L2 strengths the probe chooses from by hold-out accuracy.")
_VALIDATION_FRACTION = flags.DEFINE_float(
    "validation_fraction", LinearSettings.validation_fraction,
    "Share of the training set the probe holds out to choose L2.", lower_bound=0,
    upper_bound=1)
_SEED = flags.DEFINE_integer(
    "seed", DataSettings.seed, "Seed of the subsets, the probe's hold-out split, the "
    "draws, the heads and fine-tuning.")
_PROTOCOL = flags.DEFINE_list(
    "protocol", ["linear"], f"Protocols: any of {', '.join(PROTOCOLS)}, or "
    "all (utility only with --scratch_model).")
_CACHE_DIR = flags.DEFINE_string(
    "cache_dir", DEFAULT_CACHE_DIR, "Feature cache directory; empty "
    "disables the cache.")
_CACHE_MAX_GB = flags.DEFINE_float(
    "cache_max_gb", DataSettings.cache_max_bytes / _GB, "Size bound of the feature cache "
    "in GB (2^30 bytes): least recently used entries are deleted past it; 0 = "
    "unbounded.", lower_bound=0)
_POOLING = flags.DEFINE_enum(
    "pooling", DataSettings.pooling, list(POOLINGS), "Pooling of feature maps: "
    "Kolesnikov adaptive max, or VISSL's fixed pools (ResNet-50 224 px; "
    "other maps fall back to adaptive).")
_PROGRESS = flags.DEFINE_bool(
    "progress", True, "Show a progress bar while extracting.")
_PLOTS = flags.DEFINE_bool(
    "plots", True, "Write PNG plots next to the results.")
_HEADS = flags.DEFINE_list(
    "heads", list(GridSettings.heads), f"grid: heads, any of {', '.join(HEADS)}.")
_SOLVER = flags.DEFINE_enum(
    "solver", GridSettings.solver, list(SOLVERS), "grid: solver of the linear head "
    "(fast = Newton-CG to the optimum, sgd = the paper's schedule).")
_EPOCHS = flags.DEFINE_integer(
    "epochs", GridSettings.epochs, "grid: SGD epochs (lr x0.1 at 30/70 and 50/70).",
    lower_bound=1)
_SGD_BATCH_SIZE = flags.DEFINE_integer(
    "sgd_batch_size", GridSettings.sgd_batch_size, "grid: SGD batch size.", lower_bound=1)
_MLP_HIDDEN = flags.DEFINE_integer(
    "mlp_hidden", GridSettings.mlp_hidden, "grid: MLP hidden width.", lower_bound=1)
_KNN_K = flags.DEFINE_integer(
    "knn_k", KnnSettings.k, "knn: neighbours.", lower_bound=1)
_KNN_TEMPERATURE = flags.DEFINE_float(
    "knn_temperature", KnnSettings.temperature, "knn: vote temperature.")
_SHOTS = flags.DEFINE_list(
    "shots", _strings(LowShotSettings.shots), "lowshot: examples per class.")
_DRAWS = flags.DEFINE_integer(
    "draws", LowShotSettings.draws, "lowshot: seeded draws per k.", lower_bound=1)
_SCRATCH_MODEL = flags.DEFINE_string(
    "scratch_model", UtilitySettings.scratch_model,
    "utility: step-0 export trained from scratch.")
_BUDGETS = flags.DEFINE_list(
    "budgets", _strings(UtilitySettings.budgets), "utility: label budgets n.")
_FINETUNE_STEPS = flags.DEFINE_integer(
    "finetune_steps", UtilitySettings.finetune_steps, "utility: steps per budget.",
    lower_bound=1)
_FINETUNE_BATCH_SIZE = flags.DEFINE_integer(
    "finetune_batch_size", UtilitySettings.finetune_batch_size, "utility: batch size.",
    lower_bound=1)
_FINETUNE_LEARNING_RATE = flags.DEFINE_float(
    "finetune_learning_rate", UtilitySettings.finetune_learning_rate,
    "utility: SGD learning rate.")
_UTILITY_TASK = flags.DEFINE_enum(
    "utility_task", UtilitySettings.task, list(UTILITY_TASKS),
    "utility: the fine-tuning task: classification (accuracy, linear head "
    "on the pre-logits) or segmentation (mean IoU, per-pixel linear head on "
    "--utility_layer; needs segmentation masks, e.g. synthetic_shapes).")
_UTILITY_LAYER = flags.DEFINE_string(
    "utility_layer", UtilitySettings.layer, "utility: end-point under the segmentation "
    "head (default: the deepest at least 1/4 of the input size).")
_RESULTS = flags.DEFINE_list(
    "results", None, "compare: results.json files to put side by side.")


def _ints(values, name):
    try:
        return [int(v) for v in values]
    except ValueError as e:
        raise app.UsageError(f"--{name} must be integers: {e}") from e


def _settings() -> dict:
    """The settings objects of `evaluate`, from the flags."""
    try:
        l2_grid = [float(v) for v in _L2_GRID.value]
    except ValueError as e:
        raise app.UsageError(f"--l2_grid must be numbers: {e}") from e
    return dict(
        data=DataSettings(
            data_dir=_DATA_DIR.value, train_split=_TRAIN_SPLIT.value,
            test_split=_TEST_SPLIT.value, layers=_LAYERS.value, batch_size=_BATCH_SIZE.value,
            max_train_examples=_MAX_TRAIN_EXAMPLES.value,
            max_test_examples=_MAX_TEST_EXAMPLES.value, seed=_SEED.value,
            pooling=_POOLING.value, cache_dir=_CACHE_DIR.value,
            cache_max_bytes=int(_CACHE_MAX_GB.value * _GB) if _CACHE_MAX_GB.value else None),
        linear=LinearSettings(l2_grid=l2_grid, validation_fraction=_VALIDATION_FRACTION.value),
        grid=GridSettings(heads=_HEADS.value, solver=_SOLVER.value, epochs=_EPOCHS.value,
                          sgd_batch_size=_SGD_BATCH_SIZE.value, mlp_hidden=_MLP_HIDDEN.value),
        knn=KnnSettings(k=_KNN_K.value, temperature=_KNN_TEMPERATURE.value),
        lowshot=LowShotSettings(shots=_ints(_SHOTS.value, "shots"), draws=_DRAWS.value),
        utility=UtilitySettings(
            scratch_model=_SCRATCH_MODEL.value, budgets=_ints(_BUDGETS.value, "budgets"),
            finetune_steps=_FINETUNE_STEPS.value,
            finetune_batch_size=_FINETUNE_BATCH_SIZE.value,
            finetune_learning_rate=_FINETUNE_LEARNING_RATE.value, task=_UTILITY_TASK.value,
            layer=_UTILITY_LAYER.value))


def main(argv):
    """Runs the evaluation described by the parsed flags; see the module docstring.

    Writes the report to ``--output`` and prints its markdown table. Returns
    nothing, since `absl.app.run` turns a return value into the exit status.

    Args:
        argv: Positional arguments left by absl: the program name, then nothing
            or ``compare``.
    """
    command = argv[1:]
    if command not in ([], ["compare"]):
        raise app.UsageError(f"Unexpected arguments: {argv[1:]} (the only command is "
                             f"'compare').")
    if command == ["compare"]:
        if not _RESULTS.value or not _OUTPUT.value:
            raise app.UsageError("compare needs --results=a.json,b.json and --output=DIR.")
        report = compare_reports(load_reports(_RESULTS.value), sources=_RESULTS.value)
    else:
        missing = [holder.name for holder in (_SAVED_MODEL, _DATASET, _OUTPUT)
                   if not holder.value]
        if missing:
            raise app.UsageError("Missing flag(s): " + ", ".join(f"--{n}" for n in missing))
        report = evaluate(_SAVED_MODEL.value, _DATASET.value, protocols=_PROTOCOL.value,
                          progress=_PROGRESS.value, **_settings())
    json_path, md_path = write_report(report, _OUTPUT.value)
    written = [json_path, md_path]
    if _PLOTS.value:
        written += write_plots(report, _OUTPUT.value)
    print(markdown_report(report), end="")
    _log.info("wrote %s", ", ".join(written))


# What `main` raises for the user's inputs: a SavedModel or dataset that is not
# there (OSError), an end-point the model lacks (KeyError), a dataset unfit for
# the protocol (ValueError). The binary reports them in one line, as
# keras_ssl.cli_errors does for the training binaries (not imported: evaluation
# never imports keras_ssl).
_USER_ERRORS = (OSError, KeyError, ValueError)


def _main_reporting_user_errors(argv):
    """`main` started quietly, with a user error printed as one line and exit status 1."""
    quiet.quiet_library_logs(flags.FLAGS["verbosity"].present)
    try:
        main(argv)
    except _USER_ERRORS as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        sys.exit("keras-ssl-eval: " + " ".join(str(message).split()))


def run():
    """Console-script entry point of ``keras-ssl-eval``."""
    app.run(_main_reporting_user_errors)


if __name__ == "__main__":
    run()
