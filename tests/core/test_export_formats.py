"""The formats beside an export's SavedModel: `.keras`, ONNX and LiteRT, against the SavedModel.

Every registered backbone family is built tiny once and exported once with
all four formats; each artifact is then run as its users run it
(`keras.saving.load_model(safe_mode=True)`, onnxruntime, the LiteRT
interpreter's signature runner) on images the export never saw, and compared
with the SavedModel's `representation` signature, end-point by end-point.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl import export, export_formats, registry
from keras_ssl.export_formats import ExportFormatError
from keras_ssl_eval import contract
from tests.core.backbones.test_families import tiny
from tests.helpers import REPO
from tests.helpers.forkserver import run_binary

FAMILIES = registry.BACKBONES.names()
ALL_FORMATS = ["saved_model", "keras", "onnx", "litert"]
SIZE = 32
# Converted graphs against the SavedModel: float32 reassociation only.
CONVERTED_TOLERANCE = 1e-4
# The portable model is the same layers' arithmetic: float32 rounding at most.
KERAS_TOLERANCE = 1e-5


def _metadata(path):
    with open(os.path.join(path, contract.METADATA_PATH)) as f:
        return json.load(f)


def _images(size=SIZE, count=3, seed=1):
    return np.random.default_rng(seed).uniform(size=[count, size, size, 3]).astype(np.float32)


def _saved_model_outputs(path, images):
    model = tf.saved_model.load(path)
    outputs = model.signatures[contract.REPRESENTATION_SIGNATURE](images=tf.constant(images))
    return {name: value.numpy() for name, value in outputs.items()}


def _onnx_outputs(path, images):
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (given,) = session.get_inputs()
    assert given.name == contract.INPUT_NAME
    assert given.shape[1:] == list(images.shape[1:]) and not isinstance(given.shape[0], int)
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, {given.name: images})))


def _litert_outputs(path, images):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    assert list(interpreter.get_signature_list()) == ["representation"]
    return interpreter.get_signature_runner("representation")(images=images)


def _keras_outputs(path, images):
    model = keras.saving.load_model(path, safe_mode=True, compile=False)
    # Keras' built-in layers only: a user without keras_ssl can load it.
    foreign = sorted({type(layer).__module__ for layer in model.layers
                      if not type(layer).__module__.startswith("keras.")})
    assert foreign == [], foreign
    return {name: keras.ops.convert_to_numpy(value) for name, value in model(images).items()}


def _max_differences(outputs, reference):
    assert sorted(outputs) == sorted(reference)
    return {name: float(np.abs(np.asarray(outputs[name]) - reference[name]).max())
            for name in reference}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """`{family: (export path, endpoint names)}`, each family exported with every format."""
    root = tmp_path_factory.mktemp("formats")
    built = {}
    for family in FAMILIES:
        net = tiny(family)
        path = export.export_backbone(net, str(root / family), {"name": family},
                                      image_size=SIZE, formats=ALL_FORMATS)
        built[family] = (path, list(net.endpoint_names), getattr(net, "hub_backbone", None))
    return built


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_every_format_computes_the_saved_models_representation(exports, family):
    path, endpoints, hub = exports[family]
    metadata = _metadata(path)
    expected = {"keras": "backbone.keras", "onnx": "backbone.onnx", "litert": "backbone.tflite"}
    if hub is not None:
        expected["keras_hub_preset"] = "keras_hub_preset"
    assert metadata["artifacts"] == expected
    for name in expected.values():
        assert os.path.exists(os.path.join(path, name)), name
    assert set(metadata["artifact_max_abs_difference"]) == {"keras", "onnx", "litert"}

    images = _images()
    reference = _saved_model_outputs(path, images)
    assert list(reference) != [] and sorted(reference) == sorted(endpoints)
    differences = {
        "onnx": _max_differences(_onnx_outputs(os.path.join(path, "backbone.onnx"), images),
                                 reference),
        "litert": _max_differences(
            _litert_outputs(os.path.join(path, "backbone.tflite"), images), reference),
        "keras": _max_differences(_keras_outputs(os.path.join(path, "backbone.keras"), images),
                                  reference),
    }
    print(f"{family} max abs differences: " + json.dumps(
        {fmt: max(values.values()) for fmt, values in differences.items()}))
    for fmt in ("onnx", "litert"):
        assert max(differences[fmt].values()) <= CONVERTED_TOLERANCE, (fmt, differences[fmt])
    assert max(differences["keras"].values()) <= KERAS_TOLERANCE, differences["keras"]
    if hub is not None:
        import keras_hub

        loaded = keras_hub.models.Backbone.from_preset(os.path.join(path, "keras_hub_preset"))
        assert type(loaded).__name__ == type(hub).__name__


@pytest.mark.slow
def test_default_formats_are_the_saved_model_and_keras(tmp_path):
    path = export.export_backbone(tiny("resnet_v2"), str(tmp_path / "model"), {}, image_size=16)
    assert _metadata(path)["artifacts"] == {"keras": "backbone.keras"}
    assert "backbone.keras" in os.listdir(path)
    assert not {"backbone.onnx", "backbone.tflite"} & set(os.listdir(path))


def _tiny_colorization(model_dir):
    """A tiny Colorization (it turns RGB into lightness before the backbone) and its run files."""
    from keras_ssl import run_dir
    from keras_ssl.testing import TINY_BATCH_SIZE, TINY_IMAGE_SIZE
    from keras_ssl.testing.method_checks import method_and_batches

    method, batches = method_and_batches("colorization")
    method.build_from_batch(batches[0])
    os.makedirs(model_dir)
    with open(os.path.join(model_dir, run_dir.RUN_FILE), "w") as f:
        json.dump({"method": "colorization", "dataset": "random", "train_steps": 1,
                   "batch_size": TINY_BATCH_SIZE, "image_size": TINY_IMAGE_SIZE}, f)
    with open(os.path.join(model_dir, run_dir.CONFIG_FILE), "w") as f:
        f.write("keras_ssl.build_method.method = 'colorization'\n")
    return method


@pytest.mark.slow
def test_a_method_with_an_input_transform_has_no_keras_file(tmp_path, capsys):
    run = str(tmp_path / "run")
    method = _tiny_colorization(run)
    assert export.has_input_transform(method)

    # Default formats: keras is skipped, with one line saying why.
    default = export.export_method(method, run, 1, str(tmp_path / "default"))
    lines = [line for line in capsys.readouterr().out.splitlines() if "backbone.keras" in line]
    assert len(lines) == 1 and "Colorization.export_input_transform" in lines[0], lines
    assert "include the transform" in lines[0]
    assert "backbone.keras" not in os.listdir(default)
    assert _metadata(default)["artifacts"] == {}

    # Asked for: refused in one line, before anything is written.
    with pytest.raises(ExportFormatError) as refused:
        export.export_method(method, run, 1, str(tmp_path / "asked"), formats=["saved_model", "keras"])
    assert "\n" not in str(refused.value) and "Leave keras out of --format" in str(refused.value)
    assert not (tmp_path / "asked").exists()

    # ONNX and LiteRT hold the transform: plain RGB in, the SavedModel's end-points out.
    both = export.export_method(method, run, 1, str(tmp_path / "converted"),
                                formats=["saved_model", "onnx", "litert"])
    images = _images(size=16)
    reference = _saved_model_outputs(both, images)
    for outputs in (_onnx_outputs(os.path.join(both, "backbone.onnx"), images),
                    _litert_outputs(os.path.join(both, "backbone.tflite"), images)):
        assert max(_max_differences(outputs, reference).values()) <= CONVERTED_TOLERANCE


@pytest.mark.parametrize("formats, fragments", [
    (["saved_model", "tflite"], ["'tflite'", "known formats are saved_model, keras, onnx, litert"]),
    (["keras", "onnx"], ["leave out saved_model", "--format=saved_model,keras,onnx"]),
    ([], ["(none) leave out saved_model"]),
])
def test_bad_format_lists_are_refused_in_one_line(formats, fragments):
    with pytest.raises(ExportFormatError) as refused:
        export_formats.resolve_formats(formats)
    message = str(refused.value)
    assert "\n" not in message and all(f in message for f in fragments), message


def test_a_missing_converter_package_names_the_extra(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tf2onnx" else find_spec(name, *a))
    with pytest.raises(ExportFormatError, match=r"tf2onnx is not installed: pip install "
                                                r"'keras-ssl\[onnx\]'"):
        export_formats.resolve_formats("saved_model,onnx")
    # LiteRT is written by TensorFlow's own converter: nothing extra to install.
    assert export_formats.resolve_formats("saved_model,litert,litert") == (
        ["saved_model", "litert"], None)


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["converter raises", "artifact differs"])
def test_a_failed_conversion_leaves_nothing(tmp_path, monkeypatch, failure):
    write_onnx = export_formats._write_onnx

    def broken(*args, **kwargs):
        if failure == "converter raises":
            raise RuntimeError("unsupported op Foo")
        return {name: value + 1.0 for name, value in write_onnx(*args, **kwargs).items()}

    monkeypatch.setattr(export_formats, "_write_onnx", broken)
    with pytest.raises(ExportFormatError) as refused:
        export.export_backbone(tiny("resnet_v2"), str(tmp_path / "model"), {}, image_size=16,
                               formats=ALL_FORMATS)
    message = str(refused.value)
    assert "\n" not in message and "onnx" in message
    assert ("unsupported op Foo" if failure == "converter raises" else "differs") in message
    assert os.listdir(tmp_path) == []  # no export and no staging directory


@pytest.mark.slow
@pytest.mark.parametrize("flag, fragments", [
    ("--format=saved_model,keras,tflite", ["'tflite'", "saved_model, keras, onnx, litert"]),
    ("--format=keras,onnx", ["leave out saved_model", "--format=saved_model,keras,onnx"]),
])
def test_the_binary_refuses_bad_formats_in_one_line(tmp_path, flag, fragments):
    run = tmp_path / "run"
    run.mkdir()
    result = run_binary("keras-ssl-export", f"--model_dir={run}", flag,
                        f"--export_dir={tmp_path / 'out'}", timeout=300, cwd=REPO,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1"))
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.startswith("keras-ssl-export:")]
    assert len(lines) == 1 and all(f in lines[0] for f in fragments), output
    assert os.listdir(tmp_path) == ["run"] and os.listdir(run) == []


class _Doubling(keras.layers.Layer):
    """A third party's layer: not a Keras built-in, and registered nowhere."""

    def call(self, x):
        return 2.0 * x


@pytest.mark.slow
def test_a_backbone_without_a_keras_form_keeps_its_saved_model(tmp_path, capsys):
    from keras_ssl.backbones import make_backbone

    images = keras.Input((16, 16, 3), name="images")
    features = _Doubling()(keras.layers.Conv2D(4, 3, name="conv")(images))
    net = make_backbone(images, {"block1": features, "pre_logits":
                                 keras.layers.GlobalAveragePooling2D()(features)},
                        name="custom", spec={"family": "custom"})
    path = export.export_backbone(net, str(tmp_path / "default"), {}, image_size=16)
    lines = [line for line in capsys.readouterr().out.splitlines() if "backbone.keras" in line]
    assert len(lines) == 1 and lines[0].startswith("keras-ssl export: skipping"), lines
    assert "_Doubling" in lines[0], lines
    assert _metadata(path)["artifacts"] == {} and "backbone.keras" not in os.listdir(path)
    with pytest.raises(ExportFormatError, match="keras conversion failed"):
        export.export_backbone(net, str(tmp_path / "asked"), {}, image_size=16,
                               formats=["saved_model", "keras"])
    assert sorted(os.listdir(tmp_path)) == ["default"]
