"""Any model as a contract model: ``.keras`` files, keras-hub presets, other SavedModels.

``keras-ssl-eval --model=PATH --endpoints=NAME=LAYER_OR_OUTPUT,...`` evaluates
a model that does not follow the keras-ssl SavedModel contract. An adapter
gives it what the protocols use from a contract model, so they run unchanged:
for extraction (grid, linear, kNN, low-shot) an `AdaptedModel`, a
`keras_ssl_eval.reading.savedmodel.RepresentationModel` whose end-points come
from the adapter; for fine-tuning (utility) `open_trainable`, an object with
``model(images, training=...)`` (the pre-logits), ``model.end_points(images,
training=...)``, ``variables``, ``trainable_variables`` and
``regularization_losses``, as `tf.saved_model.load` gives for a contract model.

PATH is one of (`model_kind`):

- ``*.keras``: a Keras model file, loaded in safe mode
  (`keras_ssl_eval.reading.keras_models.load_keras_file`).
- a keras-hub preset directory (``config.json``, ``model.weights.h5``,
  ``metadata.json``): `keras_hub.models.Backbone.from_preset`. An image
  converter in the preset (``image_converter.json``, or the converter of
  ``preprocessor.json``) is applied to the images: pixels = image x 255, times
  its ``scale``, plus its ``offset``; its ``image_size`` is the input size.
- a SavedModel directory: read through one signature, without keras. The
  signature is ``--signature`` when given, else ``representation``, else
  ``serving_default``, else the only one. It must take one float image tensor.
  A SavedModel that follows the contract (it has ``assets/keras_ssl.json``, or
  a ``representation`` signature) and is given no ``--endpoints`` or
  ``--signature`` is read as ``--saved_model`` reads it.

Every model receives what a contract model receives: float32 images
``[batch, H, W, 3]`` in [0, 1] at its input size (its static input size, the
preset converter's size, or else the dataset's size), nothing else (no mean
subtraction) unless a keras-hub converter says so. The model's metadata in the
report records all of it under ``adapter``.

keras is imported only for the two Keras kinds; a SavedModel, of the contract
or not, is read with TensorFlow alone. Fine-tuning a SavedModel through a
signature cannot switch batch norm or dropout to training mode (a signature has
no ``training`` argument): its batch norm keeps the saved statistics, and a
warning says so.

Example:
    >>> source = ModelSource("/models/resnet.keras", endpoints=parse_endpoints(
    ...     "block3=conv4_block6_out,pre_logits=avg_pool"))
    >>> model = open_model(source)
    >>> model.endpoint_names
    ('block3', 'pre_logits')
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re

import tensorflow as tf

from keras_ssl_eval.contract import METADATA_PATH, REPRESENTATION_SIGNATURE, SERVING_SIGNATURE
from keras_ssl_eval.extraction.cache import model_identity
from keras_ssl_eval.reading._naming import natural_sort_key
from keras_ssl_eval.reading.savedmodel import RepresentationModel, read_metadata

__all__ = ["KINDS", "AdaptedModel", "ModelSource", "model_kind", "open_model", "open_trainable",
           "parse_endpoints"]

_log = logging.getLogger(__name__)

# What --model reads: kind -> how the message describes it.
KINDS = {"keras": "a .keras file", "keras_hub_preset": "a keras-hub preset directory "
         "(config.json + model.weights.h5)", "saved_model": "a SavedModel directory "
         "(saved_model.pb)"}
_NAME = re.compile(r"[A-Za-z0-9_.\-/:]+")


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """A model to evaluate through an adapter, as ``--model`` and its flags describe it.

    Attributes:
        path: A ``.keras`` file, a keras-hub preset directory or a SavedModel
            directory.
        endpoints: ``{name: layer or output}`` in order (`parse_endpoints`);
            None: the model's defaults (see the module docstring).
        signature: The SavedModel signature to read (None: the default order).
        unsafe_keras: Allow Keras files that need unsafe deserialisation.
    """

    path: str
    endpoints: dict | None = None
    signature: str | None = None
    unsafe_keras: bool = False

    def __post_init__(self):
        if self.endpoints is not None:
            object.__setattr__(self, "endpoints", dict(self.endpoints))


def parse_endpoints(text) -> dict | None:
    """``{name: source}`` from ``"NAME=LAYER_OR_OUTPUT,..."`` (a bare ``SOURCE`` names itself).

    Args:
        text: The ``--endpoints`` value: a string, a list of items, or None.

    Returns:
        The mapping in the order given, or None for None / empty.

    Raises:
        ValueError: An empty name or source, a name given twice, or characters
            other than letters, digits and ``_ . - / :``.

    Example:
        >>> parse_endpoints("block4=block_group4,final_avg_pool")
        {'block4': 'block_group4', 'final_avg_pool': 'final_avg_pool'}
    """
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else [i for t in text for i in t.split(",")]
    items = [item.strip() for item in items if item.strip()]
    if not items:
        return None
    mapping = {}
    for item in items:
        name, _, source = item.partition("=")
        name, source = name.strip(), (source or name).strip()
        if not (_NAME.fullmatch(name) and _NAME.fullmatch(source)):
            raise ValueError(f"--endpoints item {item!r} is not NAME=LAYER_OR_OUTPUT (names are "
                             f"letters, digits and _ . - / :).")
        if name in mapping:
            raise ValueError(f"--endpoints names {name!r} twice; give each end-point one name.")
        mapping[name] = source
    return mapping


def model_kind(path: str) -> str:
    """Which kind of model `path` is: ``keras``, ``keras_hub_preset`` or ``saved_model``.

    Decided from the files alone, without importing keras.

    Raises:
        ValueError: `path` does not exist, or is none of the three kinds (one line).

    Example:
        >>> model_kind("/exports/step_600/backbone.keras")
        'keras'
    """
    from keras_ssl_eval.reading.keras_models import is_keras_hub_preset  # no keras import

    if not tf.io.gfile.exists(path):
        raise ValueError(f"--model {path}: no such file or directory.")
    if not tf.io.gfile.isdir(path):
        if path.endswith(".keras"):
            return "keras"
    elif any(tf.io.gfile.exists(os.path.join(path, name))
             for name in ("saved_model.pb", "saved_model.pbtxt")):
        return "saved_model"
    elif is_keras_hub_preset(path):
        return "keras_hub_preset"
    kinds = list(KINDS.values())
    raise ValueError(f"--model {path} is none of what keras-ssl-eval reads: "
                     f"{', '.join(kinds[:-1])} or {kinds[-1]}.")


# ------------------------------------------------------------------- adapters --

def _head(endpoints: dict) -> str:
    """The end-point fine-tuning puts its head on: ``pre_logits``, else the only vector, else
    the last end-point (averaged over space if it is a map)."""
    if "pre_logits" in endpoints:
        return "pre_logits"
    vectors = [name for name, rank in endpoints.items() if rank == 2]
    return vectors[0] if len(vectors) == 1 else list(endpoints)[-1]


class _Adapter:
    """What both readers need: end-points with ``training``, variables, metadata.

    Subclasses set `endpoint_names`, `ranks` (``{name: rank or None}``),
    `input_size`, `metadata`, `variables`, `trainable_variables`,
    `regularization_losses`, `identity`, and implement `end_points`.
    """

    def __call__(self, images, training=False):
        """The pre-logits ``[batch, D]`` (see `_head`), as a contract model's ``__call__``."""
        head = _head(self.ranks)
        value = self.end_points(images, training=training)[head]
        return tf.reduce_mean(value, axis=[1, 2]) if value.shape.rank == 4 else value

    def infer(self, images):
        """End-points for extraction (inference mode), traced once per image shape."""
        if not hasattr(self, "_infer"):
            # One trace per model: extraction feeds images at the input size (any size
            # when the model has none), in batches of any length.
            spec = tf.TensorSpec([None, *(self.input_size or (None, None)), 3], tf.float32)
            self._infer = tf.function(lambda x: self.end_points(x, training=False),
                                      input_signature=[spec])
        return self._infer(tf.convert_to_tensor(images, tf.float32))

    def _describe(self, kind, mapping, defaults, signature=None, input_form=None):
        adapter = {"kind": kind, "endpoints": dict(mapping),
                   "default_endpoints": defaults, "fine_tune_head": _head(self.ranks),
                   "input": input_form or "float32 images [batch, H, W, 3] in [0, 1], unchanged"}
        if signature:
            adapter["signature"] = signature
        return adapter


