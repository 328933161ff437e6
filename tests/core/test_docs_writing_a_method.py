"""The code of docs/writing_a_method.md: the BYOL plugin installed with pip and trained, the NNCLR sketch trained."""

import os
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO

from tests.helpers.tiny_run import tiny_run_bindings, tiny_shapes_name

DOC = os.path.join(REPO, "docs", "writing_a_method.md")


def _doc_blocks(kind):
    text = open(DOC).read()
    return dict(re.findall(rf"<!-- {kind}: (\S+) -->\n```\w*\n(.*?)```", text, re.S))


def _doc_files():
    return _doc_blocks("file")


def _doc_classes(block, source):
    namespace = {"__name__": f"docs_{block}"}
    exec(compile(source, f"docs/writing_a_method.md:{block}", "exec"), namespace)
    return namespace


def _two_steps(method):
    import keras

    from tests.helpers.contrastive_training import random_examples

    batch = next(iter(method.make_dataset(random_examples(4), 4)))
    method.build_from_batch(batch)
    method.compile(optimizer=keras.optimizers.SGD(0.01))
    return [method.train_step(batch) for _ in range(2)]


def _installed_plugin(tmp_path) -> dict:
    """pip-installs the doc's package into `tmp_path`; the environment that imports it."""
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
    return dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1",
    )


def test_doc_declares_a_complete_package():
    assert set(_doc_files()) == {"setup.cfg", "pyproject.toml", "my_byol.py"}


def test_documented_byol_trains_its_online_probe_from_the_public_bases():
    from keras_ssl.testing import tiny_backbone

    MyBYOL = _doc_classes("my_byol", _doc_files()["my_byol.py"])["MyBYOL"]
    method = MyBYOL(tiny_backbone(), projection_dim=8, hidden_dim=16, num_classes=3)
    metrics = _two_steps(method)[-1]
    assert {"loss", "embedding_std", "probe_loss", "probe_accuracy"} <= set(metrics)


def test_documented_nnclr_sketch_fills_its_support_queue_and_trains():
    import numpy as np

    from keras_ssl.augment.view_specs import ViewSpec
    from keras_ssl.testing import tiny_backbone

    NNCLR = _doc_classes("nnclr", _doc_blocks("snippet")["nnclr"])["NNCLR"]
    method = NNCLR(tiny_backbone(), views=[ViewSpec(size=16)] * 2, support_size=8,
                   projection_dim=8)
    before = method.support.numpy()
    metrics = _two_steps(method)[-1]
    assert np.isfinite(float(metrics["nnclr_loss"]))
    assert int(method.support_pointer.numpy()) == 0  # 2 steps x 4 embeddings in 8 rows
    support = method.support.numpy()
    assert not np.any(support == before)
    np.testing.assert_allclose(np.linalg.norm(support, axis=1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_documented_plugin_installs_lists_and_trains(tmp_path, data_dir):
    env = _installed_plugin(tmp_path)
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


@pytest.mark.slow
def test_documented_plugin_passes_the_installed_contract_harness(tmp_path):
    """What the doc tells a plugin author to run: `check_method` from outside the checkout."""
    env = _installed_plugin(tmp_path)
    test_file = re.search(r"# tests/test_my_byol.py of your package\n(.*?)```",
                          open(DOC).read(), re.S).group(1)
    code = test_file + "test_my_byol_keeps_the_contract()\nprint('contract kept')\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split()[-2:] == ["contract", "kept"]
