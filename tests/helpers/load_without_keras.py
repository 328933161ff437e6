"""Loads a SavedModel where keras and keras_ssl cannot be imported; prints its outputs.

Usage: python load_without_keras.py SAVED_MODEL IMAGES.npy OUT.npz
"""

import importlib.abc
import importlib.machinery
import sys

BLOCKED = ("keras", "keras_ssl", "keras_ssl_methods", "tf_keras")


class _Block(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the blocked packages (TensorFlow looks them up) but fails to import them."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        raise ImportError(f"{spec.name} cannot be imported in this process")

    def exec_module(self, module):
        raise ImportError(f"{module.__name__} cannot be imported in this process")


sys.meta_path.insert(0, _Block())

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