class _KerasAdapter(_Adapter):
    """A `.keras` model or a keras-hub backbone behind the contract's interface."""

    def __init__(self, source: ModelSource, kind: str):
        from keras_ssl_eval.reading import keras_models  # keras only from here on

        load = (keras_models.load_keras_file if kind == "keras"
                else keras_models.load_keras_hub_preset)
        model = load(source.path, unsafe=source.unsafe_keras, flag="--unsafe_keras",
                     import_hint="--keras_modules")
        self._model, names, defaults = keras_models.keras_endpoint_model(
            model, source.endpoints, what=source.path)
        self.endpoint_names = tuple(names)
        self.ranks = {name: len(self._model.output[name].shape) for name in names}
        mapping = source.endpoints or {name: "(default)" for name in names}
        converter = (keras_models.preset_image_converter(source.path)
                     if kind == "keras_hub_preset" else None)
        self._scale = self._offset = None
        input_form = None
        static = tuple(model.inputs[0].shape[1:3])
        self.input_size = static if None not in static else None
        if converter is not None:
            self._scale, self._offset = converter["scale"], converter["offset"]
            if converter["image_size"]:
                self.input_size = tuple(int(s) for s in converter["image_size"])
            input_form = (f"float32 images in [0, 1] converted as the preset's "
                          f"{converter['file']} says: x * 255 * scale + offset, with scale = "
                          f"{converter['scale']} and offset = {converter['offset']}")
        self.variables = list(self._model.variables)
        self.trainable_variables = list(self._model.trainable_variables)
        # Keras computes a weight's penalty from its regularizer; activity
        # penalties belong to a call, not to the weights, and are left out.
        self.regularization_losses = [
            (lambda v=v: v.regularizer(v)) for v in self.trainable_variables
            if getattr(v, "regularizer", None) is not None]
        adapter = self._describe(kind, mapping, defaults, input_form=input_form)
        if converter is not None:
            adapter["image_converter"] = converter
        self.metadata = {"endpoints": list(names), "adapter": adapter}
        if self.input_size:
            self.metadata["input_size"] = list(self.input_size)
        self.identity = {"path": os.path.abspath(source.path), "adapter": adapter,
                         "files": _file_stats(source.path, kind)}

    def end_points(self, images, training=False):
        """``{name: float32 tensor}`` of every end-point; `training` reaches batch norm."""
        images = tf.convert_to_tensor(images, tf.float32)
        if self._scale is not None or self._offset is not None:
            images = images * 255.0
            if self._scale is not None:
                images = images * tf.constant(self._scale, tf.float32)
            if self._offset is not None:
                images = images + tf.constant(self._offset, tf.float32)
        outputs = self._model(images, training=training)
        return {name: tf.cast(outputs[name], tf.float32) for name in self.endpoint_names}


