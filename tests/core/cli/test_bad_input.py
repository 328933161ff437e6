"""The binaries' answers to a user's mistakes, run as the user runs them (subprocesses).

Each mistake -- a missing or bad flag, a step or path that is not there, a
dataset that cannot be prepared, a misspelled gin binding -- must end in a
non-zero exit and one line saying what is wrong, never in a traceback.

Every binary start imports TensorFlow (10-15 s on 2 busy cores), so the
cases run as forks of one process that imported it already (`tests.helpers.forkserver`),
a few at a time, in one module fixture; each test then reads its own answer.
"""

import os
import pathlib
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers.forkserver import run_binary
from tests.helpers import REPO

pytestmark = pytest.mark.slow


# Binaries running at the same time: a few, for 2 cores.
_CONCURRENT_RUNS = 3


def _run(binary, *args, timeout=600):
    return run_binary(
        binary, *args, timeout=timeout, cwd=REPO,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1"),
    )


def _assert_refused(result, *fragments):
    """Non-zero exit, no traceback, and one output line holding every fragment."""
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if fragments[0] in line]
    assert any(all(f in line for f in fragments) for line in lines), output


def _cases(tmp, toy_savedmodel, trained_run):
    """`{case: (binary, arguments, fragments its one line must hold)}`."""
    folder = tmp / "folder"
    return {
        # keras-ssl-export
        "export without --model_dir": (
            "keras-ssl-export", [], ["--model_dir", "must have a value"]),
        "export with a step that is not a number": (
            "keras-ssl-export", [f"--model_dir={tmp}", "--step=abc"], ["--step=abc"]),
        "export of a directory without checkpoints": (
            "keras-ssl-export", [f"--model_dir={tmp / 'empty'}"],
            ["keras-ssl-export:", "No checkpoint", str(tmp / "empty")]),
        "export of a step that was not kept": (
            "keras-ssl-export", [f"--model_dir={trained_run['model_dir']}", "--step=3"],
            ["keras-ssl-export:", "step 3", "available steps: [0, 2, 4]"]),
        # keras-ssl-eval
        "eval without flags": (
            "keras-ssl-eval", [], ["Missing flag(s)", "--saved_model", "--output"]),
        "eval of a missing SavedModel": (
            "keras-ssl-eval",
            [f"--saved_model={tmp / 'nothing'}", "--dataset=cifar10", f"--output={tmp / 'out'}"],
            ["keras-ssl-eval:", str(tmp / "nothing")]),
        "eval with a batch size of 0": (
            "keras-ssl-eval",
            [f"--saved_model={toy_savedmodel}", "--dataset=cifar10", f"--output={tmp / 'out'}",
             "--batch_size=0"],
            ["--batch_size=0"]),
        "eval of a layer the model lacks": (
            "keras-ssl-eval",
            [f"--saved_model={toy_savedmodel}", f"--dataset=folder:{folder}", "--layers=block7",
             f"--output={tmp / 'out'}", "--cache_dir="],
            ["keras-ssl-eval:", "block7"]),
        # keras-ssl-prepare-data
        "prepare-data without a name": (
            "keras-ssl-prepare-data", [], ["Name at least one dataset"]),
        "prepare-data of an unknown dataset": (
            "keras-ssl-prepare-data", ["no_such_dataset_xyz", f"--data_dir={tmp / 'tfds'}"],
            ["keras-ssl-prepare-data:", "no_such_dataset_xyz", str(tmp / "tfds")]),
        "prepare-data of ImageNet without its manual files": (
            "keras-ssl-prepare-data", ["imagenet2012", f"--data_dir={tmp / 'tfds'}"],
            ["keras-ssl-prepare-data:", "'imagenet2012'", str(tmp / "tfds" / "downloads" / "manual")]),
        # keras-ssl-colorize
        "colorize without flags": (
            "keras-ssl-colorize", [], ["--saved_model", "must have a value"]),
        "colorize with a missing SavedModel": (
            "keras-ssl-colorize",
            [f"--saved_model={tmp / 'nothing'}", f"--images={folder}", f"--output={tmp / 'out'}"],
            ["keras-ssl-colorize:", str(tmp / "nothing")]),
        "colorize with a model that is not a Colorization export": (
            "keras-ssl-colorize",
            [f"--saved_model={toy_savedmodel}", f"--images={folder}", f"--output={tmp / 'out'}"],
            ["keras-ssl-colorize:", "no 'colorize' signature"]),
        # keras-ssl-reconstruct
        "reconstruct without flags": (
            "keras-ssl-reconstruct", [], ["--saved_model", "must have a value"]),
        "reconstruct with a model that is not a VAE export": (
            "keras-ssl-reconstruct",
            [f"--saved_model={toy_savedmodel}", f"--images={folder}",
             f"--output={tmp / 'pairs.png'}"],
            ["keras-ssl-reconstruct:", "no 'reconstruct' signature"]),
        # keras-ssl-show-views
        "show-views with a view count that is not a number": (
            "keras-ssl-show-views", ["--num_views=abc"], ["--num_views=abc"]),
        "show-views of an unknown stack": (
            "keras-ssl-show-views", ["--stack=no_such_stack", f"--output={tmp / 'views.png'}"],
            ["keras-ssl-show-views:", "no_such_stack"]),
        # keras-ssl-train: only gin mistakes (its flags are changing elsewhere)
        "train with a misspelled method parameter": (
            "keras-ssl-train",
            [f"--model_dir={tmp / 'misspelled_run'}",
             "--gin_bindings=keras_ssl.build_method.method = 'moco'",
             "--gin_bindings=moco.queue_sizee = 3"],
            ["keras-ssl-train:", "moco.queue_sizee", "'queue_size'"]),
        "train a ViT whose patch does not divide the images": (
            "keras-ssl-train",
            [f"--model_dir={tmp / 'vit_run'}",
             "--gin_file=gin_configs/moco_v3/synthetic_shapes_vit.gin",
             "--gin_bindings=vit.widening_factor = 1", "--gin_bindings=vit.depth = 1",
             "--gin_bindings=vit.patch_size = 5", "--gin_bindings=vit.image_size = 30"],
            ["keras-ssl-train:", "input side of 32 px is not a multiple of the patch size 5",
             "keras_ssl.train.image_size, e.g. 30"]),
        "train a masked-image method on a ResNet": (
            "keras-ssl-train",
            [f"--model_dir={tmp / 'mae_resnet_run'}", "--gin_file=gin_configs/mae/synthetic_shapes.gin",
             "--gin_bindings=keras_ssl.build_method.backbone = 'resnet_v2'",
             "--gin_bindings=resnet_v2.depth = 18"],
            ["keras-ssl-train:", "MAE needs a backbone with family='vit'",
             "Bind keras_ssl.build_method.backbone = 'vit'."]),
        "train with a missing gin file": (
            "keras-ssl-train", [f"--model_dir={tmp / 'run'}", f"--gin_file={tmp / 'nothing.gin'}"],
            ["keras-ssl-train:", str(tmp / "nothing.gin"), "does not exist"]),
    }


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A directory holding a labelled image folder and a SavedModel that is not a Colorization export."""
    from keras_ssl_eval.testing import save_toy_savedmodel, write_image_folder

    tmp = tmp_path_factory.mktemp("binaries")
    for split in ("train", "test"):
        write_image_folder(str(tmp / "folder" / split), {"a": 2, "b": 2}, size=16)
    return tmp, save_toy_savedmodel(str(tmp / "toy"))


@pytest.fixture(scope="module")
def answers(workspace, trained_run):
    """`{case: (CompletedProcess, fragments)}` of every case, run concurrently."""
    tmp, toy_savedmodel = workspace
    cases = _cases(tmp, toy_savedmodel, trained_run)
    with ThreadPoolExecutor(_CONCURRENT_RUNS) as pool:
        futures = {case: pool.submit(_run, binary, *args)
                   for case, (binary, args, _) in cases.items()}
        return {case: (futures[case].result(), cases[case][2]) for case in cases}


# The cases' names, for parametrising (the paths do not matter for the names).
_CASE_NAMES = list(_cases(pathlib.Path("/unused"), "/unused", {"model_dir": "/unused"}))


@pytest.mark.parametrize("case", _CASE_NAMES)
def test_binary_refuses_in_one_line(case, answers):
    result, fragments = answers[case]
    _assert_refused(result, *fragments)


def test_train_refuses_a_misspelled_binding_before_writing_anything(answers, workspace):
    tmp, _ = workspace
    assert answers["train with a misspelled method parameter"][0].returncode != 0
    assert not (tmp / "misspelled_run").exists()
    assert not (tmp / "vit_run").exists()
    assert not (tmp / "mae_resnet_run").exists()
