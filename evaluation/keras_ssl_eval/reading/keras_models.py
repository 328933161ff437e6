"""Keras models for evaluation: safe loading of ``.keras`` files and keras-hub presets.

Only ``keras-ssl-eval --model=PATH`` with a ``.keras`` file or a keras-hub
preset directory reaches this module, and keras (and keras-hub) is imported
inside its functions, never at import time: contract SavedModels and other
SavedModels are read without keras (`keras_ssl_eval.reading.adapters`).

Loading is safe by default (Keras' ``safe_mode=True``): a model whose
configuration holds Python code (a ``Lambda`` layer with a Python lambda, a
lambda in a layer's arguments) is refused in one line naming the flag that
allows it, since loading it would run that code. A model that uses a class
this process cannot find (a custom layer of a package that is not installed or
not imported) is refused in one line naming the class and the module to
install and import. keras-ssl's own ``init_from`` loads ``.keras`` files with
`load_keras_file` too, so training and evaluation refuse the same files.

A keras-hub preset directory holds ``config.json``, ``model.weights.h5`` and a
``metadata.json`` that names the keras-hub version (`keras_hub.models.Backbone.save_to_preset`);
an ``image_converter.json`` (or a ``preprocessor.json`` with an image
converter) says how the model's pixels were scaled (`preset_image_converter`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import zipfile

import tensorflow as tf

__all__ = ["PRESET_FILES", "describe_names", "is_keras_hub_preset", "keras_endpoint_model",
           "load_keras_file", "load_keras_hub_preset", "preset_image_converter"]

_log = logging.getLogger(__name__)

# The files of a keras-hub preset directory that `is_keras_hub_preset` looks for.
PRESET_FILES = ("config.json", "metadata.json")
_PRESET_WEIGHTS = ("model.weights.h5", "model.weights.json")  # one file, or sharded

# Packages whose modules Keras imports by itself when a file names them (see
# keras.saving's class lookup); any other package must be imported by the user.
_IMPORTED_BY_KERAS = ("keras_hub", "keras_cv", "keras_nlp")
_INSTALL = {"keras": "pip install 'keras-ssl-eval[keras]'",
            "keras_hub": "pip install 'keras-ssl-eval[keras-hub]'"}


def _import(name: str, what: str):
    """Imports keras or keras_hub, or says in one line how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ValueError(f"Reading {what} needs {name.replace('_', '-')}, which cannot be "
                         f"imported here ({error}): {_INSTALL[name]}.") from error


def describe_names(names, limit: int = 30) -> str:
    """``a, b, c`` for a list of names; past `limit` names, the first and last ones and a count.

    Example:
        >>> describe_names([f"conv{i}" for i in range(100)], limit=4)
        'conv0, conv1, ..., conv98, conv99 (100 in all)'
    """
    names = [str(n) for n in names]
    if len(names) <= limit:
        return ", ".join(names) or "none"
    half = limit // 2
    return f"{', '.join(names[:half])}, ..., {', '.join(names[-half:])} ({len(names)} in all)"


# ------------------------------------------------------------------ detection --

def is_keras_hub_preset(path: str) -> bool:
    """Whether `path` is a keras-hub preset directory (without importing keras).

    A preset has ``config.json``, weights (``model.weights.h5`` or the sharded
    ``model.weights.json``) and a ``metadata.json`` written by keras-hub (it
    names ``keras_hub_version``), or a ``config.json`` of a keras-hub class.

    Example:
        >>> backbone.save_to_preset("/tmp/resnet_preset")
        >>> is_keras_hub_preset("/tmp/resnet_preset")
        True
    """
    if not tf.io.gfile.isdir(path):
        return False
    if not tf.io.gfile.exists(os.path.join(path, "config.json")):
        return False
    if not any(tf.io.gfile.exists(os.path.join(path, w)) for w in _PRESET_WEIGHTS):
        return False
    metadata = _read_json(os.path.join(path, "metadata.json")) or {}
    if "keras_hub_version" in metadata:
        return True
    config = _read_json(os.path.join(path, "config.json")) or {}
    return str(config.get("module") or "").startswith("keras_hub")


def _read_json(file):
    if not tf.io.gfile.exists(file):
        return None
    try:
        with tf.io.gfile.GFile(file) as f:
            return json.load(f)
    except (ValueError, OSError):
        return None