def _file_stats(path, kind) -> dict:
    """Sizes and modification times of a Keras model's files, so a rewrite misses the cache."""
    names = (["."] if kind == "keras" else
             ["config.json", "model.weights.h5", "model.weights.json", "image_converter.json",
              "preprocessor.json"])
    stats = {}
    for name in names:
        file = path if name == "." else os.path.join(path, name)
        if tf.io.gfile.exists(file):
            stat = tf.io.gfile.stat(file)
            stats[name] = [stat.length, stat.mtime_nsec]
    return stats


def _choose_signature(path, signatures, requested):
    if requested is not None:
        if requested not in signatures:
            raise ValueError(f"SavedModel {path} has no signature {requested!r}; it has "
                             f"{', '.join(sorted(signatures)) or 'none'}.")
        return requested
    for name in (REPRESENTATION_SIGNATURE, SERVING_SIGNATURE):
        if name in signatures:
            return name
    if len(signatures) == 1:
        return next(iter(signatures))
    if not signatures:
        raise ValueError(f"SavedModel {path} has no signatures; re-save it with one that maps "
                         f"images to a dict of tensors.")
    raise ValueError(f"SavedModel {path} has signatures {', '.join(sorted(signatures))}; "
                     f"choose one with --signature=NAME.")


class _SignatureAdapter(_Adapter):
    """A SavedModel's signature behind the contract's interface (TensorFlow only)."""

    def __init__(self, source: ModelSource, loaded, metadata: dict):
        path = source.path
        # The signature only refers to the loaded object's variables: keep them alive.
        self._loaded = loaded
        signatures = dict(loaded.signatures)
        name = _choose_signature(path, signatures, source.signature)
        self._function = signatures[name]
        inputs = self._function.structured_input_signature[1]
        if len(inputs) != 1:
            raise ValueError(f"SavedModel {path}: signature {name!r} takes "
                             f"{', '.join(sorted(inputs)) or 'no inputs'}; keras-ssl-eval feeds "
                             f"one image tensor: choose another with --signature.")
        (self._input_name, spec), = inputs.items()
        if not spec.dtype.is_floating or spec.shape.rank not in (None, 4):
            raise ValueError(f"SavedModel {path}: signature {name!r} takes {spec.dtype.name} "
                             f"{spec.shape}; keras-ssl-eval feeds float32 images "
                             f"[batch, H, W, 3] in [0, 1].")
        self._dtype = spec.dtype
        outputs = dict(self._function.structured_outputs)
        ranks = {key: out.shape.rank for key, out in outputs.items()}
        defaults = None
        if source.endpoints is None:
            keys = sorted(outputs, key=natural_sort_key)
            if len(keys) == 1 and ranks[keys[0]] == 2:
                mapping = {"pre_logits": keys[0]}
                defaults = (f"default end-point: the signature's one output {keys[0]!r}, "
                            f"named pre_logits")
            else:
                mapping = {key: key for key in keys}
                defaults = f"default end-points: every output of signature {name!r}"
            for key, output in list(mapping.items()):
                if ranks[output] not in (2, 4, None):
                    _log.warning("SavedModel %s: leaving out output %r of shape %s (keras-ssl-eval "
                                 "reads [batch, D] and [batch, H, W, C]).", path, output,
                                 outputs[output].shape)
                    del mapping[key]
            if not mapping:
                raise ValueError(f"SavedModel {path}: no output of signature {name!r} is a "
                                 f"vector [batch, D] or a feature map [batch, H, W, C].")
        else:
            mapping = dict(source.endpoints)
            for key, output in mapping.items():
                if output not in outputs:
                    raise ValueError(
                        f"SavedModel {path}: signature {name!r} has no output {output!r} (for "
                        f"end-point {key!r}); its outputs: "
                        f"{', '.join(sorted(outputs, key=natural_sort_key))}.")
                if ranks[output] not in (2, 4, None):
                    raise ValueError(
                        f"SavedModel {path}: end-point {key!r} (output {output!r}) has shape "
                        f"{outputs[output].shape}; keras-ssl-eval reads vectors [batch, D] and "
                        f"feature maps [batch, H, W, C]: choose another output.")
        self._mapping = mapping
        self.endpoint_names = tuple(mapping)
        self.ranks = {key: ranks[output] for key, output in mapping.items()}
        static = tuple(spec.shape[1:3]) if spec.shape.rank == 4 else ()
        size = tuple(metadata.get("input_size") or ())[:2]
        self.input_size = (tuple(int(s) for s in size) if len(size) == 2 else
                           static if len(static) == 2 and None not in static else None)
        self.variables = list(self._function.variables)
        self.trainable_variables = list(self._function.trainable_variables)
        self.regularization_losses = list(getattr(loaded, "regularization_losses", None) or [])
        adapter = self._describe("saved_model", mapping, defaults, signature=name)
        self.metadata = {**metadata, "endpoints": list(mapping), "adapter": adapter}
        if self.input_size:
            self.metadata["input_size"] = list(self.input_size)
        self.identity = {**model_identity(path), "adapter": adapter}
        self._path, self._signature_name, self._warned_training = path, name, False

    def end_points(self, images, training=False):
        """``{name: float32 tensor}``; a signature has no training mode (module docstring)."""
        if training and not self._warned_training:
            _log.warning("Fine-tuning SavedModel %s through its signature %r: a signature has no "
                         "training mode, so batch norm keeps its saved statistics.", self._path,
                         self._signature_name)
            self._warned_training = True
        outputs = self._function(**{self._input_name: tf.cast(images, self._dtype)})
        return {key: tf.cast(outputs[output], tf.float32) for key, output in self._mapping.items()}


