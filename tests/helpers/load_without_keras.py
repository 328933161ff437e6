"""Loads a SavedModel where keras and keras_ssl cannot be imported; prints its outputs.

Usage: python load_without_keras.py SAVED_MODEL IMAGES.npy OUT.npz
"""

import sys

from blocked_imports import BLOCKED, block_imports  # This script's folder, first on sys.path.

block_imports()

import json  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

path, images_path, out_path = sys.argv[1:4]
images = tf.constant(np.load(images_path))
model = tf.saved_model.load(path)
outputs = {f"representation/{k}": v.numpy() for k, v in model.signatures["representation"](images=images).items()}
outputs["serving_default/pre_logits"] = model.signatures["serving_default"](images=images)["pre_logits"].numpy()
outputs["call"] = model(images, training=False).numpy()
# Inference first: a training-mode call moves the batch-norm moving statistics.
for training in (False, True):
    for name, value in model.end_points(images, training=training).items():
        outputs[f"end_points_{training}/{name}"] = value.numpy()
outputs["call_training"] = model(images, training=True).numpy()
np.savez(out_path, **outputs)
loaded = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
print(json.dumps({
    "loaded_blocked_modules": loaded,
    "variables": len(model.variables),
    "trainable_variables": len(model.trainable_variables),
    "regularization_losses": len(model.regularization_losses),
}))