def preset_image_converter(path: str) -> dict | None:
    """The image converter a keras-hub preset carries, read from its JSON (no keras).

    keras-hub converters take pixels in [0, 255], resize them to
    ``image_size``, multiply by ``scale`` and add ``offset`` (per channel or
    global; None skips the step). `keras_ssl_eval.reading.adapters` applies
    exactly that to the evaluation's [0, 1] images.

    Args:
        path: The preset directory.

    Returns:
        ``{"file", "class_name", "scale", "offset", "image_size"}`` from
        ``image_converter.json``, or from the ``image_converter`` of
        ``preprocessor.json``; None when the preset has neither.

    Example:
        >>> preset_image_converter("/tmp/resnet_preset")["offset"]
        [-2.1179, -2.0357, -1.8044]
    """
    found = _read_json(os.path.join(path, "image_converter.json"))
    file = "image_converter.json"
    if found is None:
        preprocessor = _read_json(os.path.join(path, "preprocessor.json")) or {}
        found = (preprocessor.get("config") or {}).get("image_converter")
        file = "preprocessor.json"
    if not isinstance(found, dict):
        return None
    config = found.get("config") or {}
    size = config.get("image_size")
    return {"file": file, "class_name": found.get("class_name"),
            "scale": config.get("scale"), "offset": config.get("offset"),
            "image_size": list(size) if size else None}


# -------------------------------------------------------------------- loading --

def _unknown_classes(config, keras):
    """Yields ``(class name, module, registered name)`` of every object in a Keras
    config that neither Keras nor this process can resolve."""
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        stack.extend(node.values())
        name, module = node.get("class_name"), node.get("module")
        if not isinstance(name, str) or name.startswith("__") or "config" not in node:
            continue  # tensors, lambdas, slices: Keras' own markers
        registered = node.get("registered_name")
        if name == "function":  # a function: its name is its config
            if not isinstance(node["config"], str) or module == "builtins":
                continue
            name = registered = node["config"]
        package = (module or "").split(".")[0]
        if package == "keras" or module == "builtins":
            continue
        if keras.saving.get_registered_object(registered or name) is not None:
            continue
        if package in _IMPORTED_BY_KERAS and importlib.util.find_spec(package) is not None:
            continue
        yield name, module, registered


def _refuse_unknown_class(path, config, keras, import_hint):
    for name, module, registered in _unknown_classes(config, keras):
        package = (module or "").split(".")[0]
        where = f" from module {module!r}" if module and module != "__main__" else ""
        also = f" (registered as {registered!r})" if registered and registered != name else ""
        if package in _IMPORTED_BY_KERAS:
            fix = f"install {package.replace('_', '-')} ({_INSTALL.get(package, 'pip')})"
        elif where:
            installed = importlib.util.find_spec(package) is not None
            fix = ((f"module {module!r} is installed but not imported: import it before "
                    f"loading" if installed else
                    f"install the package that provides {package!r} and import {module!r} "
                    f"before loading")
                   + (f" ({import_hint}={module})" if import_hint else ""))
        else:
            fix = ("it was defined in a script or registered at run time: import the module "
                   "that defines and registers it before loading"
                   + (f" ({import_hint}=MODULE)" if import_hint else ""))
        raise ValueError(f"{path}: the model uses class {name!r}{where}{also}, which this "
                         f"process does not know: {fix}.")


