"""``keras-ssl-eval``: evaluation of SavedModels, side by side.

Usage:
    keras-ssl-eval --saved_model=/models/rotation --saved_model=/models/exemplar \\
        --dataset=cifar10 --layers=block3,pre_logits --output=/tmp/eval
    keras-ssl-eval --protocol=grid,knn,lowshot --saved_model=... --dataset=... --output=...
    keras-ssl-eval --protocol=utility --scratch_model=/runs/x/export/step_0 ...
    keras-ssl-eval compare --results=/tmp/a/results.json,/tmp/b/results.json --output=/tmp/ab

Writes ``results.json``, ``results.md`` and plots to ``--output`` and prints
the markdown tables (rows = layers, columns = models).
"""

from __future__ import annotations

import logging as python_logging
import sys

from absl import app, flags, logging

from keras_ssl_eval.cache import DEFAULT_CACHE_DIR
from keras_ssl_eval.compare import compare_reports, load_reports
from keras_ssl_eval.evaluate import PROTOCOLS, evaluate
from keras_ssl_eval.linear import DEFAULT_L2_GRID
from keras_ssl_eval.lowshot import DEFAULT_SHOTS
from keras_ssl_eval.plots import write_plots
from keras_ssl_eval.report import markdown_report, write_report

__all__ = ["define_flags", "main", "run"]


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the binary's flags in `flag_values` (once).

    Flags are defined here rather than at import, so importing this module next
    to another binary's flags (e.g. keras-ssl's ``--data_dir``) never clashes.

    Args:
        flag_values: Where to define them; tests pass a fresh `flags.FlagValues`.

    Example:
        >>> fv = flags.FlagValues(); define_flags(fv)
        >>> fv(["keras-ssl-eval", "--saved_model=/m", "--dataset=cifar10", "--output=/o"])
    """
    if "saved_model" in flag_values:
        return
    fv = flag_values
    flags.DEFINE_multi_string(
        "saved_model", None, "SavedModel directory following the keras-ssl contract. "
        "Repeat the flag to evaluate several models side by side.", flag_values=fv)
    flags.DEFINE_string(
        "dataset", None, "TFDS name (e.g. cifar10, synthetic_shapes/TCVL) or "
        "folder:/path/to/images (one sub-folder per class).", flag_values=fv)
    flags.DEFINE_string("data_dir", None, "TFDS data directory (TFDS default if unset).",
                        flag_values=fv)
    flags.DEFINE_string("train_split", "train", "Split the probe is trained on.", flag_values=fv)
    flags.DEFINE_string("test_split", "test", "Split the probe is tested on.", flag_values=fv)
    flags.DEFINE_list(
        "layers", None, "Comma-separated end-points, e.g. block2,block3,pre_logits "
        "(default: all end-points of each model).", flag_values=fv)
    flags.DEFINE_string("output", None, "Directory for results.json and results.md.",
                        flag_values=fv)
    flags.DEFINE_integer("batch_size", 64, "Images per forward pass.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer(
        "max_train_examples", None,
        "Use this many training images (a seeded random subset; for TFDS the first ones "
        "after a seeded shuffle of the shards).", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer(
        "max_test_examples", None, "The same as --max_train_examples for the test split.",
        lower_bound=1, flag_values=fv)
    flags.DEFINE_list(
        "l2_grid", [f"{v:g}" for v in DEFAULT_L2_GRID],
        "L2 strengths the probe chooses from by hold-out accuracy.", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Seed of the subsets and the probe's hold-out split.",
                         flag_values=fv)
    flags.DEFINE_list("protocol", ["linear"], f"Protocols: any of {', '.join(PROTOCOLS)}, or "
                      "all (utility only with --scratch_model).", flag_values=fv)
    flags.DEFINE_string("cache_dir", DEFAULT_CACHE_DIR, "Feature cache directory; empty "
                        "disables the cache.", flag_values=fv)
    flags.DEFINE_float("cache_max_gb", 10.0, "Size bound of the feature cache in GB (2^30 "
                       "bytes): least recently used entries are deleted past it; 0 = "
                       "unbounded.", lower_bound=0, flag_values=fv)
    flags.DEFINE_enum("pooling", "adaptive", ["adaptive", "vissl"], "Pooling of feature maps: "
                      "Kolesnikov adaptive max, or VISSL's fixed pools (ResNet-50 224 px; "
                      "other maps fall back to adaptive).", flag_values=fv)
    flags.DEFINE_bool("progress", True, "Show a progress bar while extracting.", flag_values=fv)
    flags.DEFINE_bool("plots", True, "Write PNG plots next to the results.", flag_values=fv)
    flags.DEFINE_list("heads", ["linear", "mlp"], "grid: heads.", flag_values=fv)
    flags.DEFINE_enum("solver", "fast", ["fast", "sgd"], "grid: solver of the linear head "
                      "(fast = Newton-CG to the optimum, sgd = the paper's schedule).",
                      flag_values=fv)
    flags.DEFINE_integer("epochs", 70, "grid: SGD epochs (lr x0.1 at 30/70 and 50/70).",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("sgd_batch_size", 256, "grid: SGD batch size.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("mlp_hidden", 1000, "grid: MLP hidden width.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("knn_k", 200, "knn: neighbours.", lower_bound=1, flag_values=fv)
    flags.DEFINE_float("knn_temperature", 0.1, "knn: vote temperature.", flag_values=fv)
    flags.DEFINE_list("shots", [str(k) for k in DEFAULT_SHOTS], "lowshot: examples per class.",
                      flag_values=fv)
    flags.DEFINE_integer("draws", 5, "lowshot: seeded draws per k.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_string("scratch_model", None, "utility: step-0 export trained from scratch.",
                        flag_values=fv)
    flags.DEFINE_list("budgets", ["10", "100", "1000"], "utility: label budgets n.",
                      flag_values=fv)
    flags.DEFINE_integer("finetune_steps", 100, "utility: steps per budget.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("finetune_batch_size", 32, "utility: batch size.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_float("finetune_learning_rate", 0.01, "utility: SGD learning rate.",
                       flag_values=fv)
    flags.DEFINE_enum("utility_task", "classification", ["classification", "segmentation"],
                      "utility: the fine-tuning task: classification (accuracy, linear head "
                      "on the pre-logits) or segmentation (mean IoU, per-pixel linear head on "
                      "--utility_layer; needs segmentation masks, e.g. synthetic_shapes).",
                      flag_values=fv)
    flags.DEFINE_string("utility_layer", None, "utility: end-point under the segmentation "
                        "head (default: the deepest at least 1/4 of the input size).",
                        flag_values=fv)
    flags.DEFINE_list("results", None, "compare: results.json files to put side by side.",
                      flag_values=fv)


def _ints(values, name):
    try:
        return [int(v) for v in values]
    except ValueError as e:
        raise app.UsageError(f"--{name} must be integers: {e}") from e


def main(argv, flag_values: flags.FlagValues = flags.FLAGS):
    """Runs the evaluation described by the (parsed) flags; see the module docstring.

    Args:
        argv: Positional arguments left by absl (only the program name is allowed).
        flag_values: The parsed flags.

    Writes the report to ``--output`` and prints its markdown table. Returns
    nothing, since `absl.app.run` turns a return value into the exit status.
    """
    fv = flag_values
    command = argv[1:]
    if command not in ([], ["compare"]):
        raise app.UsageError(f"Unexpected arguments: {argv[1:]} (the only command is "
                             f"'compare').")
    if "verbosity" in fv and not fv["verbosity"].present:
        # TensorFlow's INFO logs drown the evaluation's own progress lines,
        # which stay visible; --verbosity=0 shows everything.
        logging.set_verbosity(logging.WARNING)
        python_logging.getLogger("keras_ssl_eval").setLevel(python_logging.INFO)
    if command == ["compare"]:
        if not fv.results or not fv.output:
            raise app.UsageError("compare needs --results=a.json,b.json and --output=DIR.")
        report = compare_reports(load_reports(fv.results), sources=fv.results)
    else:
        missing = [n for n in ("saved_model", "dataset", "output") if not fv[n].value]
        if missing:
            raise app.UsageError("Missing flag(s): " + ", ".join(f"--{n}" for n in missing))
        try:
            l2_grid = [float(v) for v in fv.l2_grid]
        except ValueError as e:
            raise app.UsageError(f"--l2_grid must be numbers: {e}") from e
        report = evaluate(
            fv.saved_model, fv.dataset, protocols=fv.protocol, data_dir=fv.data_dir,
            train_split=fv.train_split, test_split=fv.test_split, layers=fv.layers,
            batch_size=fv.batch_size, max_train_examples=fv.max_train_examples,
            max_test_examples=fv.max_test_examples, l2_grid=l2_grid, seed=fv.seed,
            pooling=fv.pooling, cache_dir=fv.cache_dir,
            cache_max_bytes=int(fv.cache_max_gb * 2**30) if fv.cache_max_gb else None,
            progress=fv.progress, heads=fv.heads,
            solver=fv.solver, epochs=fv.epochs, sgd_batch_size=fv.sgd_batch_size,
            mlp_hidden=fv.mlp_hidden, knn_k=fv.knn_k, knn_temperature=fv.knn_temperature,
            shots=_ints(fv.shots, "shots"), draws=fv.draws, scratch_model=fv.scratch_model,
            budgets=_ints(fv.budgets, "budgets"), finetune_steps=fv.finetune_steps,
            finetune_batch_size=fv.finetune_batch_size,
            finetune_learning_rate=fv.finetune_learning_rate, utility_task=fv.utility_task,
            utility_layer=fv.utility_layer)
    json_path, md_path = write_report(report, fv.output)
    logging.info("Wrote %s and %s.", json_path, md_path)
    if fv.plots:
        for path in write_plots(report, fv.output):
            logging.info("Wrote %s.", path)
    print(markdown_report(report), end="")


# What `main` raises for the user's inputs: a SavedModel or dataset that is not
# there (OSError), an end-point the model lacks (KeyError), a dataset unfit for
# the protocol (ValueError). The binary reports them in one line, as
# keras_ssl.cli_errors does for the training binaries (not imported: evaluation
# never imports keras_ssl).
_USER_ERRORS = (OSError, KeyError, ValueError)


def _main_reporting_user_errors(argv):
    """`main`, with a user error printed as one line and exit status 1 (no traceback)."""
    try:
        main(argv)
    except _USER_ERRORS as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        sys.exit("keras-ssl-eval: " + " ".join(str(message).split()))


def run():
    """Console-script entry point of ``keras-ssl-eval``."""
    define_flags()
    app.run(_main_reporting_user_errors)


if __name__ == "__main__":
    run()
