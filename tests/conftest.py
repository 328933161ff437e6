"""Shared fixtures: tiny datasets and one tiny trained run, built once per session."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny synthetic_shapes variant shared by every test that trains or evaluates.
TINY_SHAPES = dict(factors="TCVL", image_size=16, train_size=96, test_size=48, seed=0)


def tiny_shapes_name():
    from keras_ssl.datasets.synthetic_shapes import synthetic_shapes_config

    return "synthetic_shapes/" + synthetic_shapes_config(**TINY_SHAPES).name


@pytest.fixture(autouse=True)
def _clear_gin_after_each_test():
    """Bindings a test parses (a learning rate of 1e30...) must not reach the next test."""
    yield
    import gin

    gin.clear_config()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A TFDS data_dir holding the tiny synthetic_shapes variant."""
    import tensorflow_datasets as tfds

    from keras_ssl.datasets.synthetic_shapes import synthetic_shapes_config

    path = str(tmp_path_factory.mktemp("tfds"))
    tfds.builder(
        "synthetic_shapes", config=synthetic_shapes_config(**TINY_SHAPES), data_dir=path
    ).download_and_prepare()
    return path


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
    return [f"{k} = {v}" for k, v in bindings.items()]


@pytest.fixture(scope="session")
def trained_run(data_dir, tmp_path_factory):
    """A Rotation run of 4 steps, exported at its last step and at step 0."""
    from keras_ssl import config, training
    from keras_ssl.export import export_checkpoint

    model_dir = str(tmp_path_factory.mktemp("run"))
    config.parse_gin(bindings=tiny_run_bindings(data_dir, tiny_shapes_name()))
    outputs = training.train(model_dir)
    initial = export_checkpoint(model_dir, step=0)
    return dict(
        model_dir=model_dir,
        outputs=outputs,
        final_export=os.path.join(model_dir, "export", "step_4"),
        initial_export=initial,
    )