def _needs_unsafe(error) -> bool:
    """Whether Keras refused the file because loading it would run Python code."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error)
        if "arbitrary code execution" in text or "safe_mode=False" in text:
            return True
        error = error.__cause__ or error.__context__
    return False


def _unsafe_message(path, flag):
    return (f"{path} needs unsafe deserialisation (it holds Python code, e.g. a Lambda layer, "
            f"which runs when the model is loaded): load it only if you trust its source, "
            f"with {flag}.")


def _first_line(error, limit=300):
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def load_keras_file(path: str, *, unsafe: bool = False, flag: str = "--unsafe_keras",
                    import_hint: str | None = None):
    """Loads a ``.keras`` file in Keras' safe mode (keras is imported here, not before).

    Args:
        path: The ``.keras`` file (local or any `tf.io.gfile` path).
        unsafe: Allow deserialising Python code (Keras ``safe_mode=False``): a
            Lambda layer's function runs when the file is loaded. Only for files
            from a trusted source.
        flag: How the caller's user allows unsafe loading; the refusal names it
            (``--unsafe_keras`` for keras-ssl-eval, a gin binding for init_from).
        import_hint: How the caller's user imports a module before loading
            (``--keras_modules`` for keras-ssl-eval), added to the message for a
            class this process does not know; None leaves it out.

    Returns:
        The `keras.Model`, not compiled.

    Raises:
        ValueError: One line each: keras cannot be imported; the file is not
            there or not a ``.keras`` archive; it needs unsafe deserialisation
            (naming `flag`); it uses a class this process cannot find (naming
            the class and the module to install and import); Keras refuses it
            for another reason (its message's start).

    Example:
        >>> model = load_keras_file("/exports/step_600/backbone.keras")
        >>> sorted(model(images))
        ['after_root', 'block1', 'block2', 'block3', 'block4', 'pre_logits']
    """
    keras = _import("keras", f"the Keras model {path}")
    if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
        raise ValueError(f"{path}: no such .keras file.")
    try:
        with tf.io.gfile.GFile(path, "rb") as f, zipfile.ZipFile(f) as archive:
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError) as error:
        raise ValueError(f"{path} is not a .keras archive (a zip holding config.json): "
                         f"{_first_line(error)}; save the model with model.save('x.keras').") \
            from error
    _refuse_unknown_class(path, config, keras, import_hint)
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=not unsafe)
    except Exception as error:  # pylint: disable=broad-except  # Keras raises all kinds.
        if _needs_unsafe(error):
            raise ValueError(_unsafe_message(path, flag)) from error
        raise ValueError(f"{path}: keras could not load it: {_first_line(error)}") from error


def load_keras_hub_preset(path: str, *, unsafe: bool = False, flag: str = "--unsafe_keras",
                          import_hint: str | None = None, **overrides):
    """Loads the backbone of a keras-hub preset directory (`keras_hub.models.Backbone.from_preset`).

    Safe mode as for `load_keras_file`: keras-hub deserialises ``config.json``
    with Keras, inside a safe-mode scope unless `unsafe`.

    Args:
        path: The preset directory (``config.json``, ``model.weights.h5``,
            ``metadata.json``).
        unsafe, flag, import_hint: As for `load_keras_file`.
        **overrides: Config values replacing the preset's (`image_shape`).

    Returns:
        The `keras_hub.models.Backbone`.

    Raises:
        ValueError: As for `load_keras_file`; keras-hub cannot be imported.

    Example:
        >>> backbone = load_keras_hub_preset("/tmp/resnet_preset")
        >>> sorted(backbone.pyramid_outputs)
        ['P2', 'P3']
    """
    keras = _import("keras", f"the keras-hub preset {path}")
    keras_hub = _import("keras_hub", f"the keras-hub preset {path}")
    # pylint: disable-next=import-outside-toplevel
    from keras.src.saving.serialization_lib import SafeModeScope  # no public scoped form

    config = _read_json(os.path.join(path, "config.json"))
    if config is None:
        raise ValueError(f"{path}: config.json is missing or not JSON; a keras-hub preset "
                         f"is written by backbone.save_to_preset(dir).")
    _refuse_unknown_class(path, config, keras, import_hint)
    try:
        with SafeModeScope(not unsafe):
            return keras_hub.models.Backbone.from_preset(path, **overrides)
    except Exception as error:  # pylint: disable=broad-except
        if _needs_unsafe(error):
            raise ValueError(_unsafe_message(path, flag)) from error
        raise ValueError(f"{path}: keras-hub could not load the preset: "
                         f"{_first_line(error)}") from error


# ------------------------------------------------------------------ end-points --

def _outputs(model) -> dict:
    """``{name: symbolic tensor}`` of a model's outputs: dict keys, or its output names."""
    try:
        output = model.output
    except (AttributeError, ValueError):  # a Sequential model has outputs only
        output = None
    if isinstance(output, dict):
        return dict(output)
    outputs = list(model.outputs or [])
    names = list(getattr(model, "output_names", None) or [])
    if len(names) != len(outputs):
        names = [f"output_{i}" for i in range(len(outputs))]
    return dict(zip(names, outputs))


def _rank(tensor):
    shape = getattr(tensor, "shape", None)
    return None if shape is None else len(shape)


def _pooled(keras, tensor, name):
    """The global average of a map ``[B, H, W, C]`` or tokens ``[B, N, D]``, as a layer."""
    layer = (keras.layers.GlobalAveragePooling2D if _rank(tensor) == 4
             else keras.layers.GlobalAveragePooling1D)
    return layer(name=f"keras_ssl_eval_{name}")(tensor)


def _bad_rank(name, source, tensor) -> str | None:
    """Why an end-point cannot be evaluated (None when it can): not [B, D] or [B, H, W, C]."""
    if _rank(tensor) in (2, 4):
        return None
    return (f"end-point {name!r} ({source}) has shape {tuple(tensor.shape)}; keras-ssl-eval "
            f"reads vectors [batch, D] and feature maps [batch, H, W, C]: choose another "
            f"layer, or one that flattens or pools it")


def keras_endpoint_model(model, endpoints: dict | None = None, *, what: str = "the model"):
    """A Keras model from the images to a dict of end-points of `model`.

    Args:
        model: A functional or sequential `keras.Model` (a keras-hub backbone too)
            with one image input.
        endpoints: ``{name: source}``, a source being a key of the model's (dict)
            output, a key of a keras-hub backbone's ``pyramid_outputs``, the name
            of a default end-point (``pre_logits``), or a layer name (its output).
            None: the defaults, see Returns.
        what: The model's path, for messages.

    Returns:
        ``(feature_model, names, defaults)``: the `keras.Model` with dict
        output, its end-point names in order, and a sentence saying which
        end-points were chosen by default (None with `endpoints`). Defaults: a
        keras-hub backbone's ``pyramid_outputs`` and ``pre_logits``, the global
        average of its output; else the model's outputs by their dict keys
        (output names for a list), where one single output of rank 2 is named
        ``pre_logits``, a single feature map keeps its layer's name and adds
        its global average as ``pre_logits``, and single tokens ``[B, N, D]``
        give their average as ``pre_logits``. Outputs of another rank are left
        out with a warning.

    Raises:
        ValueError: One line each: not one image input; an end-point source the
            model does not have (the message lists its outputs and layers); an
            end-point that is not ``[B, D]`` or ``[B, H, W, C]``.

    Example:
        >>> feature_model, names, _ = keras_endpoint_model(
        ...     backbone, {"block2": "stack1_block0_out", "fine": "P2"})
        >>> names
        ['block2', 'fine']
    """
    import keras  # pylint: disable=import-outside-toplevel  # only for Keras inputs

    inputs = list(model.inputs or [])
    if len(inputs) != 1:
        raise ValueError(f"{what} takes {len(inputs)} inputs; keras-ssl-eval feeds it one "
                         f"image tensor [batch, H, W, 3].")
    if _rank(inputs[0]) != 4 or inputs[0].shape[-1] not in (3, None):
        raise ValueError(f"{what} takes input of shape {tuple(inputs[0].shape)}; keras-ssl-eval "
                         f"feeds images [batch, H, W, 3].")
    outputs = _outputs(model)
    pyramid = getattr(model, "pyramid_outputs", None)
    pyramid = dict(pyramid) if isinstance(pyramid, dict) and pyramid else {}
    default, defaults = _default_endpoints(keras, outputs, pyramid)
    if endpoints is None:
        chosen = dict(default)
        for name in [n for n, t in chosen.items() if _bad_rank(n, "output", t)]:
            _log.warning("%s: leaving out %s.", what, _bad_rank(name, "output", chosen.pop(name)))
        if not chosen:
            raise ValueError(f"{what}: none of its outputs is a vector [batch, D] or a feature "
                             f"map [batch, H, W, C]; name end-points with "
                             f"--endpoints=NAME=LAYER (layers: "
                             f"{describe_names([layer.name for layer in model.layers])}).")
    else:
        chosen, defaults = {}, None
        # Sources: an output, a pyramid key, a default end-point (pre_logits), a layer.
        known = {**outputs, **pyramid, **default}
        for name, source in endpoints.items():
            tensor = _source_tensor(model, source, known, what)
            problem = _bad_rank(name, f"from {source!r}", tensor)
            if problem:
                raise ValueError(f"{what}: {problem}.")
            chosen[name] = tensor
    feature_model = keras.Model(inputs[0], chosen, name="keras_ssl_eval_endpoints")
    return feature_model, list(chosen), defaults


def _default_endpoints(keras, outputs, pyramid):
    """``({name: tensor}, sentence)``: the end-points a model gets without ``--endpoints``."""
    if pyramid:
        final = list(outputs.values())[-1]
        return ({**pyramid, "pre_logits": _pooled(keras, final, "pre_logits")},
                f"default end-points of the keras-hub backbone: its pyramid_outputs "
                f"({', '.join(pyramid)}) and pre_logits, the global average of its output")
    if len(outputs) != 1:
        return dict(outputs), f"default end-points: the model's outputs ({', '.join(outputs)})"
    (key, tensor), = outputs.items()
    rank = _rank(tensor)
    history = getattr(tensor, "_keras_history", None)
    layer_name = getattr(getattr(history, "operation", None), "name", None) or key
    if rank == 2:
        return {"pre_logits": tensor}, "default end-point: the model's one output, named pre_logits"
    if rank == 4:
        return ({layer_name: tensor, "pre_logits": _pooled(keras, tensor, "pre_logits")},
                f"default end-points: the model's output map {layer_name!r} and pre_logits, "
                f"its global average")
    if rank == 3:
        return ({"pre_logits": _pooled(keras, tensor, "pre_logits")},
                "default end-point: pre_logits, the average of the model's output tokens "
                "[batch, N, D]")
    return {key: tensor}, None


def _source_tensor(model, source, known, what):
    if source in known:
        return known[source]
    layers = {layer.name: layer for layer in model.layers}
    if source not in layers:
        keys = list(known)
        raise ValueError(
            f"{what} has no output or layer {source!r}; outputs: {describe_names(keys)}; "
            f"layers: {describe_names(layers)}.")
    try:
        return layers[source].output
    except (AttributeError, ValueError) as error:  # a layer used more than once, or never
        raise ValueError(f"{what}: layer {source!r} has no single output ("
                         f"{_first_line(error, 120)}); name another layer.") from error
