"""Loading keras-ssl SavedModels and extracting features from their end-points.

Evaluation relies only on the SavedModel contract (docs/savedmodel_contract.md):
a ``representation`` signature mapping float32 images ``[batch, H, W, 3]`` in
[0, 1] to every named end-point, and optional metadata in
``assets/keras_ssl.json``, whose ``format`` version is checked first. The
contract's names come from `keras_ssl_eval.contract`. Neither keras nor
keras_ssl is imported.
"""

from __future__ import annotations

import json
import logging
import os
import re

import numpy as np
import tensorflow as tf

from keras_ssl_eval.reading._naming import natural_sort_key
from keras_ssl_eval.contract import (FORMAT_NAME, FORMAT_VERSION, METADATA_PATH,
                                     REPRESENTATION_SIGNATURE)
from keras_ssl_eval.extraction.cache import model_identity
from keras_ssl_eval.extraction.patches import cut_patches, patch_spec_from_metadata
from keras_ssl_eval.extraction.pooling import MAX_FEATURE_VALUES, flatten_features

__all__ = ["RepresentationModel", "load_representation_model", "read_metadata"]

_CONTRACT = (f"docs/savedmodel_contract.md: signature {REPRESENTATION_SIGNATURE!r} maps float32 "
             "images [batch, height, width, 3] in [0, 1] to a dict of named end-points "
             "(e.g. after_root, block1..block4, pre_logits)")

_log = logging.getLogger(__name__)


def _size_from_metadata(metadata):
    value = metadata.get("input_size", metadata.get("image_size"))
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return (int(value), int(value))
    if isinstance(value, (list, tuple)) and len(value) >= 2:
        return (int(value[0]), int(value[1]))  # [h, w] or [h, w, 3]
    return None


def _check_format(metadata, path):
    """Refuses metadata whose contract ``format`` this reader cannot read.

    A missing ``format`` is accepted: the metadata is optional for other
    writers of the contract. Minor versions newer than this reader's are
    accepted too, because they only add what a reader may ignore.

    Args:
        metadata: Contents of the model's metadata file ({} when absent).
        path: The SavedModel directory, for the message.

    Raises:
        ValueError: ``format`` is not ``keras_ssl.savedmodel/<major>[.<minor>]``,
            or its major version is not this reader's.
    """
    found = metadata.get("format")
    if found is None:
        return
    supported = f"{FORMAT_NAME}/{FORMAT_VERSION[0]}.x"
    fix = (f"re-export it with a keras-ssl that writes {supported}, or upgrade "
           f"keras-ssl-eval to one that reads {found}")
    match = re.fullmatch(re.escape(FORMAT_NAME) + r"/(\d+)(?:\.(\d+))?", str(found))
    if match is None:
        raise ValueError(f"SavedModel {path!r} has metadata format {found!r}, which is not "
                         f"{FORMAT_NAME}/<major>[.<minor>]; keras-ssl-eval reads {supported}: "
                         f"{fix}.")
    if int(match.group(1)) != FORMAT_VERSION[0]:
        raise ValueError(f"SavedModel {path!r} has contract version {found} but keras-ssl-eval "
                         f"reads {supported} only: {fix}.")


def read_metadata(path: str) -> dict:
    """The metadata of a SavedModel ({} when it has none), its contract version checked.

    For readers that load the SavedModel themselves (fine-tuning).

    Args:
        path: The SavedModel directory (local or any `tf.io.gfile` path).

    Returns:
        The contents of ``assets/keras_ssl.json``, or {}.

    Raises:
        ValueError: As `load_representation_model`, for the ``format``.
    """
    file = os.path.join(path, METADATA_PATH)
    if not tf.io.gfile.exists(file):
        return {}
    with tf.io.gfile.GFile(file) as f:
        metadata = json.load(f)
    _check_format(metadata, path)
    return metadata


