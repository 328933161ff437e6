"""The plugin of docs/writing_a_method.md (BYOL on the public toolkit), installed with pip and trained."""

import os
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO

from tests.helpers.tiny_run import tiny_run_bindings, tiny_shapes_name

DOC = os.path.join(REPO, "docs", "writing_a_method.md")


def _doc_files():
    text = open(DOC).read()
    return dict(re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", text, re.S))


def test_doc_declares_a_complete_package():
    assert set(_doc_files()) == {"setup.cfg", "pyproject.toml", "my_byol.py"}


@pytest.mark.slow
def test_documented_plugin_installs_lists_and_trains(tmp_path, data_dir):
    package = tmp_path / "keras-ssl-my-byol"
    package.mkdir()
    for name, content in _doc_files().items():
        (package / name).write_text(content)
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(package)],
        check=True, capture_output=True, timeout=300,
    )
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1",
    )
    listing = subprocess.run(
        [sys.executable, "-m", "keras_ssl.cli.list"], capture_output=True, text=True, env=env,
        timeout=120,
    )
    assert re.search(r"my_byol\s+keras-ssl-my-byol 0.1.0", listing.stdout), listing.stdout

    bindings = tiny_run_bindings(data_dir, tiny_shapes_name(), steps=4)
    bindings[0] = "keras_ssl.build_method.method = 'my_byol'"
    bindings += ["my_byol.projection_dim = 8", "my_byol.hidden_dim = 16"]
    model_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "keras_ssl.cli.train", f"--model_dir={model_dir}"]
        + [f"--gin_bindings={b}" for b in bindings],
        capture_output=True, text=True, env=env, timeout=300, cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "embedding_std" in result.stdout
    assert (model_dir / "export" / "step_4" / "saved_model.pb").exists()
