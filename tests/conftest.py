"""Shared fixtures: tiny datasets and one tiny trained run, built once per session.

Under pytest-xdist (`scripts/test.sh` runs two workers) each session fixture
here is still built once per run, not once per worker: the first worker to
need it builds it under a file lock, the other reads what it wrote.
"""

import fcntl
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

import pytest  # noqa: E402

from tests.helpers.tiny_run import TINY_SHAPES, tiny_run_bindings, tiny_shapes_name  # noqa: E402


@pytest.fixture(autouse=True)
def _clear_gin_after_each_test():
    """Bindings a test parses (a learning rate of 1e30...) must not reach the next test."""
    yield
    if "gin" in sys.modules:  # Not a dependency of keras-ssl-eval alone (tests/eval).
        sys.modules["gin"].clear_config()


def skip_without_keras_ssl(why):
    """Skips the test where keras_ssl is not installed or `KERAS_SSL_EVAL_ONLY=1` blocks it.

    Only there: elsewhere a keras_ssl that fails to import fails the test.
    """
    import importlib.util

    if os.environ.get("KERAS_SSL_EVAL_ONLY") == "1" or importlib.util.find_spec("keras_ssl") is None:
        pytest.skip(f"needs keras_ssl: {why}")


def pytest_configure(config):
    """Registers keras-ssl's own gin configurables, as the binaries do before parsing.

    `keras_ssl.config` imports nothing above it (no import circle), so
    `keras_ssl.train` and the optimizer's configurables exist once
    `keras_ssl.training` is imported; every test may then parse a shipped
    config, whatever ran before it in its worker. (A process that has not
    imported it is tested in tests/core/test_config.py.)
    """
    del config
    import importlib.util

    if os.environ.get("KERAS_SSL_EVAL_ONLY") != "1" and importlib.util.find_spec("keras_ssl"):
        import keras_ssl.training  # noqa: F401  pylint: disable=unused-import


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
    """A TFDS data_dir holding the tiny synthetic_shapes variant (skips without keras_ssl)."""
    skip_without_keras_ssl("synthetic_shapes is keras_ssl's dataset")

    def build(path):
        import tensorflow_datasets as tfds

        from keras_ssl.datasets.synthetic_shapes import synthetic_shapes_config

        tfds.builder(
            "synthetic_shapes", config=synthetic_shapes_config(**TINY_SHAPES), data_dir=path
        ).download_and_prepare()
        return path

    return built_once(tmp_path_factory, "tfds", build)


@pytest.fixture(scope="session")
def trained_run(data_dir, tmp_path_factory):
    """A Rotation run of 4 steps, exported at its last step and at step 0 (skips without keras_ssl)."""
    skip_without_keras_ssl("the run trains with keras_ssl")

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
    """An uninterrupted keras-ssl-train run of 8 steps (`tests.helpers.runs.run_bindings`: loops of 2, a
    checkpoint after each), the baseline the reproducibility and scale-out runs must match."""

    def build(model_dir):
        from tests.helpers.runs import run_bindings, run_training

        run_training(model_dir, run_bindings(data_dir, 8))
        return model_dir

    return built_once(tmp_path_factory, "reference", build)


# The modules that take longest, longest first (CI, 2 cores). They run first,
# so that under pytest-xdist's per-module scheduling (scripts/test.sh) no long
# module starts when the others are done; the rest keep their order.
LONGEST_MODULES = [
    "core/test_scaleout.py", "methods/test_method_contract.py", "core/test_reproducibility.py",
    "core/cli/test_bad_input.py", "methods/test_moco.py", "core/test_docs_writing_a_method.py",
]
_TESTS = os.path.dirname(os.path.abspath(__file__))
for _name in LONGEST_MODULES:  # A moved or renamed module must not drop out of the order.
    assert os.path.isfile(os.path.join(_TESTS, _name)), f"LONGEST_MODULES: no tests/{_name}"


def _module_key(item):
    """The module's path under tests/, e.g. `core/test_scaleout.py` (names repeat across folders)."""
    return os.path.relpath(str(item.path), _TESTS).replace(os.sep, "/")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(_module_key(item), len(rank)))
