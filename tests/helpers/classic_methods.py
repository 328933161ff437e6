"""Shared by the tests of the classic pretext methods: a tiny run, a fit on one fixed batch."""

from tests.helpers.method_runs import tiny_train_run
from tests.helpers.tiny_run import tiny_shapes_name


def train_tiny(data_dir, model_dir, method, steps=8, steps_per_loop=4, **bindings):
    """Trains `method` on the tiny synthetic_shapes with the Orbit loop (batches of 4).

    Returns:
      A `tests.helpers.method_runs.TinyRun`.
    """
    return tiny_train_run(data_dir, model_dir, method, steps=steps, **{
        "keras_ssl.train.steps_per_loop": steps_per_loop,
        "keras_ssl.train.batch_size": 4,
        "keras_ssl.train.shuffle_buffer": 96,
        **bindings})


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
