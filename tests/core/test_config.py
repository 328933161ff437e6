"""keras_ssl.config: strict gin bindings, refused in one line when the config is parsed."""

import glob
import inspect
import os
import subprocess
import sys

import gin
import keras
import pytest

from keras_ssl import Method, config, registry
from keras_ssl.building import build_method
from keras_ssl import training  # registers keras_ssl.train, which these tests bind
from tests.helpers import REPO


@pytest.mark.parametrize("binding,suggestion", [
    # Parameters of constructors taking **kwargs: gin accepts any name there, so
    # without the check a misspelling would fail in Keras at train time, after
    # the dataset was prepared.
    ("moco.queue_sizee = 3", "queue_size"),
    ("npid.num_negativs = 3", "num_negatives"),
    ("rotation.num_rotationz = 2", "num_rotations"),
    ("keras_ssl.methods.simclr.temperatur = 0.5", "temperature"),
    # Callables without **kwargs, refused by gin itself: the same one line.
    ("resnet_v2.dept = 18", "depth"),
    ("crop_flip.paddng = 2", "padding"),
    ("keras_ssl.train.batchsize = 8", "batch_size"),
])
def test_misspelled_parameter_is_refused_in_one_line_with_the_closest_name(binding, suggestion):
    with pytest.raises(config.ConfigError) as refused:
        config.parse_gin(bindings=[binding])
    message = str(refused.value)
    misspelled = binding.split("=")[0].strip().split(".")[-1]
    assert "\n" not in message
    assert f".{misspelled}'" in message and f"did you mean {suggestion!r}" in message


def test_scoped_binding_is_checked_too():
    with pytest.raises(config.ConfigError, match=r"'eval/rotation\.num_rotationz'"):
        config.parse_gin(bindings=["eval/rotation.num_rotationz = 2"])


def test_a_name_without_close_match_lists_the_valid_ones():
    with pytest.raises(config.ConfigError, match=r"its parameters: .*queue_size"):
        config.parse_gin(bindings=["moco.xyzzy = 1"])


def test_valid_bindings_of_every_kind_parse():
    config.parse_gin(bindings=[
        "moco.queue_size = 8", "moco.augmentation = 'none'", "moco.name = 'moco_run'",
        "resnet_v2.depth = 10", "crop_flip.padding = 2", "keras_ssl.train.batch_size = 8",
    ])


class _Forwarding(Method):
    """A plugin whose constructor forwards **kwargs, as most methods do."""

    def __init__(self, backbone, strength=1.0, **kwargs):
        super().__init__(backbone, **kwargs)
        self.strength = strength


class _ForwardingFurther(_Forwarding):
    def __init__(self, backbone, depth_of_field=2, **kwargs):
        super().__init__(backbone, **kwargs)


def test_accepted_parameters_follow_kwargs_up_the_class_hierarchy():
    accepted = registry.accepted_parameters(_ForwardingFurther)
    assert {"backbone", "depth_of_field", "strength", "augmentation"} <= accepted
    assert {"name", "dtype", "trainable"} <= accepted  # keras.layers.Layer's keywords
    assert "kwargs" not in accepted and "strenght" not in accepted


def test_accepted_parameters_of_plain_callables():
    class Plain:
        def __init__(self, size=1, **kwargs):
            super().__init__(**kwargs)  # object takes no keywords

    def stack(image, padding=4):
        return image

    def anything(image, **options):
        return image

    assert registry.accepted_parameters(Plain) == {"size"}
    assert registry.accepted_parameters(stack) == {"image", "padding"}
    assert registry.accepted_parameters(anything) is None  # cannot tell: not checked
    assert registry.accepted_parameters(keras.layers.Dense) >= {"units", "name"}


def test_third_party_kwargs_plugin_is_checked_against_what_it_accepts():
    name = "forwarding_probe_plugin"
    registry.METHODS.register(name, _ForwardingFurther)
    try:
        config.parse_gin(bindings=[f"{name}.strength = 2.0", f"{name}.augmentation = 'none'"])
        with pytest.raises(config.ConfigError, match=rf"'{name}\.strenght'.*'strength'"):
            config.parse_gin(bindings=[f"{name}.strenght = 2.0"])
    finally:
        registry.METHODS.unregister(name)


