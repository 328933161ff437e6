"""The tiny synthetic_shapes variant and the gin bindings of a seconds-long run on it.

Imports nothing heavy when imported (keras_ssl only inside `tiny_shapes_name`),
so tests/conftest.py can use it where only keras-ssl-eval is installed.
"""

# A tiny synthetic_shapes variant shared by every test that trains or evaluates
# (built once per test run by the `data_dir` fixture of tests/conftest.py).
TINY_SHAPES = dict(factors="TCVL", image_size=16, train_size=96, test_size=48, seed=0)


def tiny_shapes_name():
    """The TFDS name of the `TINY_SHAPES` variant of synthetic_shapes."""
    from keras_ssl.datasets.synthetic_shapes import synthetic_shapes_config

    return "synthetic_shapes/" + synthetic_shapes_config(**TINY_SHAPES).name


def tiny_run_bindings(data_dir, dataset, steps=4, **extra):
    """gin bindings of a seconds-long Rotation run on the tiny dataset."""
    bindings = {
        "keras_ssl.build_method.method": "'rotation'",
        "keras_ssl.build_method.backbone": "'resnet_v2'",
        "resnet_v2.depth": 10,
        "resnet_v2.widening_factor": 1,
        "resnet_v2.small_image_stem": True,
        "keras_ssl.train.dataset": repr(dataset),
        "keras_ssl.train.data_dir": repr(data_dir),
        "keras_ssl.train.image_size": 16,
        "keras_ssl.train.batch_size": 8,
        "keras_ssl.train.train_steps": steps,
        "keras_ssl.train.steps_per_loop": 2,
        "keras_ssl.train.shuffle_buffer": 32,
        "keras_ssl.learning_rate_schedule.base_learning_rate": 0.1,
        **extra,
    }
    backbone = bindings["keras_ssl.build_method.backbone"].strip("'")
    if backbone != "resnet_v2":  # the run refuses bindings of a family it does not build
        bindings = {k: v for k, v in bindings.items()
                    if not k.startswith("resnet_v2.") or k in extra}
    return [f"{k} = {v}" for k, v in bindings.items()]