class RepresentationModel:
    """A loaded SavedModel that maps images to its named end-points.

    Use `load_representation_model` to create one.

    Attributes:
        path: The SavedModel directory.
        source: What the model was opened from: `path` for a contract
            SavedModel (a `keras_ssl_eval.reading.adapters.ModelSource` for a
            model read through an adapter); fine-tuning reopens it.
        endpoint_names: Names of the end-points, shallow to deep.
        metadata: Contents of ``assets/keras_ssl.json`` ({} when absent).
        input_size: ``(height, width)`` the model expects, or None when unknown
            (for a patch model: the size of the whole image before cutting).
        patch_spec: A `keras_ssl_eval.extraction.patches.PatchSpec` for patch-based models
            (metadata ``input_form`` ``"patches"``), else None.
        signature_calls: How many times the signature ran (tests use it to check
            that cached features are not recomputed).
        last_endpoint_shapes: ``{layer: [H, W, C] or [D]}``, the per-image shapes
            of the end-points (before pooling) seen by the last `extract` call.
    """

    def __init__(self, path: str, *, loaded=None):
        """Loads the contract SavedModel at `path` (see `load_representation_model`).

        Args:
            path: The SavedModel directory.
            loaded: The object `tf.saved_model.load(path)` returned, when the
                caller loaded it already (`keras_ssl_eval.reading.adapters`).
        """
        # Metadata first: a model of an unknown contract version is refused
        # before the (slow) load, whose errors would hide the real cause.
        metadata = read_metadata(path)
        if not metadata:
            _log.warning("SavedModel %s has no %s; evaluating it without metadata "
                         "(model name from the directory, input size from the signature).",
                         path, METADATA_PATH)
        self._loaded = tf.saved_model.load(path) if loaded is None else loaded
        signatures = dict(self._loaded.signatures)
        if REPRESENTATION_SIGNATURE not in signatures:
            raise ValueError(
                f"SavedModel {path!r} lacks the {REPRESENTATION_SIGNATURE!r} signature (it has: "
                f"{sorted(signatures) or 'none'}), so its end-points cannot be read. "
                f"keras-ssl-eval needs the keras-ssl SavedModel contract, see {_CONTRACT}. "
                f"Re-export the model with keras-ssl's export binary, or read it with "
                f"--model=PATH --endpoints=NAME=OUTPUT (docs/evaluation.md, \"Evaluating any "
                f"model\").")
        self._signature = signature = signatures[REPRESENTATION_SIGNATURE]
        inputs = signature.structured_input_signature[1]
        if len(inputs) != 1:
            raise ValueError(f"SavedModel {path!r}: signature {REPRESENTATION_SIGNATURE!r} must "
                             f"take one images tensor, it takes {sorted(inputs)}; see {_CONTRACT}.")
        (self._input_name, input_spec), = inputs.items()
        outputs = list(signature.structured_outputs)
        listed = [n for n in metadata.get("endpoints", []) if n in outputs]
        rest = sorted((n for n in outputs if n not in listed), key=natural_sort_key)
        static = tuple(input_spec.shape[1:3]) if input_spec.shape.rank == 4 else ()
        input_size = _size_from_metadata(metadata) or (
            static if len(static) == 2 and None not in static else None)
        self._setup(path, metadata, tuple(listed + rest), input_size, self._call_signature)
        self.source = path
        self.patch_spec = patch_spec_from_metadata(self.metadata)
        if self.patch_spec is not None and self.input_size is None:
            raise ValueError(f"Patch model {path!r} needs input_size in its metadata (the "
                             f"image size that is cut into the patch grid).")

    def _call_signature(self, images):
        return self._signature(**{self._input_name: images})

    def _setup(self, path, metadata, endpoint_names, input_size, run):
        """Sets what every reader of end-points has; `run` maps images to ``{name: tensor}``.

        `keras_ssl_eval.reading.adapters.AdaptedModel` calls it in place of the
        contract's loading, so extraction, resizing and the protocols are shared.
        """
        self.path = path
        self.metadata = metadata
        self.endpoint_names = tuple(endpoint_names)
        self.input_size = input_size
        self.patch_spec = None
        self._run = run
        self._warned_resize = False
        self.last_endpoint_shapes = {}
        self.signature_calls = 0

    def cache_identity(self) -> dict:
        """What identifies this model's features in the feature cache (`model_identity`)."""
        return model_identity(self.path)

    def endpoints(self, images) -> dict:
        """Runs the signature on one batch; returns ``{layer: np.ndarray}``.

        Images must already be at `input_size`. For a patch model the images are
        cut into patches and each end-point is averaged over an image's patches.
        """
        images = tf.convert_to_tensor(images, tf.float32)
        if self.patch_spec is not None:
            images = cut_patches(images, self.patch_spec)
        self.signature_calls += 1
        outputs = self._run(images)
        outputs = {k: v.numpy() for k, v in outputs.items()}
        if self.patch_spec is not None:
            n = self.patch_spec.num_patches
            outputs = {k: v.reshape(-1, n, *v.shape[1:]).mean(axis=1) for k, v in outputs.items()}
        return outputs

    def extract(self, data, layers=None, *, batch_size: int = 64,
                with_labels: bool = False, max_values: int = MAX_FEATURE_VALUES,
                pooling: str = "adaptive", progress: bool = False, total: int | None = None):
        """Computes flattened features of `layers` for every image in `data`.

        The ``representation`` signature runs once per batch for all layers.
        Images whose size differs from `input_size` are resized (one warning).
        Feature maps with more than `max_values` values per image are adaptively
        max-pooled (see `keras_ssl_eval.extraction.pooling`) and flattened.

        Args:
            data: Images as an array/tensor ``[N, H, W, 3]`` (floats in [0, 1] or
                integer pixels, which are scaled to [0, 1]), or a
                `tf.data.Dataset` of images, of ``(image, label)`` tuples or of dicts
                with ``image`` (and ``label``), batched or not (e.g. from
                `keras_ssl_eval.reading.data.load_images`).
            layers: End-point names (default: all of `endpoint_names`).
            batch_size: Images per forward pass (ignored for batched datasets).
            with_labels: Also return the labels (-1 where `data` has none).
            max_values: Bound on values per image before pooling applies.
            pooling: ``"adaptive"`` (Kolesnikov adaptive max, default) or
                ``"vissl"`` (fixed pools for ResNet-50 at 224 px, else adaptive).
            progress: Show a progress bar (tqdm, on stderr) per batch.
            total: Expected number of images, for the progress bar.

        Returns:
            ``{layer: float32 array [N, D_layer]}``, or ``(that dict, int64 labels
            [N])`` when `with_labels` is true.

        Raises:
            KeyError: A requested layer is not an end-point of this model.

        Example:
            >>> model = load_representation_model("/models/rotation")
            >>> feats = model.extract(images, ["block3", "pre_logits"])
            >>> feats["pre_logits"].shape
            (1000, 2048)
        """
        layers = self._check_layers(layers)
        chunks = {layer: [] for layer in layers}
        labels = []
        bar = _progress_bar(progress, total, os.path.basename(os.path.normpath(self.path)))
        for images, batch_labels in self._batches(data, batch_size):
            outputs = self.endpoints(self._resize(images))
            for layer in layers:
                value = outputs[layer]
                self.last_endpoint_shapes[layer] = list(value.shape[1:])
                chunks[layer].append(flatten_features(value, max_values, pooling))
            labels.append(batch_labels)
            bar.update(len(batch_labels))
        bar.close()
        features = {layer: (np.concatenate(c).astype(np.float32, copy=False) if c
                            else np.zeros([0, 0], np.float32)) for layer, c in chunks.items()}
        if with_labels:
            return features, (np.concatenate(labels) if labels else np.zeros([0], np.int64))
        return features

    def _check_layers(self, layers):
        if layers is None:
            return list(self.endpoint_names)
        if isinstance(layers, str):
            layers = [layers]
        unknown = [name for name in layers if name not in self.endpoint_names]
        if unknown:
            raise KeyError(f"SavedModel {self.path!r} has no end-point(s) {unknown}; "
                           f"available end-points: {list(self.endpoint_names)}.")
        return list(layers)

    def _warn_resize(self, shape):
        if not self._warned_resize:
            shown = "x".join("?" if d is None else str(d) for d in shape)
            _log.warning("Resizing %s images to the input size %sx%s of %s.", shown,
                         *self.input_size, self.path)
            self._warned_resize = True

    def _resize(self, images):
        images = tf.convert_to_tensor(images, tf.float32)
        if self.input_size is None or tuple(images.shape[1:3]) == self.input_size:
            return images
        self._warn_resize(images.shape[1:3])
        return tf.clip_by_value(tf.image.resize(images, self.input_size, antialias=True), 0.0, 1.0)

    def _batches(self, data, batch_size):
        """Yields ``(images [B, H, W, 3], int64 labels [B])`` from any accepted input."""
        if not isinstance(data, tf.data.Dataset):
            images = np.asarray(data)
            if np.issubdtype(images.dtype, np.integer):  # e.g. uint8 pixels: to [0, 1].
                images = images / np.iinfo(images.dtype).max
            images = images.astype(np.float32, copy=False)
            if images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f"Expected images [N, H, W, 3], got shape {images.shape}.")
            for start in range(0, len(images), batch_size):
                chunk = images[start:start + batch_size]
                yield chunk, np.full([len(chunk)], -1, np.int64)
            return
        data = data.map(_image_and_label, num_parallel_calls=tf.data.AUTOTUNE)
        rank = data.element_spec[0].shape.rank
        if rank == 3:
            static = tuple(data.element_spec[0].shape[:2])
            if self.input_size is not None and static != self.input_size:
                # Resize before batching so that images of mixed sizes can be batched.
                self._warn_resize(static)
                size = self.input_size
                data = data.map(lambda image, label: (_resize_image(image, size), label),
                                num_parallel_calls=tf.data.AUTOTUNE)
            data = data.batch(batch_size)
        elif rank != 4:
            raise ValueError(f"Expected a dataset of images [H, W, 3] or batches "
                             f"[B, H, W, 3], got rank {rank}.")
        for images, labels in data.prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
            yield images, labels


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress_bar(enabled, total, name):
    """A tqdm bar in images (tqdm comes with tensorflow-datasets), or a no-op."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=f"extract {name}", unit="img", mininterval=1.0)


def _resize_image(image, size):
    """Resizes one [H, W, 3] image to `size` unless it already has that size."""
    same = tf.reduce_all(tf.equal(tf.shape(image)[:2], size))

    def resized():
        return tf.clip_by_value(tf.image.resize(image, size, antialias=True), 0.0, 1.0)

    return tf.ensure_shape(tf.cond(same, lambda: image, resized), [*size, 3])


def _image_and_label(*element):
    """Normalises a dataset element to ``(image, int64 label)``."""
    if len(element) == 1 and isinstance(element[0], dict):
        element = element[0]
        image = element["image"]
        label = element.get("label")
    else:
        image = element[0]
        label = element[1] if len(element) > 1 else None
    image = tf.image.convert_image_dtype(image, tf.float32)  # Integer pixels -> [0, 1].
    if label is None:
        label = tf.fill(tf.shape(image)[:-3], tf.constant(-1, tf.int64))
    return image, tf.cast(label, tf.int64)


def load_representation_model(path: str) -> RepresentationModel:
    """Loads a SavedModel that follows the keras-ssl contract.

    Args:
        path: The SavedModel directory (local or any `tf.io.gfile` path).

    Returns:
        A `RepresentationModel`.

    Raises:
        ValueError: The SavedModel has no ``representation`` signature, or its
            metadata ``format`` has a major version this keras-ssl-eval does not
            read (see `keras_ssl_eval.contract`).

    Example:
        >>> model = load_representation_model("/models/rotation")
        >>> model.endpoint_names
        ('after_root', 'block1', 'block2', 'block3', 'block4', 'pre_logits')
    """
    return RepresentationModel(path)
