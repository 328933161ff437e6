"""Shared by the SimCLR, MoCo and NPID tests: tiny methods, a few training steps."""

import keras
import numpy as np
import tensorflow as tf

from keras_ssl.registry import METHODS
from keras_ssl.testing import tiny_backbone


def tiny_method(name, **kwargs):
    net = tiny_backbone()
    return METHODS.get(name)(net, **kwargs)


def example(image, label=0, index=0):
    return {"image": tf.constant(image), "label": tf.constant(label, tf.int64),
            "index": tf.constant(index, tf.int64)}


def random_examples(n=8, size=16, seed=0):
    images = np.random.RandomState(seed).rand(n, size, size, 3).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices(
        {"image": images, "label": np.arange(n) % 3, "index": np.arange(n)}
    )


def tiny_shapes_examples(data_dir, n=16):
    from tests.helpers.tiny_run import tiny_shapes_name
    from keras_ssl.datasets import load_dataset

    images, _ = load_dataset(tiny_shapes_name(), "train", data_dir=data_dir, image_size=16)
    return images.take(n)


def fit_losses(method, examples, batch_size=8, steps=4, epochs=3, learning_rate=0.05):
    """Per-epoch mean losses of `fit` on views drawn once and cached (a fixed task)."""
    keras.utils.set_random_seed(0)
    batches = method.make_dataset(examples, batch_size).cache().repeat()
    method.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9))
    return method.fit(batches, steps_per_epoch=steps, epochs=epochs, verbose=0).history


def orbit_run(data_dir, tmp_path, method, steps=4, **bindings):
    """A keras-ssl-train run of `steps` steps on the tiny synthetic_shapes; returns (outputs, model_dir)."""
    from tests.helpers.method_runs import tiny_train_run

    try:
        run = tiny_train_run(data_dir, str(tmp_path / method), method, steps=steps, export=False,
                             **bindings)
        return run.outputs, run.model_dir
    finally:
        import gin

        gin.clear_config()
