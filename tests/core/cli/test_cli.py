"""The binaries: where they live, how they define flags, and that they start quietly.

Every console script is `run` of a module `<package>.cli.<binary>` whose flags
are `_NAME = flags.DEFINE_...(...)` holders at its top; no other module
defines flags. Run as a user runs them (a subprocess, TensorFlow's log level
unset), the binaries print their own lines and none of TensorFlow's, absl's
or the libraries' start-up noise; `--verbosity=0` brings the logs back.
"""

import ast
import configparser
import os
import pathlib
import re
import subprocess
import sys

import pytest

from keras_ssl_eval import quiet
from tests.helpers import REPO
from tests.helpers.forkserver import ENTRY_POINTS

_SETUP_FILES = ("setup.cfg", "evaluation/setup.cfg", "plugins/setup.cfg")
_PACKAGES = ("keras_ssl", "evaluation/keras_ssl_eval", "plugins/keras_ssl_methods")

# What a user saw before the first line of a binary: TensorFlow's C++ start-up
# logs, absl-formatted library logs (I1129 12:00:00.000 ... file.py:10] ...),
# Orbit's summaries and the libraries' deprecation warnings.
_NOISE = ("oneDNN", "cuda", "CUDA", "cuInit", "cpu_feature_guard", "I0", "W0", "Orbit",
          "deprecat", "Deprecat")
_ABSL_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d", re.MULTILINE)


def _console_scripts():
    """`{binary: "module:function"}` of the three distributions' setup.cfg files."""
    scripts = {}
    for setup in _SETUP_FILES:
        parser = configparser.ConfigParser()
        parser.read(os.path.join(REPO, setup))
        for line in parser["options.entry_points"]["console_scripts"].strip().splitlines():
            name, target = (part.strip() for part in line.split("="))
            scripts[name] = target
    return scripts


def _is_flag_definition(node):
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr.startswith("DEFINE"))


def _python_files():
    for package in _PACKAGES:
        yield from sorted(pathlib.Path(REPO, package).rglob("*.py"))


def test_every_binary_is_run_of_its_cli_module():
    scripts = _console_scripts()
    assert len(scripts) == 9, scripts
    for binary, target in scripts.items():
        module, function = target.split(":")
        assert function == "run", target
        # keras-ssl-prepare-data -> <package>.cli.prepare_data
        assert module.split(".")[1:] == ["cli", binary.removeprefix("keras-ssl-").replace("-", "_")]
    # The fork server starts the same functions.
    assert ENTRY_POINTS.items() <= scripts.items()


def test_only_binaries_define_flags_and_only_as_module_level_holders():
    binaries = []
    for path in _python_files():
        tree = ast.parse(path.read_text(), str(path))
        definitions = [node for node in ast.walk(tree) if _is_flag_definition(node)]
        if "cli" not in path.parts:
            assert not definitions, f"{path} defines absl flags; only binaries (*/cli/*.py) may"
            continue
        # keras-ssl-eval's settings flags are made from the settings dataclasses, one per
        # field, by the binary's own define_setting_flags (so fields and protocols added
        # later get theirs); its other flags are holders as everywhere.
        derived = {id(node) for statement in tree.body
                   if isinstance(statement, ast.FunctionDef)
                   and statement.name == "define_setting_flags"
                   for node in ast.walk(statement) if _is_flag_definition(node)}
        definitions = [node for node in definitions if id(node) not in derived]
        holders = [statement.value for statement in tree.body
                   if isinstance(statement, ast.Assign) and _is_flag_definition(statement.value)
                   and len(statement.targets) == 1
                   and re.fullmatch(r"_[A-Z0-9_]+", getattr(statement.targets[0], "id", ""))]
        assert len(holders) == len(definitions), (
            f"{path}: every flag must be a module-level `_NAME = flags.DEFINE_...` holder")
        # No other style: no `flags.FLAGS.name` reads, no `flag_values=` arguments.
        source = path.read_text()
        assert "FLAGS." not in source.replace('FLAGS["verbosity"]', ""), path
        assert "flag_values=" not in source or derived, path
        binaries.append(path.stem)
    assert "train" in binaries and "eval" in binaries and "colorize" in binaries


def test_old_import_paths_of_the_library_functions_still_work():
    from keras_ssl.export import export_checkpoint, export_method

    assert all(map(callable, (export_checkpoint, export_method)))


@pytest.mark.parametrize("argv, orig_argv, expected", [
    (["/venv/bin/keras-ssl-train", "--model_dir=x"], ["python", "/venv/bin/keras-ssl-train"], True),
    (["-m"], ["python", "-m", "keras_ssl.cli.train", "--model_dir=x"], True),
    (["-m"], ["python", "-m", "keras_ssl_eval.cli.eval"], True),
    (["-m"], ["python", "-m", "keras_ssl_methods.cli.colorize"], True),
    (["-m"], ["python", "-m", "keras_ssl.sweep.cell"], False),
    (["-m"], ["python", "-m", "pytest", "-m", "keras_ssl.cli.train"], False),
    (["-c"], ["python", "-c", "import keras_ssl"], False),
    (["notebook.py"], ["python", "notebook.py"], False),
])
def test_started_as_binary(argv, orig_argv, expected):
    assert quiet.started_as_binary(argv, orig_argv) is expected