class AdaptedModel(RepresentationModel):
    """A model read through an adapter, for extraction like a contract SavedModel.

    Use `open_model` to create one. Besides `RepresentationModel`'s
    attributes it has `source` (its `ModelSource`) and `adapter`.
    """

    # pylint: disable-next=super-init-not-called  # the contract's loading is replaced
    def __init__(self, source: ModelSource, adapter: _Adapter):
        self._setup(source.path, adapter.metadata, adapter.endpoint_names, adapter.input_size,
                    adapter.infer)
        self.source, self.adapter = source, adapter

    def cache_identity(self) -> dict:
        return self.adapter.identity


def _as_source(source) -> ModelSource:
    return source if isinstance(source, ModelSource) else ModelSource(str(source))


def _open(source: ModelSource):
    """``("contract", loaded or None)`` for a contract SavedModel read as such, else
    ``("adapter", adapter)``."""
    kind = model_kind(source.path)
    if kind != "saved_model":
        return "adapter", _KerasAdapter(source, kind)
    plain = source.endpoints is None and source.signature is None
    if plain and tf.io.gfile.exists(os.path.join(source.path, METADATA_PATH)):
        return "contract", None
    metadata = read_metadata(source.path)  # a foreign model may still carry one
    loaded = tf.saved_model.load(source.path)
    if plain and REPRESENTATION_SIGNATURE in loaded.signatures:
        return "contract", loaded
    return "adapter", _SignatureAdapter(source, loaded, metadata)


