"""The files an export writes beside its SavedModel: `.keras`, ONNX and LiteRT.

`keras-ssl-export --format=saved_model,keras,onnx,litert` (default
`saved_model,keras`) and `keras_ssl.export.export_backbone(..., formats=...)`
write, inside the export directory and before it is renamed into place:

| format | file | what it is |
| --- | --- | --- |
| `saved_model` | `saved_model.pb`, `variables/`, `assets/` | the contract SavedModel (always: the reference) |
| `keras` | `backbone.keras` (+ `keras_hub_preset/`) | the backbone in Keras built-in layers (`keras_ssl.portable`); a keras-hub backbone also as its preset |
| `onnx` | `backbone.onnx` | the `representation` signature, ONNX opset 17 |
| `litert` | `backbone.tflite` | the `representation` signature as a LiteRT (TensorFlow Lite) model |

ONNX and LiteRT hold the same function as the SavedModel's `representation`
signature (the method's input transform, then the backbone, float32
end-points): one input `images` `[batch, h, w, 3]` in [0, 1] with the batch
free and the spatial size fixed at the size the backbone sees (the input size;
a patch-based method's patch size), and one output per end-point, named after
it. The LiteRT model's signature is `representation`.

Every artifact is checked against the SavedModel's function on a probe batch
before the export is renamed into place; an artifact that differs by more than
`TOLERANCE` (relative to the end-point's largest value;
`HALF_PRECISION_TOLERANCE` for a backbone computing in bfloat16 or float16,
whose `.keras` file computes in float32) fails the export, and nothing is
left at the destination. The largest difference found for each is
recorded in the metadata (`artifact_max_abs_difference`), with the files
(`artifacts`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
import warnings

import numpy as np
import tensorflow as tf

SAVED_MODEL = "saved_model"
KERAS = "keras"
ONNX = "onnx"
LITERT = "litert"
FORMATS = (SAVED_MODEL, KERAS, ONNX, LITERT)
DEFAULT_FORMATS = (SAVED_MODEL, KERAS)

ARTIFACT_FILES = {KERAS: "backbone.keras", ONNX: "backbone.onnx", LITERT: "backbone.tflite"}
KERAS_HUB_PRESET = "keras_hub_preset"
# The metadata key of the preset (written with the keras format).
KERAS_HUB = "keras_hub_preset"

ONNX_OPSET = 17
# The LiteRT model's one signature: the SavedModel's signature of the same function.
LITERT_SIGNATURE = "representation"

# Largest accepted |artifact - SavedModel function| on the probe, as a fraction of the
# end-point's largest |value| (at least 1). Float32 conversions differ by ~1e-6 of it.
TOLERANCE = 1e-3
# The same for a backbone computing in bfloat16/float16 (a mixed-precision run): its
# `.keras` file computes in float32, so the two differ by the half-precision rounding
# of every layer (8 mantissa bits for bfloat16); the check then catches only a broken
# conversion (NaN, wrong weights or end-points), not rounding.
HALF_PRECISION_TOLERANCE = 5e-2
_HALF_PRECISION = ("bfloat16", "float16")
PROBE_BATCH = 2

# The modules each format needs beyond keras-ssl's own requirements, and the extra
# that installs them.
_REQUIRED_MODULES = {ONNX: ("tf2onnx", "onnx", "onnxruntime")}
_EXTRA = {ONNX: "onnx"}

__all__ = [
    "ARTIFACT_FILES", "DEFAULT_FORMATS", "ExportFormatError", "FORMATS", "KERAS_HUB_PRESET",
    "TOLERANCE", "resolve_formats", "write_artifacts",
]


class ExportFormatError(ValueError):
    """A format the export cannot write as asked; the message is one line with the fix."""


def resolve_formats(formats=None, *, input_transform: str | None = None) -> tuple[list[str], str | None]:
    """The formats to write, checked before anything is built or written.

    Args:
      formats: A list of format names (or one comma-separated string); None
        for the default, `DEFAULT_FORMATS`.
      input_transform: The name of the method's input transform (e.g.
        `"Colorization.export_input_transform"`) when it has one, else None.
        The keras format has no built-in form for it: with the default
        formats keras is skipped (with a note); asked for, it is refused.

    Returns:
      `(formats, note)`: the formats in the order given, without repeats,
      and a one-line note to print when keras was skipped (else None).

    Raises:
      ExportFormatError: An unknown format (the message lists the known
        ones), `saved_model` missing, keras asked for with an input
        transform, or a format whose optional packages are not installed
        (the message names the pip extra).

    Example:

    >>> resolve_formats("saved_model,onnx")                   # doctest: +SKIP
    (['saved_model', 'onnx'], None)
    """
    explicit = formats is not None
    if formats is None:
        formats = DEFAULT_FORMATS
    if isinstance(formats, str):
        formats = formats.split(",")
    names = []
    for name in formats:
        name = str(name).strip()
        if name and name not in names:
            names.append(name)
    unknown = [name for name in names if name not in FORMATS]
    if unknown:
        raise ExportFormatError(
            f"Unknown export format(s) {', '.join(map(repr, unknown))}; the known formats are "
            f"{', '.join(FORMATS)} (e.g. --format=saved_model,keras,onnx,litert).")
    if SAVED_MODEL not in names:
        raise ExportFormatError(
            f"The export formats {','.join(names) or '(none)'} leave out {SAVED_MODEL}: the "
            f"SavedModel carries the metadata and is the reference every other artifact is "
            f"checked against; add it, e.g. --format={','.join([SAVED_MODEL] + names)}.")
    note = None
    if KERAS in names and input_transform:
        reason = (f"{input_transform} changes the images before the backbone and has no "
                  f"built-in Keras form")
        if explicit:
            raise ExportFormatError(
                f"The keras format cannot hold this model: {reason}, so backbone.keras would "
                f"expect transformed inputs. Leave keras out of --format; the SavedModel, ONNX "
                f"and LiteRT artifacts include the transform.")
        names.remove(KERAS)
        note = (f"skipping backbone.keras: {reason}; the SavedModel (and ONNX, LiteRT when "
                f"asked for) include the transform.")
    for name in names:
        missing = [module for module in _REQUIRED_MODULES.get(name, ())
                   if importlib.util.find_spec(module) is None]
        if missing:
            raise ExportFormatError(
                f"The {name} format needs {', '.join(_REQUIRED_MODULES[name])}, and "
                f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed: "
                f"pip install 'keras-ssl[{_EXTRA[name]}]'.")
    return names, note


def write_artifacts(directory: str, formats, *, backbone, representation, input_size,
                    endpoint_names, explicit: bool = True) -> tuple[dict, dict, list[str]]:
    """Writes the non-SavedModel artifacts into `directory` and checks each.

    Args:
      directory: The (staging) export directory.
      formats: Formats from `resolve_formats` (`saved_model` is written by
        the caller).
      backbone: The backbone (the keras format converts it; a
        `hub_backbone` attribute adds its keras-hub preset).
      representation: `images -> {end-point: float32 tensor}`, the function
        of the SavedModel's `representation` signature.
      input_size: `(height, width)` the backbone sees (fixed in ONNX and
        LiteRT).
      endpoint_names: End-point names in network order.
      explicit: Whether the formats were asked for. With the default ones, a
        keras file that cannot be written or checked (a third party's
        custom layer `keras_ssl.portable` cannot rebuild from built-in
        layers) is skipped with a note instead of failing the export.

    Returns:
      `(artifacts, differences, notes)`: `{artifact: file or folder name}`
      as written, `{format: max abs difference from representation on the
      probe}`, and one-line notes on what was skipped.

    Raises:
      ExportFormatError: An artifact differs from the SavedModel's function
        by more than `TOLERANCE`, or a converter refused the model (the
        message names the format and why).

    Example:

    >>> write_artifacts(staging, ["saved_model", "onnx"], backbone=net,   # doctest: +SKIP
    ...                 representation=fn, input_size=(32, 32),
    ...                 endpoint_names=net.endpoint_names)
    ({'onnx': 'backbone.onnx'}, {'onnx': 4.8e-06}, [])
    """
    height, width = (int(v) for v in input_size)
    spec = tf.TensorSpec([None, height, width, 3], tf.float32, name=_input_name())
    function = tf.function(representation, input_signature=[spec])
    probe = np.random.default_rng(0).uniform(size=[PROBE_BATCH, height, width, 3]).astype(np.float32)
    # Eager: the default formats (keras alone) then trace nothing more than the SavedModel.
    expected = {name: np.asarray(value) for name, value in representation(tf.constant(probe)).items()}
    half = _half_precision(backbone)
    converted = [name for name in formats if name in (ONNX, LITERT)]
    if half and converted:
        # onnxruntime has no bfloat16 convolutions; a LiteRT model of a half-precision
        # graph is not what a mobile user expects either.
        raise ExportFormatError(
            f"The {' and '.join(converted)} format(s) need a backbone computing in float32; "
            f"this one computes in {half} (a mixed-precision policy). Rebuild it under the "
            f"float32 policy and export that (keras-ssl-export does so).")
    tolerance = HALF_PRECISION_TOLERANCE if half else TOLERANCE
    artifacts, differences, notes = {}, {}, []
    for name in formats:
        if name == SAVED_MODEL:
            continue
        path = os.path.join(directory, ARTIFACT_FILES[name])
        hub = getattr(backbone, "hub_backbone", None) if name == KERAS else None
        try:
            differences[name] = _write_and_check(
                name, path, function, spec, probe, expected, endpoint_names, backbone, tolerance)
            if hub is not None:
                hub.save_to_preset(os.path.join(directory, KERAS_HUB_PRESET))
        except Exception as error:
            if name == KERAS and not explicit:
                # The default formats never cost the user the SavedModel: a backbone
                # keras_ssl.portable cannot rebuild (a custom layer) only loses its .keras.
                if os.path.exists(path):
                    os.remove(path)
                shutil.rmtree(os.path.join(directory, KERAS_HUB_PRESET), ignore_errors=True)
                notes.append(f"skipping backbone.keras: {_one_line(error)}")
                continue
            if isinstance(error, ExportFormatError):
                raise
            raise ExportFormatError(
                f"The {name} conversion failed ({type(error).__name__}: {_one_line(error)}); "
                f"export without it (leave {name} out of --format).") from error
        artifacts[name] = ARTIFACT_FILES[name]
        if hub is not None:
            artifacts[KERAS_HUB] = KERAS_HUB_PRESET
    return artifacts, differences, notes


def _write_and_check(name, path, function, spec, probe, expected, endpoint_names, backbone,
                     tolerance) -> float:
    """Writes one artifact and returns its largest difference from `expected` on `probe`."""
    if name == KERAS:
        outputs = _write_keras(backbone, path, tuple(probe.shape[1:3]), probe)
    elif name == ONNX:
        outputs = _write_onnx(function, spec, path, probe)
    else:
        outputs = _write_litert(function, path, probe)
    return _compare(name, outputs, expected, endpoint_names, tolerance)


def _one_line(error, limit=300) -> str:
    return " ".join(str(error).split())[:limit] or type(error).__name__


def _input_name() -> str:
    from keras_ssl_eval.contract import INPUT_NAME

    return INPUT_NAME


def _half_precision(backbone) -> str | None:
    """The half-precision dtype some layer of `backbone` computes in, else None."""
    for layer in [backbone, *getattr(backbone, "layers", [])]:
        dtype = str(getattr(layer, "compute_dtype", "float32"))
        if dtype in _HALF_PRECISION:
            return dtype
    return None


def _compare(name, outputs, expected, endpoint_names, tolerance=TOLERANCE) -> float:
    """The largest |outputs - expected| over the end-points; refuses a mismatch."""
    missing = [e for e in endpoint_names if e not in outputs]
    if missing:
        raise ExportFormatError(
            f"The {name} artifact lacks the end-points {missing} (it has {sorted(outputs)}); "
            f"this is a keras-ssl bug: export without {name}.")
    largest = 0.0
    for endpoint in endpoint_names:
        got = np.asarray(outputs[endpoint], np.float32)
        want = expected[endpoint]
        if got.shape != want.shape:
            raise ExportFormatError(
                f"The {name} artifact's end-point {endpoint!r} has shape {list(got.shape)}, the "
                f"SavedModel's {list(want.shape)}; export without {name}.")
        difference = float(np.max(np.abs(got - want))) if got.size else 0.0
        scale = max(1.0, float(np.max(np.abs(want))) if want.size else 1.0)
        if not np.isfinite(difference) or difference > tolerance * scale:
            raise ExportFormatError(
                f"The {name} artifact differs from the SavedModel at end-point {endpoint!r} by "
                f"{difference:.3g} (allowed {tolerance * scale:.3g}); export without {name}.")
        largest = max(largest, difference)
    return largest


# ------------------------------------------------------------------- keras
def _write_keras(backbone, path, size, probe) -> dict:
    import keras

    from keras_ssl.portable import portable_backbone

    # What keras_ssl.portable.save_portable writes; the staging directory already
    # makes the file appear atomically with the rest of the export.
    portable_backbone(backbone, size).save(path)
    # Loaded as a user loads it: safe mode, no custom objects.
    model = keras.saving.load_model(path, safe_mode=True, compile=False)
    return {k: keras.ops.convert_to_numpy(v) for k, v in model(probe, training=False).items()}


# -------------------------------------------------------------------- onnx
def _erfc_as_one_minus_erf(graph, node, name, args):
    """tf2onnx handler for TF's `Erfc` (exact GELU), which ONNX lacks: `1 - Erf(x)`.

    Near the far negative tail of GELU (`0.5 x erfc(-x / sqrt 2)` at large
    |x|) the subtraction loses erfc's relative precision, but the product
    with x stays within float32 rounding of the exact value in absolute terms.
    """
    from tf2onnx import utils

    del name, args
    node.type = "Erf"
    node.domain = ""
    erf = node.output[0]
    dtype = utils.map_onnx_to_numpy_type(graph.get_dtype(erf))
    one = graph.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype))
    graph.insert_new_node_on_output("Sub", erf, name=utils.make_name(f"{node.name}_erfc"),
                                    inputs=[one.output[0], erf])


@contextlib.contextmanager
def _quiet_tf2onnx():
    """tf2onnx logs every pass at INFO/WARNING; keep the export's output readable."""
    loggers = [logging.getLogger(name) for name in ("tf2onnx", "tf2onnx.tfonnx")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _write_onnx(function, spec, path, probe) -> dict:
    import onnxruntime
    import tf2onnx

    with _quiet_tf2onnx():
        tf2onnx.convert.from_function(
            function, input_signature=[spec], opset=ONNX_OPSET,
            custom_op_handlers={"Erfc": (_erfc_as_one_minus_erf, [])}, output_path=path)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    values = session.run(names, {session.get_inputs()[0].name: probe})
    return dict(zip(names, values))


# ------------------------------------------------------------------ litert
def _write_litert(function, path, probe) -> dict:
    concrete = function.get_concrete_function()
    # No trackable object: the converter then freezes the variables into
    # constants itself (its frozen-graph path). Given one, it converts through a
    # SavedModel in which Keras 3's variables stay resource variables that the
    # interpreter never initialises (NaN outputs or READ_VARIABLE failures), and
    # AlexNet's fc6 convolution is left as a TF op there.
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    tf_logger = tf.get_logger()
    level = tf_logger.level
    tf_logger.setLevel(logging.ERROR)  # the "provide trackable_obj" advice
    try:
        flat = converter.convert()
    finally:
        tf_logger.setLevel(level)
    # The frozen-graph path names outputs Identity, Identity_1... in flattening
    # order and writes no signature: name them after the end-points and add one.
    keys = tf.nest.flatten({key: key for key in concrete.structured_outputs})
    by_tensor = {tensor.name.split(":")[0]: key for tensor, key in zip(concrete.outputs, keys)}
    content = _with_signature(flat, by_tensor)
    folder = os.path.dirname(os.path.abspath(path))
    handle, staging = tempfile.mkstemp(prefix=".backbone-", suffix=".tflite", dir=folder)
    with os.fdopen(handle, "wb") as f:
        f.write(content)
    os.replace(staging, path)
    runner = _interpreter(path).get_signature_runner(LITERT_SIGNATURE)
    return runner(**{_input_name(): probe})


def _with_signature(flat: bytes, by_tensor: dict) -> bytes:
    """The LiteRT model with its outputs renamed by `by_tensor` and a `representation` signature."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flat))
    graph = model.subgraphs[0]

    def tensor_map(name, index):
        entry = schema.TensorMapT()
        entry.name, entry.tensorIndex = name, index
        return entry

    outputs = []
    for index in graph.outputs:
        tensor = graph.tensors[index]
        current = tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name
        name = by_tensor.get(current, current)
        tensor.name = name
        outputs.append(tensor_map(name, index))
    signature = schema.SignatureDefT()
    signature.signatureKey = LITERT_SIGNATURE
    signature.subgraphIndex = 0
    signature.inputs = [tensor_map(_input_name(), index) for index in graph.inputs]
    signature.outputs = outputs
    model.signatureDefs = [signature]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _interpreter(path):
    """A LiteRT interpreter: ai-edge-litert's where installed, else TensorFlow's own."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        with warnings.catch_warnings():  # its deprecation in favour of ai-edge-litert
            warnings.simplefilter("ignore")
            return tf.lite.Interpreter(model_path=path)
    return Interpreter(model_path=path)
