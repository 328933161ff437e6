"""A Keras user's process without keras_ssl: loads portable `.keras` backbones and fine-tunes them.

Usage: python load_keras_without_keras_ssl.py CASES.json OUT.json

CASES.json is a list of `{"name", "keras", "saved_model", "images", "labels",
"num_classes", "run_eagerly"}` (paths; images and labels as .npy;
`run_eagerly` as `compile` takes it, to skip tracing where the graph adds
nothing to check). For each case this loads
the `.keras` file with `safe_mode=True`, compares every end-point with the
contract SavedModel's `representation` signature on the same images, then
puts a Dense head on `pre_logits`, compiles and fits it for a few steps.
Writes, per case, the largest difference per end-point, how many backbone
weights the fit changed, the losses and the module of every layer.
"""

import sys

from blocked_imports import block_imports  # This script's folder, first on sys.path.

block_imports(("keras_ssl", "keras_ssl_methods"))

import json  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

cases_path, out_path = sys.argv[1:3]
results = {}
started = time.time()
for case in json.load(open(cases_path)):
    images = np.load(case["images"])
    labels = np.load(case["labels"])
    model = keras.saving.load_model(case["keras"], safe_mode=True)
    outputs = model(images)
    reference = tf.saved_model.load(case["saved_model"]).signatures["representation"](
        images=tf.constant(images))
    differences = {name: float(np.abs(np.asarray(outputs[name]) - reference[name].numpy()).max())
                   for name in reference}
    logits = keras.layers.Dense(case["num_classes"], name="classifier")(model.output["pre_logits"])
    classifier = keras.Model(model.input, logits)
    classifier.compile(optimizer="adam",
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                       run_eagerly=case.get("run_eagerly", False))
    before = [w.numpy() for w in model.trainable_weights]
    history = classifier.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    changed = sum(not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights))
    results[case["name"]] = {
        "differences": differences,
        "output_dtypes": sorted({keras.backend.standardize_dtype(v.dtype) for v in outputs.values()}),
        "trainable_weights": len(before),
        "changed_weights": int(changed),
        "loss": [float(x) for x in history.history["loss"]],
        "steps": int(classifier.optimizer.iterations.numpy()),
        "layer_modules": sorted({type(layer).__module__ for layer in model._flatten_layers()}),
        "seconds": time.time() - started,
    }
results["_blocked_modules_loaded"] = sorted(
    m for m in sys.modules if m.split(".")[0] in ("keras_ssl", "keras_ssl_methods")
    and sys.modules[m] is not None)
with open(out_path, "w") as f:
    json.dump(results, f, indent=1)
