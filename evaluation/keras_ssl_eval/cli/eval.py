"""``keras-ssl-eval``: evaluation of SavedModels, side by side.

Usage:
    keras-ssl-eval --saved_model=/models/rotation --saved_model=/models/exemplar \\
        --dataset=cifar10 --layers=block3,pre_logits --output=/tmp/eval
    keras-ssl-eval --protocol=grid,knn,lowshot --saved_model=... --dataset=... --output=...
    keras-ssl-eval --protocol=utility --scratch_model=/runs/x/export/step_0 ...
    keras-ssl-eval --model=/models/resnet.keras --model=/presets/resnet_18 ...
    keras-ssl-eval --model=/hub/simclr --endpoints=block4=block_group4,pre_logits=final_avg_pool ...
    keras-ssl-eval compare --results=/tmp/a/results.json,/tmp/b/results.json --output=/tmp/ab

Writes ``results.json``, ``results.md`` and plots to ``--output`` and prints
the markdown tables (rows = layers, columns = models). The flags of the
settings (``--layers``, ``--knn_k``, ``--shots``, ...) are made from the
settings dataclasses of `DataSettings` and every registered protocol
(`define_setting_flags`: a field's flat name, default, help and bounds), so a
protocol's settings are flags without a change here; the binary's own flags
(``--saved_model``, ``--dataset``, ``--output``, ``--protocol``, ...) are
holders as in every binary. ``--model`` reads a model that does not follow
the contract (a ``.keras`` file, a keras-hub preset, another SavedModel)
through an adapter (`keras_ssl_eval.reading.adapters`); keras is imported only
for the Keras kinds. While it works it
prints one plain line per step on stderr (features extracted, probe
accuracies); ``--verbosity=0`` shows TensorFlow's and absl's logs as well.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import sys
import types
import typing

from absl import app, flags

from keras_ssl_eval import quiet
from keras_ssl_eval.protocols.base import protocol_names
from keras_ssl_eval.protocols.evaluate import evaluate
from keras_ssl_eval.reporting.compare import compare_reports, load_reports
from keras_ssl_eval.reporting.plots import write_plots
from keras_ssl_eval.reporting.report import markdown_report, write_report
from keras_ssl_eval.settings import EvaluationSettings

__all__ = ["define_setting_flags", "main", "run", "settings_from_flags"]

_log = logging.getLogger("keras_ssl_eval")


def _setting_fields():
    """Yields ``(flat name, field, type)`` of every setting: `DataSettings`, then each protocol's."""
    classes, defaults = {}, EvaluationSettings()
    for flat, (section, name) in EvaluationSettings.flat_names().items():
        cls = type(getattr(defaults, section))
        if cls not in classes:
            classes[cls] = (typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)})
        hints, fields = classes[cls]
        yield flat, fields[name], hints[name]


