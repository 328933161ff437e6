"""The names of the keras-ssl SavedModel contract, declared in this one place.

Everything a writer (`keras_ssl.export`) and a reader
(`keras_ssl_eval.reading.savedmodel`) of a contract SavedModel must agree on lives
here, as do the names of image-folder datasets, which training
(`keras_ssl.datasets`) and evaluation (`keras_ssl_eval.reading.data`) read alike.
docs/savedmodel_contract.md describes the contract in words. This module
imports nothing itself, so it can never pull keras into an evaluation process.

The metadata's ``format`` is ``"<FORMAT_NAME>/<major>[.<minor>]"``. A new
major version means old readers would misread the model; a new minor version
only adds what old readers may ignore. So a reader refuses an unknown major
version and accepts any minor version.
"""

from __future__ import annotations

__all__ = [
    "FOLDER_PREFIX", "FORMAT", "FORMAT_NAME", "FORMAT_VERSION", "IMAGE_EXTENSIONS",
    "INPUT_NAME", "METADATA_FILENAME", "METADATA_PATH", "REPRESENTATION_SIGNATURE",
    "SERVING_SIGNATURE",
]

# Signatures of every contract SavedModel, and the name of their one input.
SERVING_SIGNATURE = "serving_default"
REPRESENTATION_SIGNATURE = "representation"
INPUT_NAME = "images"

# The metadata file: written under this name as a `tf.saved_model.Asset`,
# which the SavedModel writer copies into the model's ``assets/`` folder.
METADATA_FILENAME = "keras_ssl.json"
METADATA_PATH = "assets/" + METADATA_FILENAME  # Relative to the SavedModel directory.

# The metadata's ``format``: the contract's name and its version (major.minor).
FORMAT_NAME = "keras_ssl.savedmodel"
# 1.1 added trainable_variable_paths and _endpoints; 1.2 the artifacts beside the SavedModel.
FORMAT_VERSION = (1, 2)
# Written as "keras_ssl.savedmodel/1" while the minor version is 0, as the
# exports before minor versions existed were.
FORMAT = (f"{FORMAT_NAME}/{FORMAT_VERSION[0]}" if FORMAT_VERSION[1] == 0
          else f"{FORMAT_NAME}/{FORMAT_VERSION[0]}.{FORMAT_VERSION[1]}")

# Image-folder datasets: ``folder:/path/to/images``.
FOLDER_PREFIX = "folder:"
# Lower-case file extensions that count as images (what `tf.io.decode_image` reads).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