def open_model(source) -> RepresentationModel:
    """Opens a model for extraction: a contract path or a `ModelSource`.

    Args:
        source: A contract SavedModel directory (str: as
            `keras_ssl_eval.reading.savedmodel.load_representation_model`), or
            a `ModelSource` of any kind.

    Returns:
        A `RepresentationModel` (an `AdaptedModel` for a model read through an
        adapter).

    Raises:
        ValueError: One line each: see `model_kind`, `parse_endpoints`,
            `keras_ssl_eval.reading.keras_models.load_keras_file` and the
            signature's checks.

    Example:
        >>> model = open_model(ModelSource("/tmp/resnet_preset"))
        >>> model.endpoint_names
        ('P2', 'P3', 'pre_logits')
    """
    if not isinstance(source, ModelSource):
        return RepresentationModel(source)
    how, opened = _open(source)
    if how == "contract":
        return RepresentationModel(source.path, loaded=opened)
    return AdaptedModel(source, opened)


def open_trainable(source):
    """Opens a model for fine-tuning; returns ``(metadata, model)``.

    `model` is what a contract SavedModel is to a client: ``model(images,
    training=...)``, ``model.end_points(images, training=...)``,
    ``variables``, ``trainable_variables`` and ``regularization_losses``.

    Args:
        source: A `ModelSource`, or a path: a SavedModel directory with
            ``trainable_variables`` is loaded as a contract model, one without
            them is read through its signature; a ``.keras`` file or a keras-hub
            preset gets the default end-points.

    Raises:
        ValueError: As `open_model`.

    Example:
        >>> metadata, model = open_trainable(ModelSource("/tmp/resnet.keras"))
        >>> model(images, training=True).shape
        TensorShape([8, 128])
    """
    if not isinstance(source, ModelSource):
        path = str(source)
        if not tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
            source = ModelSource(path)
        else:
            metadata = read_metadata(path)  # the contract version, before the slow load
            loaded = tf.saved_model.load(path)
            if hasattr(loaded, "trainable_variables"):
                return metadata, loaded
            # Not a contract model: through a signature, as --model reads it.
            adapter = _SignatureAdapter(ModelSource(path), loaded, metadata)
            return adapter.metadata, adapter
    how, opened = _open(source)
    if how == "contract":
        return read_metadata(source.path), (
            tf.saved_model.load(source.path) if opened is None else opened)
    return opened.metadata, opened
