"""keras-ssl-eval: evaluation of self-supervised representations from SavedModels.

Reads SavedModels that follow the keras-ssl contract (docs/savedmodel_contract.md)
with TensorFlow alone: neither keras nor keras_ssl is imported.

Example:
    >>> import keras_ssl_eval as kse
    >>> model = kse.load_representation_model("/models/rotation")
    >>> ds, info = kse.load_images("cifar10", "test", image_size=model.input_size)
    >>> feats, labels = model.extract(ds, ["pre_logits"], with_labels=True)
"""

from keras_ssl_eval.data import FOLDER_PREFIX, DatasetInfo, load_images, to_rgb_float
from keras_ssl_eval.evaluate import evaluate_linear
from keras_ssl_eval.linear import DEFAULT_L2_GRID, LinearProbeResult, fit_linear_probe
from keras_ssl_eval.pooling import (MAX_FEATURE_VALUES, adaptive_max_pool, flatten_features,
                                    pooled_grid)
from keras_ssl_eval.report import build_report, markdown_table, write_report
from keras_ssl_eval.savedmodel import RepresentationModel, load_representation_model

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_L2_GRID", "FOLDER_PREFIX", "MAX_FEATURE_VALUES", "DatasetInfo",
    "LinearProbeResult", "RepresentationModel", "adaptive_max_pool", "build_report",
    "evaluate_linear", "fit_linear_probe", "flatten_features", "load_images",
    "load_representation_model", "markdown_table", "pooled_grid", "to_rgb_float",
    "write_report", "__version__",
]