def test_include_of_a_shared_file_works_from_any_directory(tmp_path, monkeypatch):
    import gin

    own = tmp_path / "own.gin"
    own.write_text("include 'gin_configs/backbones/resnet18_v2_cifar.gin'\n"
                   "include 'gin_configs/optimizers/lars.gin'\n"
                   "resnet_v2.depth = 34\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    try:
        config.parse_gin([str(own)])  # outside the repository: found in the keras-ssl checkout
        assert gin.query_parameter("resnet_v2.depth") == 34  # the including file overrides
        assert gin.query_parameter("resnet_v2.small_image_stem") is True
        assert gin.query_parameter("keras_ssl.build_optimizer.name") == "lars"
        config.parse_gin([os.path.join(REPO, "gin_configs", "simclr", "cifar_resnet18.gin")])
        assert gin.query_parameter("resnet_v2.depth") == 18
    finally:
        gin.clear_config()


def test_an_include_that_loads_logs_no_error(tmp_path):
    """gin's package reader logs "Path not found" for each search path that lacks the include."""
    own = tmp_path / "own.gin"
    own.write_text("include 'gin_configs/backbones/resnet10_v2_shapes.gin'\n")
    script = ("from absl import logging; logging.use_absl_handler(); import gin; "
              "import keras_ssl.training; from keras_ssl import config; config.parse_gin(['own.gin']); "
              "print(gin.query_parameter('resnet_v2.depth'))")
    # From a directory without gin_configs: the current directory lacks the include,
    # the keras-ssl checkout has it.
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["10"]
    assert "Path not found" not in done.stderr and "resource_reader" not in done.stderr, done.stderr


def test_a_missing_include_names_the_include_and_the_including_file(tmp_path):
    own = tmp_path / "own.gin"
    own.write_text("resnet_v2.depth = 18\ninclude 'gin_configs/backbones/resnet_v7.gin'\n")
    with pytest.raises(config.ConfigError) as refused:
        config.parse_gin([str(own)])
    message = str(refused.value)
    assert "\n" not in message
    assert "'gin_configs/backbones/resnet_v7.gin'" in message
    assert f"{own}\", line 2" in message and "does not exist" in message


# ---------------------------------------------------------------- unused bindings
@gin.configurable(module="test_config")
def _step_size(base=1.0, scale=1.0, total=10):
    return base * scale / total


@gin.configurable(module="test_config")
def _uses_step(step=None, unused_default=0):
    return step


def _unused(text, call):
    gin.clear_config()
    gin.parse_config(text)
    call()
    return [line.split(":")[0] for line in config.unused_bindings()]


def test_unused_bindings_follow_gins_scopes_callers_and_macros():
    # A scoped call takes the global binding unless a scoped one replaces it.
    text = ("RATE = 2.0\n_step_size.base = %RATE\n_step_size.scale = 3.0\n"
            "fast/_step_size.scale = 5.0\n_uses_step.step = @fast/_step_size()\n")
    assert _unused(text, _uses_step) == ["_step_size.scale"]
    # Called globally too: every binding acts.
    assert _unused(text, lambda: (_uses_step(), _step_size())) == []
    # A scope nothing enters, a macro nothing refers to, a configurable never called,
    # a parameter the caller passes itself.
    text = ("UNUSED = 1\nslow/_step_size.base = 4.0\n_step_size.total = 20\n_uses_step.step = 1\n")
    assert _unused(text, lambda: _step_size(total=5)) == [
        "UNUSED", "_step_size.total", "_uses_step.step", "slow/_step_size.base"]
    gin.clear_config()


def test_a_bound_but_unused_parameter_is_refused_before_the_run_directory_exists(data_dir, tmp_path):
    from keras_ssl.cli_errors import one_line
    from tests.helpers.tiny_run import tiny_run_bindings, tiny_shapes_name

    config.parse_gin(bindings=tiny_run_bindings(data_dir, tiny_shapes_name()) + [
        "moco.queue_size = 16",  # another method's parameter
        "keras_ssl.learning_rate_schedule.total_steps = 3",  # train passes train_steps
    ])
    model_dir = tmp_path / "run"
    with pytest.raises(config.ConfigError) as refused:
        training.train(str(model_dir))
    message = one_line(refused.value)  # as keras-ssl-train prints it, without gin's call note
    assert message.startswith("2 gin bindings would have no effect")
    assert "; moco.queue_size: the method 'moco' is not used (this run's is 'rotation')" in message
    assert ("run: learning_rate_schedule.total_steps: keras-ssl passes this parameter itself "
            "(bind keras_ssl.train.train_steps instead)") in message
    assert not model_dir.exists()


# Every method config under gin_configs/ (not the shared backbone and optimizer files).
METHOD_CONFIGS = sorted(
    os.path.relpath(path, REPO) for path in glob.glob(os.path.join(REPO, "gin_configs", "*", "*.gin"))
    if os.path.basename(os.path.dirname(path)) not in ("backbones", "optimizers")
) + ["gin_configs/quickstart.gin"]
# Checked in every test run; the rest (tens of seconds each at ImageNet sizes) are slow.
QUICK_CONFIGS = ("gin_configs/quickstart.gin", "gin_configs/dino/synthetic_shapes.gin",
                 "gin_configs/simsiam/synthetic_shapes.gin")


class _RunDirectoryReached(Exception):
    pass


@pytest.mark.parametrize("path", [
    path if path in QUICK_CONFIGS else pytest.param(path, marks=pytest.mark.slow)
    for path in METHOD_CONFIGS
])
def test_every_shipped_config_uses_every_binding(path, data_dir, monkeypatch):
    """Trains each config up to its run directory, on the tiny dataset at the config's image size."""
    from keras_ssl import run_dir
    from tests.helpers.tiny_run import TINY_SHAPES, tiny_shapes_name

    def reached(self):
        raise _RunDirectoryReached

    monkeypatch.setattr(run_dir.RunDirectory, "create", reached)
    config.parse_gin([os.path.join(REPO, path)])
    # Bindings that only replace the config's own (or set what train uses anyway), so
    # the run builds fast: the tiny dataset, one-wide backbones, a small kNN subset.
    try:
        backbone = gin.query_parameter("keras_ssl.build_method.backbone")
    except ValueError:  # a recipe without a backbone trains build_method's default
        backbone = inspect.signature(build_method).parameters["backbone"].default
    small = [f"keras_ssl.train.dataset = '{tiny_shapes_name()}'",
             f"keras_ssl.train.data_dir = '{data_dir}'", "keras_ssl.train.deterministic = False"]
    if "widening_factor" in (registry.accepted_parameters(registry.BACKBONES.get(backbone)) or ()):
        small.append(f"{backbone}.widening_factor = 1")
    method = gin.query_parameter("keras_ssl.build_method.method")
    for parameter, value in (("num_examples", TINY_SHAPES["train_size"]), ("num_clusters", 8)):
        try:  # sized to the dataset (NPID's bank, DeepCluster's k-means)
            gin.query_parameter(f"{method}.{parameter}")
            small.append(f"{method}.{parameter} = {value}")
        except ValueError:
            pass
    try:
        monitored = gin.query_parameter("keras_ssl.knn_monitor.every_steps") is not None
    except ValueError:  # not bound: the monitor is off
        monitored = False
    if monitored:
        small.append("keras_ssl.knn_monitor.num_examples = 40")
    config.parse_gin([os.path.join(REPO, path)], small)
    with pytest.raises(_RunDirectoryReached):
        training.train("/nonexistent/never_created")


def test_framework_configurables_are_registered_by_the_modules_named():
    import importlib

    from gin import config as gin_config

    for name, module in config.FRAMEWORK_CONFIGURABLES.items():
        registered = gin_config._REGISTRY.get_match(name)  # pylint: disable=protected-access
        assert registered is not None, name
        assert registered.wrapped.__module__ == importlib.import_module(module).__name__, name
    # Every keras_ssl configurable outside the plugins' registration is in the table.
    own = {selector for selector, _ in gin_config._REGISTRY.items()  # pylint: disable=protected-access
           if selector.startswith("keras_ssl.") and selector.count(".") == 1
           and not selector.startswith(("keras_ssl.methods", "keras_ssl.backbones"))}
    assert own <= set(config.FRAMEWORK_CONFIGURABLES), own - set(config.FRAMEWORK_CONFIGURABLES)


def test_a_framework_configurable_not_yet_imported_names_its_module():
    # A fresh process that imports only keras_ssl.config: keras_ssl.train is unknown there.
    code = ("from keras_ssl import config\n"
            "try:\n    config.parse_gin(bindings=['keras_ssl.train.batch_size = 8'])\n"
            "except config.ConfigError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert "keras_ssl.train is registered by importing keras_ssl.training" in out.stdout, (
        out.stdout + out.stderr)
