"""Shared by the tests of the classic pretext methods: a tiny keras-ssl-train run."""

import json
import os

from conftest import tiny_run_bindings, tiny_shapes_name


def train_tiny(data_dir, model_dir, method, steps=8, steps_per_loop=4, **bindings):
    """Trains `method` on the tiny synthetic_shapes with the Orbit loop.

    Returns `(losses per loop, metrics of the last loop, export dir, metadata)`.
    """
    from keras_ssl import config, training

    config.parse_gin(bindings=tiny_run_bindings(
        data_dir, tiny_shapes_name(), steps=steps,
        **{"keras_ssl.build_method.method": repr(method),
           "keras_ssl.train.steps_per_loop": steps_per_loop,
           "keras_ssl.train.batch_size": 4,
           "keras_ssl.train.shuffle_buffer": 96,
           **bindings},
    ))
    losses = []
    original = training.MethodTrainer.train_loop_end

    def record(self):
        out = original(self)
        losses.append(out["loss"])
        return out

    training.MethodTrainer.train_loop_end = record
    try:
        outputs = training.train(model_dir)
    finally:
        training.MethodTrainer.train_loop_end = original
    export = os.path.join(model_dir, "export", f"step_{steps}")
    with open(os.path.join(export, "assets", "keras_ssl.json")) as f:
        metadata = json.load(f)
    return losses, outputs, export, metadata


def fit_losses(method, data_dir, batch_size=4, steps=10, learning_rate=0.05, image_size=16):
    """Fits `method` on ONE fixed batch of the tiny synthetic_shapes (views drawn once).

    Returns the mean training loss of the first and of the second half of the steps.
    """
    import keras

    from keras_ssl.datasets import load_dataset

    images, _ = load_dataset(tiny_shapes_name(), "train", data_dir=data_dir, image_size=image_size)
    batches = method.make_dataset(images.take(batch_size), batch_size).cache().repeat()
    method.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9))
    history = method.fit(batches, steps_per_epoch=steps // 2, epochs=2, verbose=0).history
    return history["loss"]
