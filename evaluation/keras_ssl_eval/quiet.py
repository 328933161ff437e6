"""Quiet start of the keras-ssl binaries: their own lines only, library logs on request.

Left alone, a binary prints TensorFlow's C++ start-up notices (oneDNN, CUDA
probing, `cpu_feature_guard`) before its first line, absl INFO lines of the
SavedModel writer, TFDS and Orbit next to its progress lines, and Python
deprecation warnings of the libraries. A binary prints its own progress
lines and results instead; `--verbosity=0` (or any `--verbosity`) shows
every library log again.

Two steps, because TensorFlow reads `TF_CPP_MIN_LOG_LEVEL` once, when it is
imported, before the binary has parsed its flags:

- in a process `started_as_binary` without `--verbosity`,
  `keras_ssl_eval`'s `__init__` (the first keras-ssl module every binary
  imports) sets `TF_CPP_MIN_LOG_LEVEL=3` unless the user set it (3 hides
  errors too: "failed call to cuInit" is logged as an error on every machine
  without a GPU) and calls `hide_library_warnings`;
- `quiet_library_logs`, from the binary's main once absl parsed the flags.

Imported as a library (a notebook, a test), nothing changes: TensorFlow and
absl keep their defaults.

This module lives in keras-ssl-eval, the distribution every other one
depends on, so the binaries of all three share it.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Sequence

# Console scripts are named `keras-ssl-*`.
_BINARY_PREFIX = "keras-ssl-"
# `python -m` runs of the same binaries (`python -m keras_ssl.cli.train`).
_BINARY_PACKAGES = ("keras_ssl.cli.", "keras_ssl_eval.cli.", "keras_ssl_methods.cli.")
# The spellings of absl's verbosity flag.
_VERBOSITY_FLAGS = ("--verbosity", "-verbosity", "--v", "-v")
# The logger of keras_ssl_eval's progress lines (features extracted, accuracies).
_EVAL_LOGGER = "keras_ssl_eval"
# TensorFlow's Python logger (`tf.get_logger()`).
_TENSORFLOW_LOGGER = "tensorflow"


def started_as_binary(argv: Sequence[str] | None = None,
                      orig_argv: Sequence[str] | None = None) -> bool:
    """Whether this process is a keras-ssl binary (console script or `python -m`).

    Args:
      argv: `sys.argv` (default: this process's).
      orig_argv: `sys.orig_argv`, the interpreter's own command line (default:
        this process's). Needed for `python -m`: while the packages above the
        binary's module are imported, `sys.argv[0]` is only `-m`.

    Returns:
      True for `keras-ssl-*` console scripts and `python -m` of a module of
      `keras_ssl.cli`, `keras_ssl_eval.cli` or `keras_ssl_methods.cli`.
    """
    argv = sys.argv if argv is None else argv
    orig_argv = getattr(sys, "orig_argv", []) if orig_argv is None else orig_argv
    if argv and os.path.basename(argv[0]).startswith(_BINARY_PREFIX):
        return True
    for flag, module in zip(orig_argv, orig_argv[1:]):
        if flag == "-m":
            return (module + ".").startswith(_BINARY_PACKAGES)
    return False


def verbosity_given(argv: Sequence[str] | None = None) -> bool:
    """Whether the command line sets absl's `--verbosity` (or `-v`), before flags are parsed.

    Args:
      argv: The command line (default: `sys.argv`).
    """
    argv = sys.argv if argv is None else argv
    for arg in argv[1:]:
        if arg == "--":
            break
        if arg.split("=", 1)[0] in _VERBOSITY_FLAGS:
            return True
    return False


def hide_library_warnings() -> None:
    """Hides the libraries' deprecation warnings (Python `warnings`).

    TFDS, Keras and protobuf raise them on import and on first use; they are
    for the libraries' developers, not for a user of a binary.
    """
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)


class _PlainFormatter(logging.Formatter):
    """The message alone, `warning: ` before a warning or worse."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            message = f"{record.levelname.lower()}: {message}"
        return message


def quiet_library_logs(verbosity_flag_present: bool) -> None:
    """Hides library INFO logs and prints keras_ssl_eval's progress as plain lines.

    Call it in the binary's main, after absl parsed the flags. With
    `--verbosity` given nothing changes: absl shows every log at that level,
    keras_ssl_eval's progress included, in its own format.

    Args:
      verbosity_flag_present: Whether `--verbosity` was on the command line
        (`flags.FLAGS["verbosity"].present`).
    """
    if verbosity_flag_present:
        return
    from absl import logging as absl_logging

    # The SavedModel writer, TFDS and Orbit's summaries log INFO through absl.
    absl_logging.set_verbosity(absl_logging.WARNING)
    # TensorFlow's deprecation notices are WARNINGs of its own logger (TFDS's
    # reader calls the deprecated `CounterV2` on every read of a split).
    logging.getLogger(_TENSORFLOW_LOGGER).setLevel(logging.ERROR)
    # TFDS draws progress bars over the binary's lines while it prepares or reads a split.
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    progress = logging.getLogger(_EVAL_LOGGER)
    if any(isinstance(h.formatter, _PlainFormatter) for h in progress.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PlainFormatter())
    progress.addHandler(handler)
    progress.setLevel(logging.INFO)
    # Not again through absl's handler on the root logger, in absl's format.
    progress.propagate = False