def test_verbosity_given():
    assert quiet.verbosity_given(["keras-ssl-list", "--verbosity=0"])
    assert quiet.verbosity_given(["keras-ssl-list", "-v", "1"])
    assert quiet.verbosity_given(["keras-ssl-list", "--v=-1"])
    assert not quiet.verbosity_given(["keras-ssl-list", "--verbose_name=x"])
    assert not quiet.verbosity_given(["keras-ssl-prepare-data", "--", "--verbosity"])


def _user_env():
    """The environment of a user's shell: TensorFlow's log level and the GPUs not chosen."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for name in ("TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES"):
        env.pop(name, None)
    return env


def _console_script(binary):
    """The installed console script (next to this interpreter, in the environment's bin/)."""
    return os.path.join(os.path.dirname(sys.executable), binary)


def _assert_quiet(result):
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert not [noise for noise in _NOISE if noise in output], output
    assert not _ABSL_LINE.search(output), output


@pytest.mark.slow
@pytest.mark.parametrize("command", [
    [_console_script("keras-ssl-list")],
    [sys.executable, "-m", "keras_ssl.cli.list"],
], ids=["console_script", "python_m"])
def test_list_prints_its_listing_and_nothing_else(command):
    result = subprocess.run(command, capture_output=True, text=True, env=_user_env(), cwd=REPO,
                            timeout=300, check=False)
    _assert_quiet(result)
    assert result.stdout.startswith("methods (keras_ssl.methods):\n"), result.stdout
    assert re.search(r"^  rotation +keras-ssl-methods", result.stdout, re.MULTILINE)
    assert result.stdout.rstrip().endswith("and folder:/path/to/images")
    assert result.stderr == ""


@pytest.mark.slow
def test_eval_prints_plain_progress_lines_and_verbosity_brings_the_logs_back(tmp_path):
    from keras_ssl_eval.testing import save_toy_savedmodel, write_image_folder

    model = save_toy_savedmodel(str(tmp_path / "toy"), seed=0, name="toy_a", block1_channels=8)
    write_image_folder(str(tmp_path / "data" / "train"), {"a": 6, "b": 6}, size=16, seed=0)
    write_image_folder(str(tmp_path / "data" / "test"), {"a": 3, "b": 3}, size=16, seed=1)
    common = [f"--saved_model={model}", f"--dataset=folder:{tmp_path / 'data'}",
              "--layers=pre_logits", "--l2_grid=0.01", "--plots=false", "--progress=false",
              "--cache_dir="]

    result = subprocess.run(
        [_console_script("keras-ssl-eval"), *common, f"--output={tmp_path / 'quiet'}"],
        capture_output=True, text=True, env=_user_env(), timeout=300, check=False)
    _assert_quiet(result)
    assert "| layer | toy_a |" in result.stdout
    progress = result.stderr.splitlines()
    assert "extracted features of toy (pre_logits) on 12 train images ..." in progress[0]
    assert "extracted features of toy (pre_logits) on 6 test images ..." in progress[1]
    assert progress[2].startswith("toy_a, pre_logits: linear probe test accuracy ")
    assert progress[3].startswith("wrote ") and "results.json" in progress[3]

    verbose = subprocess.run(
        [_console_script("keras-ssl-eval"), *common, f"--output={tmp_path / 'verbose'}",
         "--verbosity=0"],
        capture_output=True, text=True, env=_user_env(), timeout=300, check=False)
    assert verbose.returncode == 0, verbose.stderr
    assert re.search(r"^I\d{4} .*features\.py:\d+\] extracted features of toy", verbose.stderr,
                     re.MULTILINE), verbose.stderr


@pytest.mark.slow
def test_quiet_binaries_hide_tensorflow_deprecation_notices():
    # TFDS's reader calls the deprecated CounterV2 on every split it reads,
    # which printed two notices in the middle of keras-ssl-eval's progress.
    script = ("import sys, tensorflow as tf\n"
              "from keras_ssl_eval import quiet\n"
              "quiet.quiet_library_logs(verbosity_flag_present=len(sys.argv) > 1)\n"
              "tf.data.experimental.Counter()\n"
              "print('done')\n")
    quiet_run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                               env=_user_env(), timeout=300, check=False)
    assert quiet_run.returncode == 0, quiet_run.stderr
    assert "deprecated" not in quiet_run.stdout + quiet_run.stderr
    verbose_run = subprocess.run([sys.executable, "-c", script, "verbose"], capture_output=True,
                                 text=True, env=_user_env(), timeout=300, check=False)
    assert "CounterV2" in verbose_run.stderr, verbose_run.stderr
