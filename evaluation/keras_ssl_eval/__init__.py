"""keras-ssl-eval: evaluation of self-supervised representations from SavedModels.

Reads SavedModels that follow the keras-ssl contract (docs/savedmodel_contract.md)
with TensorFlow alone: neither keras nor keras_ssl is imported.

Example:
    >>> import keras_ssl_eval as kse
    >>> model = kse.load_representation_model("/models/rotation")
    >>> ds, info = kse.load_images("cifar10", "test", image_size=model.input_size)
    >>> feats, labels = model.extract(ds, ["pre_logits"], with_labels=True)
    >>> report = kse.evaluate(["/models/rotation"], "cifar10", protocols=["linear", "knn"],
    ...                       knn=kse.KnnSettings(k=20))

The package follows the data path: `reading` (SavedModels, images), `extraction`
(features, pooling, the cache), `probes` (linear, heads, SVM, kNN, fine-tuning),
`protocols` (the protocol registry, one module per protocol: linear, grid,
kNN, low-shot, utility; `evaluate`) and `reporting` (report, plots, compare);
`settings` holds the settings dataclasses, `contract` the SavedModel contract
shared with keras_ssl's exporter. A new protocol is a
`keras_ssl_eval.protocols.base.Protocol` registered with
`keras_ssl_eval.protocols.base.register` (docs/evaluation.md, "Adding a
protocol").
"""

# First: run as a binary, TensorFlow's C++ start-up logs are hidden before
# TensorFlow is imported (see keras_ssl_eval.quiet). Imported as a library,
# TensorFlow's defaults stay.
import os as _os

from keras_ssl_eval import quiet as _quiet

if _quiet.started_as_binary() and not _quiet.verbosity_given():
    _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    _quiet.hide_library_warnings()

from keras_ssl_eval.contract import FOLDER_PREFIX
from keras_ssl_eval.extraction.cache import DEFAULT_CACHE_DIR, FeatureCache
from keras_ssl_eval.extraction.features import split_features
from keras_ssl_eval.extraction.patches import PatchSpec, cut_patches
from keras_ssl_eval.extraction.pooling import (MAX_FEATURE_VALUES, adaptive_max_pool, avg_pool,
                                               flatten_features, pooled_grid)
from keras_ssl_eval.probes.heads import HeadResult, train_head
from keras_ssl_eval.probes.knn import knn_accuracy, knn_classify
from keras_ssl_eval.probes.linear import DEFAULT_L2_GRID, LinearProbeResult, fit_linear_probe
from keras_ssl_eval.probes.svm import LinearSVM, fit_svm, fit_svm_cv
from keras_ssl_eval.protocols.base import Protocol, get_protocol, protocol_names
from keras_ssl_eval.protocols.evaluate import PROTOCOLS, evaluate, evaluate_linear
from keras_ssl_eval.protocols.lowshot import DEFAULT_SHOTS, low_shot, sample_per_class
from keras_ssl_eval.protocols.utility import labels_needed, utility_curve
from keras_ssl_eval.reading.data import DatasetInfo, load_images, to_rgb_float
from keras_ssl_eval.reading.savedmodel import RepresentationModel, load_representation_model
from keras_ssl_eval.reporting.compare import compare_reports, load_reports
from keras_ssl_eval.reporting.plots import write_plots
from keras_ssl_eval.reporting.report import (build_report, markdown_report, markdown_table,
                                             write_report)
from keras_ssl_eval.settings import (DataSettings, EvaluationSettings, GridSettings, KnnSettings,
                                     LinearSettings, LowShotSettings, UtilitySettings)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_CACHE_DIR", "DEFAULT_L2_GRID", "DEFAULT_SHOTS", "FOLDER_PREFIX",
    "MAX_FEATURE_VALUES", "PROTOCOLS", "DataSettings", "DatasetInfo", "EvaluationSettings",
    "FeatureCache", "GridSettings", "HeadResult", "KnnSettings", "LinearProbeResult",
    "LinearSettings", "LowShotSettings", "UtilitySettings", "LinearSVM", "PatchSpec", "Protocol",
    "RepresentationModel", "adaptive_max_pool",
    "avg_pool", "build_report", "compare_reports", "cut_patches", "evaluate",
    "evaluate_linear", "fit_linear_probe", "fit_svm", "fit_svm_cv", "flatten_features",
    "get_protocol", "protocol_names",
    "knn_accuracy", "knn_classify", "labels_needed", "load_images", "load_reports",
    "load_representation_model", "low_shot", "markdown_report", "markdown_table",
    "pooled_grid", "sample_per_class", "split_features", "to_rgb_float", "train_head",
    "utility_curve", "write_plots", "write_report", "__version__",
]
