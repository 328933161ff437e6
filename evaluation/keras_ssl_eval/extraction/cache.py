"""On-disk cache of extracted features, so several protocols share one extraction.

Each entry is one ``.npz`` file (``features`` ``[N, D]`` float32 and ``labels``
``[N]`` int64) for one (model, dataset, split, subset, layer, pooling, input
size). The file name is a SHA-256 of those settings, where the model is its
absolute path plus the identity of its weights: the bytes of
``fingerprint.pb`` when the SavedModel has one, else the size and mtime of
``saved_model.pb`` and of the variables index. Re-exporting a model therefore
invalidates its entries.

The cache is bounded: after each write, the least recently used entries
(a hit refreshes an entry's modification time) are deleted until the
directory holds at most ``max_bytes`` (`DEFAULT_MAX_BYTES`, 10 GiB; the
command line's ``--cache_max_gb``). The entry just written is never deleted,
even when it alone is larger.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile

import numpy as np
import tensorflow as tf

from keras_ssl_eval.settings import DataSettings

__all__ = ["DEFAULT_CACHE_DIR", "DEFAULT_MAX_BYTES", "FeatureCache", "model_identity"]

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "keras_ssl_eval")
DEFAULT_MAX_BYTES = DataSettings.cache_max_bytes
_FORMAT = 1

_log = logging.getLogger(__name__)


def model_identity(path: str) -> dict:
    """Returns what identifies a SavedModel's contents, for cache keys.

    Args:
        path: The SavedModel directory.

    Returns:
        ``{"path": absolute path, "fingerprint": sha256 of fingerprint.pb}``, or
        sizes and mtimes of ``saved_model.pb`` and ``variables/variables.index``
        when there is no fingerprint file.
    """
    identity = {"path": os.path.abspath(path)}
    fingerprint = os.path.join(path, "fingerprint.pb")
    if tf.io.gfile.exists(fingerprint):
        with tf.io.gfile.GFile(fingerprint, "rb") as f:
            identity["fingerprint"] = hashlib.sha256(f.read()).hexdigest()
        return identity
    for name in ("saved_model.pb", os.path.join("variables", "variables.index")):
        file = os.path.join(path, name)
        if tf.io.gfile.exists(file):
            stat = tf.io.gfile.stat(file)
            identity[name] = [stat.length, stat.mtime_nsec]
    return identity


class FeatureCache:
    """Feature files under a directory, keyed by a hash of their settings.

    Args:
        directory: The cache directory (created on first write); None disables
            the cache (every lookup misses, nothing is written).
        max_bytes: Size bound of the directory's entries; None: unbounded.

    Example:
        >>> cache = FeatureCache("/tmp/cache")
        >>> key = cache.key(identity, layer="pre_logits", split="train")
        >>> cache.load(key) is None
        True
    """

    def __init__(self, directory: str | None = DEFAULT_CACHE_DIR,
                 max_bytes: int | None = DEFAULT_MAX_BYTES):
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0 or None, got {max_bytes}.")
        self.directory = directory
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self.evicted = 0

    @staticmethod
    def key(model: dict, **settings) -> str:
        """Returns the hex key of a model identity and extraction settings.

        Args:
            model: `model_identity` of the SavedModel.
            **settings: JSON-ready settings (dataset, split, layer, pooling, ...).

        Returns:
            A 64-character hex digest.
        """
        text = json.dumps({"format": _FORMAT, "model": model, **settings}, sort_keys=True,
                          default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def _file(self, key):
        return os.path.join(self.directory, f"{key}.npz")

    def load(self, key: str):
        """Returns ``(features, labels, endpoint_shape)`` for `key`, or None on a miss.

        Args:
            key: From `key`.

        Returns:
            float32 ``[N, D]`` and int64 ``[N]`` arrays and the end-point's
            per-image shape before pooling (a list), or None. A corrupt file
            counts as a miss (with a warning).
        """
        if self.directory is None or not os.path.exists(self._file(key)):
            self.misses += 1
            return None
        try:
            with np.load(self._file(key)) as data:
                result = (data["features"], data["labels"],
                          data["endpoint_shape"].tolist() if "endpoint_shape" in data else None)
        except (OSError, ValueError, KeyError) as e:
            _log.warning("Ignoring unreadable cache file %s: %s", self._file(key), e)
            self.misses += 1
            return None
        os.utime(self._file(key))  # Recently used: pruned last.
        self.hits += 1
        return result

    def save(self, key: str, features: np.ndarray, labels: np.ndarray,
             endpoint_shape=None) -> None:
        """Stores an entry atomically (temporary file, then rename).

        Args:
            key: From `key`.
            features: ``[N, D]`` features.
            labels: ``[N]`` labels.
            endpoint_shape: The end-point's per-image shape before pooling.
        """
        if self.directory is None:
            return
        os.makedirs(self.directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".npz", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, features=features, labels=labels,
                         endpoint_shape=np.asarray(endpoint_shape or [], np.int64))
            os.replace(tmp, self._file(key))
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        if self.max_bytes is not None:
            self.prune(self.max_bytes, keep=key)

    def entries(self) -> list[tuple[str, int, float]]:
        """Returns ``(path, bytes, last use)`` of every entry, least recently used first."""
        if self.directory is None or not os.path.isdir(self.directory):
            return []
        found = []
        for name in os.listdir(self.directory):
            if not name.endswith(".npz") or len(name) != 68:  # 64 hex digits + ".npz"
                continue
            path = os.path.join(self.directory, name)
            try:
                stat = os.stat(path)
            except FileNotFoundError:  # Pruned by a concurrent run.
                continue
            found.append((path, stat.st_size, stat.st_mtime))
        return sorted(found, key=lambda entry: entry[2])

    def prune(self, max_bytes: int, keep: str | None = None) -> int:
        """Deletes least recently used entries until at most `max_bytes` remain.

        Args:
            max_bytes: The bound (0 empties the cache).
            keep: A key never deleted (the entry just written).

        Returns:
            The number of entries deleted. Only this cache's entry files are
            touched, never other files in the directory.
        """
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        kept = self._file(keep) if keep else None
        deleted = 0
        for path, size, _ in entries:
            if total <= max_bytes:
                break
            if path == kept:
                continue
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            total -= size
            deleted += 1
        if deleted:
            _log.info("Feature cache: deleted %d least recently used entries to stay under "
                      "%.2f GB.", deleted, max_bytes / 1e9)
        self.evicted += deleted
        return deleted
