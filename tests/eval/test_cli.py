"""End-to-end tests of the keras-ssl-eval binary and keras_ssl_eval.reporting.report."""

import json
import os
import subprocess
import sys

import pytest

from keras_ssl_eval.reporting import report
from keras_ssl_eval.protocols.evaluate import evaluate_linear
from keras_ssl_eval.settings import DataSettings
from keras_ssl_eval.testing import run_eval_main, save_toy_savedmodel, write_image_folder
from tests.helpers import REPO

_EVAL_DIR = os.path.join(REPO, "evaluation")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Two contract SavedModels and a tiny labelled folder dataset with splits."""
    root = tmp_path_factory.mktemp("cli")
    first = save_toy_savedmodel(str(root / "first"), seed=0, name="toy_a")
    second = save_toy_savedmodel(str(root / "second_model"), seed=1, name=None,
                                 block1_channels=8)
    write_image_folder(str(root / "data" / "train"), {"a": 8, "b": 8}, size=16, seed=0)
    write_image_folder(str(root / "data" / "test"), {"a": 4, "b": 4}, size=16, seed=1)
    return {"models": [first, second], "dataset": f"folder:{root / 'data'}"}


def _run_in_process(argv):
    run_eval_main(argv)


def test_cli_writes_results(workspace, tmp_path, capsys):
    out = tmp_path / "eval"
    _run_in_process([f"--saved_model={workspace['models'][0]}",
                     f"--saved_model={workspace['models'][1]}",
                     f"--dataset={workspace['dataset']}", "--layers=after_root,pre_logits",
                     f"--output={out}", "--batch_size=8", "--max_train_examples=12",
                     "--l2_grid=1e-4,1e-2", f"--cache_dir={tmp_path / 'cache'}"])
    printed = capsys.readouterr().out
    assert "| layer | toy_a | second_model |" in printed

    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"schema_version", "protocol", "created", "settings", "versions",
                            "dataset", "models"}
    assert results["versions"]["keras_ssl_eval"] == "0.1.0"
    assert results["settings"]["layers"] == ["after_root", "pre_logits"]
    assert results["settings"]["l2_grid"] == [1e-4, 1e-2]
    assert results["dataset"]["class_names"] == ["a", "b"]
    assert results["dataset"]["train"]["num_examples"] == 12
    assert results["dataset"]["test"]["num_examples"] == 8
    assert [m["name"] for m in results["models"]] == ["toy_a", "second_model"]
    layer = results["models"][0]["linear"]["pre_logits"]
    assert set(layer) >= {"test_accuracy", "train_accuracy", "l2", "iterations", "converged",
                          "grad_norm", "feature_dim", "endpoint_shape"}
    assert layer["test_accuracy"] >= 0.75  # The classes differ in mean colour.
    assert results["models"][1]["linear"]["pre_logits"]["feature_dim"] == 8
    assert (out / "results.md").read_text() == printed


def test_cli_unknown_layer(workspace, tmp_path):
    with pytest.raises(KeyError, match="block7.*available end-points"):
        _run_in_process([f"--saved_model={workspace['models'][0]}",
                         f"--dataset={workspace['dataset']}", "--layers=block7",
                         f"--output={tmp_path}", "--cache_dir="])


def test_cli_folder_split_slices(workspace, tmp_path):
    # Class folders without split folders: the probe's train and test splits
    # are slices of the one folder.
    write_image_folder(str(tmp_path / "data"), {"a": 8, "b": 8}, size=16, seed=2)
    out = tmp_path / "eval"
    _run_in_process([f"--saved_model={workspace['models'][0]}",
                     f"--dataset=folder:{tmp_path / 'data'}", "--layers=pre_logits",
                     "--train_split=train[:75%]", "--test_split=train[75%:]",
                     f"--output={out}", "--batch_size=8", "--l2_grid=1e-2", "--cache_dir="])
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"]["train"]["num_examples"] == 12
    assert results["dataset"]["test"]["num_examples"] == 4
    assert results["settings"]["train_split"] == "train[:75%]"


def test_unlabelled_dataset_is_an_error(workspace, tmp_path):
    write_image_folder(str(tmp_path / "unlabelled"), 4, size=16)
    with pytest.raises(ValueError, match="has no labels"):
        evaluate_linear(workspace["models"][:1], f"folder:{tmp_path / 'unlabelled'}",
                        data=DataSettings(train_split="train", test_split="train"))


def test_markdown_table_layout():
    # A report of schema version 1 (the linear probe under "layers") is read as well.
    fake = {"dataset": {"name": "cifar10"}, "models": [
        {"name": "rot|ation", "layers": {"block3": {"test_accuracy": 0.5},
                                         "pre_logits": {"test_accuracy": 0.554}}},
        {"name": "exemplar", "layers": {"pre_logits": {"test_accuracy": 0.46}}}]}
    table = report.markdown_table(fake)
    assert "| layer | rot\\|ation | exemplar |" in table
    assert "| block3 | 50.0 | - |" in table and "| pre_logits | 55.4 | 46.0 |" in table


def test_build_report_names_models():
    built = report.build_report(
        [{"path": "/m/run1/", "metadata": {}, "layers": {}},
         {"path": "/m/x", "metadata": {"name": "run1"}, "layers": {}}],
        settings={"seed": 0}, dataset={"name": "d"})
    assert [m["name"] for m in built["models"]] == ["run1", "run1 #2"]
    assert built["schema_version"] == report.SCHEMA_VERSION


@pytest.mark.slow
def test_cli_runs_without_keras(workspace, tmp_path):
    """The binary works in a process where keras and keras_ssl cannot be imported."""
    out = tmp_path / "eval"
    code = ("import sys\n"
            "for name in ('keras', 'keras_ssl', 'keras_ssl_methods', 'tf_keras'):\n"
            "    sys.modules[name] = None  # Any import of them now fails.\n"
            "from keras_ssl_eval.cli.eval import run\n"
            "sys.argv = ['keras-ssl-eval'] + sys.argv[1:]\n"
            "try:\n"
            "    run()\n"
            "except SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            "# TFDS sources too: tensorflow_datasets imports keras when it can.\n"
            "from keras_ssl_eval.reading.data import load_images\n"
            "try:\n"
            f"    load_images('mnist', 'train', data_dir={str(tmp_path / 'tfds')!r})\n"
            "except FileNotFoundError as e:\n"
            "    print('TFDS-OK', e)\n")
    env = dict(os.environ, PYTHONPATH=_EVAL_DIR, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-c", code, f"--saved_model={workspace['models'][0]}",
         f"--dataset={workspace['dataset']}", "--layers=pre_logits", f"--output={out}",
         "--l2_grid=1e-3", f"--cache_dir={tmp_path / 'cache'}"], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| pre_logits |" in proc.stdout
    assert "TFDS-OK" in proc.stdout and "not prepared" in proc.stdout
    assert json.loads((out / "results.json").read_text())["models"][0]["name"] == "toy_a"


# The evaluation tests that need no trained model: all of them must pass where
# keras and keras_ssl cannot be imported, as the evaluation promises.
_KERAS_FREE_TESTS = ("test_protocols.py", "test_registry.py", "test_linear.py", "test_heads.py",
                     "test_features.py", "test_savedmodel.py", "test_data.py", "test_eval_only.py",
                     "test_any_model.py")


@pytest.mark.slow
def test_evaluation_tests_pass_without_keras(tmp_path):
    here = os.path.dirname(os.path.abspath(__file__))
    code = ("import sys\n"
            "for name in ('keras', 'keras_ssl', 'keras_ssl_methods', 'tf_keras'):\n"
            "    sys.modules[name] = None  # Any import of them now fails.\n"
            "import pytest\n"
            "sys.exit(pytest.main(sys.argv[1:]))\n")
    files = [os.path.join(here, name) for name in _KERAS_FREE_TESTS]
    proc = subprocess.run(
        [sys.executable, "-c", code, "-q", "-m", "not slow", "-p", "no:cacheprovider",
         f"--basetemp={tmp_path / 'pytest'}", *files],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_SSL_EVAL_ONLY="1"),
        capture_output=True, text=True, timeout=900, check=False, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout.splitlines()[-1]