def _kind(hint):
    """``(kind, element type)`` of a field's type: ``(list, int)`` for ``tuple[int, ...] | None``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) is tuple:
        return list, typing.get_args(hint)[0]
    return hint, None


def _flag_name(flat, field):
    return field.metadata.get("flag", flat)


def _text(value):
    return f"{value:g}" if isinstance(value, float) else str(value)


def define_setting_flags(flag_values=flags.FLAGS) -> None:
    """Defines one flag per setting of `EvaluationSettings` (data and every registered protocol).

    A flag is named as the setting's flat name (or its metadata ``flag``),
    has its default and its metadata's ``help``, bounds and choices; a tuple
    setting is a comma-separated list.
    """
    for flat, field, hint in _setting_fields():
        meta, default = field.metadata, field.default
        name, help_text = _flag_name(flat, field), meta.get("help", flat)
        kind, _ = _kind(hint)
        bounds = {k: meta[m] for k, m in (("lower_bound", "lower"), ("upper_bound", "upper"))
                  if m in meta}
        if "unit" in meta:
            flags.DEFINE_float(name, default / meta["unit"] if default else 0, help_text,
                               flag_values=flag_values, **bounds)
        elif kind is list:
            flags.DEFINE_list(name, None if default is None else [_text(v) for v in default],
                              help_text, flag_values=flag_values)
        elif "choices" in meta:
            flags.DEFINE_enum(name, default, list(meta["choices"]), help_text,
                              flag_values=flag_values)
        elif kind is bool:
            flags.DEFINE_bool(name, default, help_text, flag_values=flag_values)
        elif kind is int:
            flags.DEFINE_integer(name, default, help_text, flag_values=flag_values, **bounds)
        elif kind is float:
            flags.DEFINE_float(name, default, help_text, flag_values=flag_values, **bounds)
        else:
            flags.DEFINE_string(name, default, help_text, flag_values=flag_values)


def settings_from_flags(flag_values=flags.FLAGS) -> EvaluationSettings:
    """The `EvaluationSettings` the flags of `define_setting_flags` describe.

    Raises:
        absl.app.UsageError: A list flag whose items are not numbers where
            numbers are needed.
        ValueError: A value a settings class refuses.
    """
    values = {}
    for flat, field, hint in _setting_fields():
        name = _flag_name(flat, field)
        value = flag_values[name].value
        kind, element = _kind(hint)
        if "unit" in field.metadata:
            value = int(value * field.metadata["unit"]) if value else None
        elif kind is list and value is not None and element in (int, float):
            try:
                value = [element(v) for v in value]
            except ValueError as e:
                what = "integers" if element is int else "numbers"
                raise app.UsageError(f"--{name} must be {what}: {e}") from e
        values[flat] = value
    return EvaluationSettings.from_flat(values)


# The settings' flags, from the settings dataclasses (keras_ssl_eval.settings)
# and the protocol registry; then those of the binary itself.
define_setting_flags()
_SAVED_MODEL = flags.DEFINE_multi_string(
    "saved_model", None, "SavedModel directory following the keras-ssl contract. "
    "Repeat the flag to evaluate several models side by side.")
_MODEL = flags.DEFINE_multi_string(
    "model", None, "A model that does not follow the contract: a .keras file, a keras-hub "
    "preset directory or another SavedModel, read through an adapter (docs/evaluation.md, "
    "'Evaluating any model'). Repeatable; evaluated after the --saved_model models.")
_ENDPOINTS = flags.DEFINE_multi_string(
    "endpoints", None, "End-points of --model: NAME=LAYER_OR_OUTPUT,... (a layer name or an "
    "output key of a Keras model; an output key of the SavedModel signature). Given once it "
    "applies to every --model; repeated, the i-th applies to the i-th --model. Default: the "
    "model's own outputs (keras-hub backbones: pyramid_outputs and a pooled pre_logits).")
_SIGNATURE = flags.DEFINE_string(
    "signature", None, "Signature of a --model SavedModel (default: representation, else "
    "serving_default, else its only one).")
_UNSAFE_KERAS = flags.DEFINE_bool(
    "unsafe_keras", False, "Load --model Keras files that need unsafe deserialisation (a "
    "Lambda layer's Python code runs when loaded): only for models you trust.")
_KERAS_MODULES = flags.DEFINE_list(
    "keras_modules", None, "Python modules to import before loading --model Keras files, so "
    "that their custom layers are registered (their code runs: only modules you trust).")
_DATASET = flags.DEFINE_string(
    "dataset", None, "TFDS name (e.g. cifar10, synthetic_shapes/TCVL) or "
    "folder:/path/to/images (one sub-folder per class).")
_OUTPUT = flags.DEFINE_string(
    "output", None, "Directory for results.json and results.md.")
_PROTOCOL = flags.DEFINE_list(
    "protocol", ["linear"], f"Protocols: any of {', '.join(protocol_names())}, or "
    "all (utility only with --scratch_model).")
_PROGRESS = flags.DEFINE_bool(
    "progress", True, "Show a progress bar while extracting.")
_PLOTS = flags.DEFINE_bool(
    "plots", True, "Write PNG plots next to the results.")
_RESULTS = flags.DEFINE_list(
    "results", None, "compare: results.json files to put side by side.")


def _model_sources() -> list:
    """The `ModelSource` of each ``--model``, with its ``--endpoints`` and the shared flags.

    Raises:
        absl.app.UsageError: ``--endpoints`` (or ``--signature``, ``--unsafe_keras``,
            ``--keras_modules``) without ``--model``, or repeated a number of
            times other than 1 or the number of ``--model`` flags.
        ValueError: A ``--model`` path of no kind it reads, a malformed
            ``--endpoints`` item, or a ``--keras_modules`` module that cannot be
            imported.
    """
    # Imported here: the adapters are needed only with --model.
    from keras_ssl_eval.reading.adapters import (  # pylint: disable=import-outside-toplevel
        ModelSource, model_kind, parse_endpoints)

    paths, endpoints = list(_MODEL.value or []), list(_ENDPOINTS.value or [])
    if not paths:
        given = [f"--{h.name}" for h in (_ENDPOINTS, _SIGNATURE, _KERAS_MODULES) if h.value]
        given += ["--unsafe_keras"] if _UNSAFE_KERAS.value else []
        if given:
            raise app.UsageError(f"{', '.join(given)} apply to --model, and no --model is given.")
        return []
    if len(endpoints) not in (0, 1, len(paths)):
        raise app.UsageError(f"--endpoints is given {len(endpoints)} times for {len(paths)} "
                             f"--model flags: give it once (for all) or once per --model.")
    for module in _KERAS_MODULES.value or []:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ValueError(f"--keras_modules: cannot import {module!r} ({error}); install "
                             f"the package that provides it.") from error
    for path in paths:  # a wrong path is refused before any model is evaluated
        model_kind(path)
    mappings = [parse_endpoints(text) for text in endpoints] or [None]
    if len(mappings) == 1:
        mappings = mappings * len(paths)
    return [ModelSource(path, endpoints=mapping, signature=_SIGNATURE.value,
                        unsafe_keras=_UNSAFE_KERAS.value)
            for path, mapping in zip(paths, mappings)]


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
        missing = [holder.name for holder in (_DATASET, _OUTPUT) if not holder.value]
        if not _SAVED_MODEL.value and not _MODEL.value:
            missing.insert(0, "saved_model (or --model)")
        if missing:
            raise app.UsageError("Missing flag(s): " + ", ".join(f"--{n}" for n in missing))
        models = list(_SAVED_MODEL.value or []) + _model_sources()
        report = evaluate(models, _DATASET.value, protocols=_PROTOCOL.value,
                          progress=_PROGRESS.value, **settings_from_flags().sections())
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
