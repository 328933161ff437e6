"""Shared fixtures: tiny datasets and one tiny trained run, built once per session.

Under pytest-xdist (`scripts/test.sh` runs two workers) each session fixture
here is still built once per run, not once per worker: the first worker to
need it builds it under a file lock, the other reads what it wrote.
"""

import fcntl
import json
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


def built_once(tmp_path_factory, name, build):
    """`build(directory)` run once per test run, even across xdist workers.

    `build` fills the new `directory` and returns something JSON can hold;
    a worker that finds it already built gets that value back instead.
    """
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return build(str(tmp_path_factory.mktemp(name)))
    root = tmp_path_factory.getbasetemp().parent  # shared by the workers of this run
    directory, result = root / name, root / f"{name}.json"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not result.exists():
                directory.mkdir()
                result.write_text(json.dumps(build(str(directory))))
            return json.loads(result.read_text())
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A TFDS data_dir holding the tiny synthetic_shapes variant."""

    def build(path):
        import tensorflow_datasets as tfds

        from keras_ssl.datasets.synthetic_shapes import synthetic_shapes_config

        tfds.builder(
            "synthetic_shapes", config=synthetic_shapes_config(**TINY_SHAPES), data_dir=path
        ).download_and_prepare()
        return path

    return built_once(tmp_path_factory, "tfds", build)


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

    def build(model_dir):
        import gin

        from keras_ssl import config, training
        from keras_ssl.export import export_checkpoint

        config.parse_gin(bindings=tiny_run_bindings(data_dir, tiny_shapes_name()))
        try:
            outputs = training.train(model_dir)
            initial = export_checkpoint(model_dir, step=0)
        finally:
            gin.clear_config()
        return dict(
            model_dir=model_dir,
            outputs={k: float(v) for k, v in outputs.items()},
            final_export=os.path.join(model_dir, "export", "step_4"),
            initial_export=initial,
        )

    return built_once(tmp_path_factory, "run", build)


@pytest.fixture(scope="session")
def reference_run(data_dir, tmp_path_factory):
    """An uninterrupted keras-ssl-train run of 8 steps (`_runs.run_bindings`: loops of 2, a
    checkpoint after each), the baseline the reproducibility and scale-out runs must match."""

    def build(model_dir):
        from _runs import run_bindings, run_training

        run_training(model_dir, run_bindings(data_dir, 8))
        return model_dir

    return built_once(tmp_path_factory, "reference", build)


# The modules that take longest, longest first (CI, 2 cores). They run first,
# so that under pytest-xdist's per-module scheduling (scripts/test.sh) no long
# module starts when the others are done; the rest keep their order.
LONGEST_MODULES = [
    "test_scaleout.py", "test_method_contract.py", "test_reproducibility.py", "test_binaries.py",
    "test_moco.py", "test_docs_example.py",
]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
