"""keras-ssl-eval: evaluation of self-supervised representations from SavedModels.

Reads SavedModels that follow the keras-ssl contract (docs/savedmodel_contract.md)
with TensorFlow alone: neither keras nor keras_ssl is imported. Other models
(a ``.keras`` file, a keras-hub preset, another SavedModel) are read through an
adapter (`keras_ssl_eval.reading.adapters`, ``keras-ssl-eval --model``); only
the Keras kinds import keras.

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

# The public names, each imported from its module on first use (PEP 562): so
# `import keras_ssl_eval` (which keras_ssl does, for the quiet start above)
# loads neither TensorFlow's readers nor the probes, nor matplotlib, until a
# name is used. {name: module}.
_EXPORTS = {
    **dict.fromkeys(["FOLDER_PREFIX"], "contract"),
    **dict.fromkeys(["DEFAULT_CACHE_DIR", "FeatureCache"], "extraction.cache"),
    **dict.fromkeys(["split_features"], "extraction.features"),
    **dict.fromkeys(["PatchSpec", "cut_patches"], "extraction.patches"),
    **dict.fromkeys(["MAX_FEATURE_VALUES", "adaptive_max_pool", "avg_pool", "flatten_features",
                     "pooled_grid"], "extraction.pooling"),
    **dict.fromkeys(["HeadResult", "train_head"], "probes.heads"),
    **dict.fromkeys(["knn_accuracy", "knn_classify"], "probes.knn"),
    **dict.fromkeys(["DEFAULT_L2_GRID", "LinearProbeResult", "fit_linear_probe"],
                    "probes.linear"),
    **dict.fromkeys(["LinearSVM", "fit_svm", "fit_svm_cv"], "probes.svm"),
    **dict.fromkeys(["Protocol", "get_protocol", "protocol_names"], "protocols.base"),
    **dict.fromkeys(["PROTOCOLS", "evaluate", "evaluate_linear"], "protocols.evaluate"),
    **dict.fromkeys(["DEFAULT_SHOTS", "low_shot", "sample_per_class"], "protocols.lowshot"),
    **dict.fromkeys(["labels_needed", "utility_curve"], "protocols.utility"),
    **dict.fromkeys(["DatasetInfo", "load_images", "to_rgb_float"], "reading.data"),
    **dict.fromkeys(["RepresentationModel", "load_representation_model"],
                    "reading.savedmodel"),
    **dict.fromkeys(["ModelSource", "open_model", "parse_endpoints"], "reading.adapters"),
    **dict.fromkeys(["compare_reports", "load_reports"], "reporting.compare"),
    **dict.fromkeys(["write_plots"], "reporting.plots"),
    **dict.fromkeys(["build_report", "markdown_report", "markdown_table", "write_report"],
                    "reporting.report"),
    **dict.fromkeys(["DataSettings", "EvaluationSettings", "GridSettings", "KnnSettings",
                     "LinearSettings", "LowShotSettings", "UtilitySettings"], "settings"),
}


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'keras_ssl_eval' has no attribute {name!r}")
    import importlib  # pylint: disable=import-outside-toplevel

    value = getattr(importlib.import_module(f"keras_ssl_eval.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__version__ = "0.1.0"

__all__ = [
    "DEFAULT_CACHE_DIR", "DEFAULT_L2_GRID", "DEFAULT_SHOTS", "FOLDER_PREFIX",
    "MAX_FEATURE_VALUES", "PROTOCOLS", "DataSettings", "DatasetInfo", "EvaluationSettings",
    "FeatureCache", "GridSettings", "HeadResult", "KnnSettings", "LinearProbeResult",
    "LinearSettings", "LowShotSettings", "UtilitySettings", "LinearSVM", "ModelSource",
    "PatchSpec", "Protocol",
    "RepresentationModel", "adaptive_max_pool",
    "avg_pool", "build_report", "compare_reports", "cut_patches", "evaluate",
    "evaluate_linear", "fit_linear_probe", "fit_svm", "fit_svm_cv", "flatten_features",
    "get_protocol", "protocol_names",
    "knn_accuracy", "knn_classify", "labels_needed", "load_images", "load_reports",
    "load_representation_model", "low_shot", "markdown_report", "markdown_table", "open_model",
    "parse_endpoints",
    "pooled_grid", "sample_per_class", "split_features", "to_rgb_float", "train_head",
    "utility_curve", "write_plots", "write_report", "__version__",
]
