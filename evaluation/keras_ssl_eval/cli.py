"""``keras-ssl-eval``: linear evaluation of SavedModels, side by side.

Usage:
    keras-ssl-eval --saved_model=/models/rotation --saved_model=/models/exemplar \\
        --dataset=cifar10 --layers=block3,pre_logits --output=/tmp/eval

Writes ``results.json`` and ``results.md`` to ``--output`` and prints the
markdown table (rows = layers, columns = models).
"""

from __future__ import annotations

import logging as python_logging

from absl import app, flags, logging

from keras_ssl_eval.evaluate import evaluate_linear
from keras_ssl_eval.linear import DEFAULT_L2_GRID
from keras_ssl_eval.report import markdown_table, write_report

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
    flags.mark_flags_as_required(["saved_model", "dataset", "output"], flag_values=fv)


def main(argv, flag_values: flags.FlagValues = flags.FLAGS):
    """Runs the evaluation described by the (parsed) flags; see the module docstring.

    Args:
        argv: Positional arguments left by absl (only the program name is allowed).
        flag_values: The parsed flags.

    Writes the report to ``--output`` and prints its markdown table. Returns
    nothing, since `absl.app.run` turns a return value into the exit status.
    """
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    fv = flag_values
    if "verbosity" in fv and not fv["verbosity"].present:
        # TensorFlow's INFO logs drown the evaluation's own progress lines,
        # which stay visible; --verbosity=0 shows everything.
        logging.set_verbosity(logging.WARNING)
        python_logging.getLogger("keras_ssl_eval").setLevel(python_logging.INFO)
    try:
        l2_grid = [float(v) for v in fv.l2_grid]
    except ValueError as e:
        raise app.UsageError(f"--l2_grid must be numbers: {e}") from e
    report = evaluate_linear(
        fv.saved_model, fv.dataset, data_dir=fv.data_dir, train_split=fv.train_split,
        test_split=fv.test_split, layers=fv.layers, batch_size=fv.batch_size,
        max_train_examples=fv.max_train_examples, max_test_examples=fv.max_test_examples,
        l2_grid=l2_grid, seed=fv.seed)
    json_path, md_path = write_report(report, fv.output)
    logging.info("Wrote %s and %s.", json_path, md_path)
    print(markdown_table(report), end="")


def run():
    """Console-script entry point of ``keras-ssl-eval``."""
    define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
