"""Features of a dataset split for one model, extracted once and cached on disk.

Every protocol (linear, grid, kNN, low-shot) starts from the same frozen
features. `split_features` reads a split, runs the model once for all layers
that are not cached yet, and stores each layer's features in a
`keras_ssl_eval.extraction.cache.FeatureCache`, so a second protocol on the same model,
data and settings does not run the model again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import numpy as np

from keras_ssl_eval.contract import FOLDER_PREFIX
from keras_ssl_eval.extraction.cache import FeatureCache, model_identity
from keras_ssl_eval.extraction.pooling import MAX_FEATURE_VALUES
from keras_ssl_eval.reading.data import DatasetInfo, load_images
from keras_ssl_eval.settings import DataSettings

__all__ = ["SplitFeatures", "split_features"]

_log = logging.getLogger(__name__)


@dataclasses.dataclass
class SplitFeatures:
    """Features of one split.

    Attributes:
        features: ``{layer: float32 [N, D]}``.
        labels: int64 ``[N]``.
        info: The split's `keras_ssl_eval.reading.data.DatasetInfo`.
        endpoint_shapes: ``{layer: per-image shape before pooling}``.
        cached_layers: Layers that came from the cache.
        seconds: Extraction time (0 when everything was cached).
    """

    features: dict
    labels: np.ndarray
    info: DatasetInfo
    endpoint_shapes: dict
    cached_layers: list
    seconds: float


def split_features(model, dataset: str, split: str, layers, *, data_dir: str | None = None,
                   batch_size: int = DataSettings.batch_size, limit: int | None = None,
                   seed: int = DataSettings.seed, pooling: str = DataSettings.pooling,
                   cache: FeatureCache | None = None, progress: bool = False,
                   need_labels: bool = True) -> SplitFeatures:
    """Returns the features of `layers` for one split, from the cache when possible.

    Args:
        model: A `keras_ssl_eval.reading.savedmodel.RepresentationModel` (or an
            `keras_ssl_eval.reading.adapters.AdaptedModel`).
        dataset: A `keras_ssl_eval.reading.data.load_images` name.
        split: The split (TFDS slices work).
        layers: End-point names.
        data_dir: TFDS data directory.
        batch_size: Images per forward pass.
        limit: At most this many images (seeded subset, see `load_images`).
        seed: Seed of the subset.
        pooling: ``"adaptive"`` or ``"vissl"`` (see `keras_ssl_eval.extraction.pooling`).
        cache: Where features are cached (None: no cache).
        progress: Show a per-batch progress bar while extracting.
        need_labels: Raise when the split has no labels.

    Returns:
        A `SplitFeatures`.

    Raises:
        ValueError: The split is empty, or unlabelled while `need_labels`.
    """
    cache = cache or FeatureCache(None)
    ds, info = load_images(dataset, split, data_dir=data_dir, image_size=model.input_size,
                           shuffle_files=limit is not None, seed=seed)
    if need_labels and info.num_classes == 0 and dataset.startswith(FOLDER_PREFIX):
        raise ValueError(f"Dataset {dataset!r}, split {split!r} has no labels; the linear "
                         f"probe needs labelled data (for a folder: one sub-folder per class).")
    # A model read through an adapter is also identified by its end-point mapping.
    identity = (model.cache_identity() if hasattr(model, "cache_identity")
                else model_identity(model.path))
    keys = {layer: cache.key(identity, dataset=dataset, data_dir=data_dir, split=split,
                             limit=limit, seed=seed, layer=layer, pooling=pooling,
                             max_values=MAX_FEATURE_VALUES,
                             input_size=list(model.input_size or []),
                             patches=str(model.patch_spec))
            for layer in layers}
    features, labels, cached, shapes = {}, None, [], {}
    for layer in layers:
        hit = cache.load(keys[layer])
        if hit is not None:
            features[layer], labels, shapes[layer] = hit
            cached.append(layer)
    missing = [layer for layer in layers if layer not in features]
    seconds = 0.0
    if missing:
        if limit is not None:
            ds = ds.take(limit)
        total = info.num_examples if limit is None else min(limit, info.num_examples or limit)
        start = time.perf_counter()
        new, labels = model.extract(ds, missing, batch_size=batch_size, with_labels=True,
                                    pooling=pooling, progress=progress, total=total or None)
        seconds = time.perf_counter() - start
        for layer in missing:
            shapes[layer] = model.last_endpoint_shapes.get(layer)
            cache.save(keys[layer], new[layer], labels, shapes[layer])
        features.update(new)
        _log.info("extracted features of %s (%s) on %d %s images ... %.1f s",
                  _model_name(model), ", ".join(missing), len(labels), split, seconds)
    if cached:
        _log.info("features of %s (%s) on %s images: from the cache", _model_name(model),
                  ", ".join(cached), split)
    if labels is None or len(labels) == 0:
        raise ValueError(f"Dataset {dataset!r}, split {split!r} yielded no images.")
    if need_labels and (labels < 0).all():
        raise ValueError(f"Dataset {dataset!r}, split {split!r} has no labels; the linear "
                         f"probe needs labelled data.")
    return SplitFeatures({layer: features[layer] for layer in layers}, labels, info, shapes,
                         cached, seconds)


def _model_name(model) -> str:
    """The model's directory name, as the progress bar names it (e.g. `step_0`)."""
    return os.path.basename(os.path.normpath(model.path))
