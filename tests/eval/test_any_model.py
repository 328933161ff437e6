"""keras-ssl-eval judges any model: `.keras` files, keras-hub presets, other SavedModels.

The SavedModel tests use TensorFlow alone and run under KERAS_SSL_EVAL_ONLY=1;
the Keras ones skip there. The Keras models are one tiny keras-hub ResNet at
random initialisation, saved as a preset (with and without an image
converter) and as a `.keras` file; the other SavedModel is a TF-Hub-style
`tf.Module` whose signature returns ``block_group1``..``block_group4`` and
``final_avg_pool``.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from absl import app

from keras_ssl_eval.reading import adapters
from keras_ssl_eval.testing import run_eval_main, save_toy_savedmodel, write_image_folder
from tests.helpers import REPO

_SIZE = 16
_CONVERTER = {"scale": [1 / (255 * 0.229), 1 / (255 * 0.224), 1 / (255 * 0.225)],
              "offset": [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225]}


class _HubStyle(tf.Module):
    """A TF-Hub-style image module: four conv groups, their average, and tokens."""

    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(0)
        self.kernels = [tf.Variable(rng.normal(0, 0.4, [3, 3, c, 4]).astype(np.float32))
                        for c in (3, 4, 4, 4)]
        self.head = tf.Variable(rng.normal(0, 0.4, [4, 10]).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def features(self, x):
        outputs = {}
        for i, kernel in enumerate(self.kernels):
            x = tf.nn.relu(tf.nn.conv2d(x, kernel, 2 if i else 1, "SAME"))
            outputs[f"block_group{i + 1}"] = x
        outputs["final_avg_pool"] = tf.reduce_mean(x, [1, 2])
        outputs["tokens"] = tf.reshape(x, [tf.shape(x)[0], -1, 4])  # rank 3: not read
        return outputs

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def logits(self, x):
        return {"logits": self.features(x)["final_avg_pool"] @ self.head}


def _images(n=3, seed=1):
    return np.random.default_rng(seed).uniform(size=[n, _SIZE, _SIZE, 3]).astype(np.float32)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_image_folder(str(root / "train"), {"a": 8, "b": 8}, size=_SIZE, seed=0)
    write_image_folder(str(root / "test"), {"a": 4, "b": 4}, size=_SIZE, seed=1)
    return f"folder:{root}"


@pytest.fixture(scope="module")
def hub_module(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("hub") / "simclr_style")
    module = _HubStyle()
    tf.saved_model.save(module, path, signatures={"serving_default": module.features,
                                                  "logits": module.logits})
    return path


@pytest.fixture(scope="module")
def keras():
    """keras, or a skip where it cannot be imported (KERAS_SSL_EVAL_ONLY=1 blocks it)."""
    return pytest.importorskip("keras", exc_type=ImportError)


@pytest.fixture(scope="module")
def keras_models(tmp_path_factory, keras):
    """A tiny keras-hub ResNet as a preset, a preset with a converter and a `.keras` file."""
    keras_hub = pytest.importorskip("keras_hub", exc_type=ImportError)
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 128],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
        use_pre_activation=False, image_shape=(None, None, 3))
    root = tmp_path_factory.mktemp("keras")
    preset, converted = str(root / "resnet_preset"), str(root / "converted_preset")
    backbone.save_to_preset(preset)
    backbone.save_to_preset(converted)
    keras_hub.layers.ResNetImageConverter(image_size=(_SIZE, _SIZE), **_CONVERTER) \
        .save_to_preset(converted)
    file = str(root / "resnet.keras")
    backbone.save(file)
    pyramid = keras.Model(backbone.inputs[0], {**backbone.pyramid_outputs,
                                            "final": backbone.outputs[0]})
    return {"backbone": backbone, "pyramid": pyramid, "preset": preset,
            "converted": converted, "keras": file}


# ------------------------------------------------------- SavedModel, any signature --

def test_signature_adapter_equals_the_signature(hub_module, caplog):
    model = adapters.open_model(adapters.ModelSource(hub_module))
    # Natural order; the rank-3 output is left out with a warning.
    assert model.endpoint_names == ("block_group1", "block_group2", "block_group3",
                                    "block_group4", "final_avg_pool")
    assert "leaving out output 'tokens'" in caplog.text
    adapter = model.metadata["adapter"]
    assert adapter["signature"] == "serving_default" and adapter["kind"] == "saved_model"
    assert adapter["fine_tune_head"] == "final_avg_pool"
    images = _images()
    direct = tf.saved_model.load(hub_module).signatures["serving_default"](x=images)
    got = model.endpoints(images)
    for name in model.endpoint_names:
        np.testing.assert_array_equal(got[name], direct[name].numpy())

    renamed = adapters.open_model(adapters.ModelSource(
        hub_module, endpoints=adapters.parse_endpoints("block4=block_group4,pre_logits="
                                                       "final_avg_pool")))
    assert renamed.endpoint_names == ("block4", "pre_logits")
    np.testing.assert_array_equal(renamed.endpoints(images)["block4"], direct["block_group4"])
    # The fine-tuning view: pre_logits, its trainable variables, gradients through the signature.
    _, trainable = adapters.open_trainable(renamed.source)
    # The signature's own variables: the 4 kernels (the logits head is another signature's).
    assert len(trainable.trainable_variables) == 4 and trainable.regularization_losses == []
    with tf.GradientTape() as tape:
        features = trainable(tf.constant(images), training=True)
        loss = tf.reduce_sum(features)
    np.testing.assert_allclose(features, direct["final_avg_pool"], atol=1e-6)
    grads = tape.gradient(loss, trainable.trainable_variables)
    assert all(g is not None for g in grads)


def test_signature_choice_and_refusals(hub_module, tmp_path):
    logits = adapters.open_model(adapters.ModelSource(hub_module, signature="logits"))
    assert logits.endpoint_names == ("pre_logits",)  # its one vector output
    assert logits.metadata["adapter"]["endpoints"] == {"pre_logits": "logits"}
    cases = [
        (adapters.ModelSource(hub_module, signature="nope"),
         "has no signature 'nope'; it has logits, serving_default"),
        (adapters.ModelSource(hub_module, endpoints={"b": "block_group9"}),
         "has no output 'block_group9'.*block_group1, block_group2.*final_avg_pool"),
        (adapters.ModelSource(hub_module, endpoints={"tok": "tokens"}),
         r"end-point 'tok' \(output 'tokens'\) has shape \(None, None, 4\).*\[batch, D\]"),
        (adapters.ModelSource(str(tmp_path)), "is none of what keras-ssl-eval reads"),
        (adapters.ModelSource(str(tmp_path / "missing.keras")), "no such file"),
    ]
    for source, message in cases:
        with pytest.raises(ValueError, match=message) as error:
            adapters.open_model(source)
        assert "\n" not in str(error.value)
    for text, message in [("a=b,a=c", "names 'a' twice"), ("a b", "is not NAME=LAYER")]:
        with pytest.raises(ValueError, match=message):
            adapters.parse_endpoints(text)
    assert adapters.parse_endpoints(["x=y", "z"]) == {"x": "y", "z": "z"}


def test_cli_evaluates_a_foreign_savedmodel_beside_a_contract_one(hub_module, data, tmp_path,
                                                                 capsys):
    toy = save_toy_savedmodel(str(tmp_path / "toy"), seed=0, name="toy")
    out = tmp_path / "eval"
    run_eval_main([f"--saved_model={toy}", f"--model={hub_module}",
                   "--endpoints=block3=block_group3,pre_logits=final_avg_pool",
                   f"--dataset={data}", "--protocol=grid,knn", "--heads=linear",
                   "--knn_k=3", "--batch_size=8", f"--output={out}", "--l2_grid=1e-2",
                   f"--cache_dir={tmp_path / 'cache'}", "--noplots"])
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    toy_entry, hub_entry = results["models"]
    assert [toy_entry["name"], hub_entry["name"]] == ["toy", "simclr_style"]
    assert set(hub_entry["grid"]) == set(hub_entry["knn"]) == {"block3", "pre_logits"}
    assert hub_entry["grid"]["block3"]["linear"]["test_count"] == 8
    assert hub_entry["knn"]["pre_logits"]["test_count"] == 8
    assert hub_entry["metadata"]["adapter"]["endpoints"] == {"block3": "block_group3",
                                                             "pre_logits": "final_avg_pool"}
    assert "adapter" not in toy_entry["metadata"]
    assert "- simclr_style: saved_model, signature serving_default" in printed
    # A contract SavedModel given to --model is read as --saved_model reads it; with
    # --endpoints, through its representation signature.
    assert type(adapters.open_model(adapters.ModelSource(toy))).__name__ == "RepresentationModel"
    renamed = adapters.open_model(adapters.ModelSource(toy, endpoints={"top": "pre_logits"}))
    assert renamed.metadata["adapter"]["signature"] == "representation"
    assert renamed.metadata["name"] == "toy" and renamed.input_size == (16, 16)


def test_foreign_savedmodel_needs_no_keras(hub_module):
    # The keras-free promise in a process where keras cannot be imported at all.
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {REPO!r})
        from tests.helpers.blocked_imports import block_imports
        block_imports()
        import numpy as np
        from keras_ssl_eval.reading import adapters
        model = adapters.open_model(adapters.ModelSource({hub_module!r}))
        assert model.extract(np.zeros([2, 16, 16, 3], np.float32))["final_avg_pool"].shape == (2, 4)
        _, trainable = adapters.open_trainable({hub_module!r})  # a path: through its signature
        assert trainable(np.zeros([1, 16, 16, 3], np.float32)).shape == (1, 4)
        assert not [m for m in sys.modules if m.split(".")[0] in ("keras", "keras_hub")]
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_cli_flag_misuse(hub_module, data, tmp_path):
    with pytest.raises(app.UsageError, match="--endpoints apply to --model"):
        run_eval_main([f"--saved_model={hub_module}", "--endpoints=a=b", f"--dataset={data}",
                       f"--output={tmp_path}"])
    with pytest.raises(app.UsageError, match="given 2 times for 1 --model"):
        run_eval_main([f"--model={hub_module}", "--endpoints=a=b", "--endpoints=c=d",
                       f"--dataset={data}", f"--output={tmp_path}"])


# ----------------------------------------------------------------- Keras models --

def _max_difference(got: dict, want: dict) -> float:
    return max(float(np.max(np.abs(got[k] - np.asarray(want[k])))) for k in want)


def test_keras_adapters_equal_the_model(keras_models):
    images = _images()
    direct = {k: np.asarray(v) for k, v in keras_models["pyramid"](images, training=False).items()}
    want = {"P2": direct["P2"], "P3": direct["P3"], "pre_logits": direct["final"].mean(axis=(1, 2))}
    for kind in ("preset", "keras"):
        model = adapters.open_model(adapters.ModelSource(keras_models[kind]))
        assert model.endpoint_names == ("P2", "P3", "pre_logits")
        assert model.input_size is None  # image_shape (None, None, 3): the dataset's size
        adapter = model.metadata["adapter"]
        assert adapter["kind"] == {"preset": "keras_hub_preset", "keras": "keras"}[kind]
        assert "pyramid_outputs (P2, P3) and pre_logits" in adapter["default_endpoints"]
        assert _max_difference(model.endpoints(images), want) < 1e-5
    # Named end-points: a layer's output and a pyramid key.
    model = adapters.open_model(adapters.ModelSource(
        keras_models["keras"], endpoints={"stack0": "stack0_block0_out", "fine": "P3"}))
    assert model.endpoint_names == ("stack0", "fine")
    assert _max_difference(model.endpoints(images), {"stack0": direct["P2"],
                                                      "fine": direct["P3"]}) < 1e-5


def test_preset_image_converter_is_applied_and_recorded(keras_models):
    images = _images()
    model = adapters.open_model(adapters.ModelSource(keras_models["converted"]))
    converter = model.metadata["adapter"]["image_converter"]
    assert converter["file"] == "image_converter.json"
    assert np.allclose(converter["scale"], _CONVERTER["scale"])
    assert model.input_size == (_SIZE, _SIZE) and model.metadata["input_size"] == [_SIZE, _SIZE]
    pixels = (images * 255.0 * np.array(_CONVERTER["scale"], np.float32)
              + np.array(_CONVERTER["offset"], np.float32))
    want = keras_models["pyramid"](pixels, training=False)
    assert _max_difference(model.endpoints(images), {"P2": want["P2"], "P3": want["P3"]}) < 1e-4
    assert "x * 255 * scale + offset" in model.metadata["adapter"]["input"]


def test_keras_fine_tuning_view(keras_models):
    _, trainable = adapters.open_trainable(keras_models["keras"])  # a path is enough
    backbone = keras_models["backbone"]
    assert len(trainable.trainable_variables) == len(backbone.trainable_variables)
    images = tf.constant(_images(4))
    # Inference mode uses the moving statistics: the same as the backbone's own call.
    np.testing.assert_allclose(trainable(images), np.asarray(
        backbone(images, training=False)).mean(axis=(1, 2)), atol=1e-5)
    with tf.GradientTape() as tape:
        features = trainable(images, training=True)
        loss = tf.reduce_sum(features)
    assert features.shape == (4, 128)
    grads = tape.gradient(loss, trainable.trainable_variables)
    assert all(g is not None for g in grads)


def test_keras_endpoint_refusals(keras_models, keras, tmp_path):
    with pytest.raises(ValueError, match="has no output or layer 'stack9'; outputs: "
                       "stack1_block0_out, P2, P3, pre_logits; layers: input_layer.*, "
                       "conv1_pad, .*stack1_block0_out") as error:
        adapters.open_model(adapters.ModelSource(keras_models["keras"],
                                                 endpoints={"x": "stack9"}))
    assert "\n" not in str(error.value)
    inputs = keras.Input((8, 8, 3), name="images")
    tokens = keras.layers.Reshape((64, 3), name="tokens")(inputs)
    path = str(tmp_path / "tokens.keras")
    keras.Model(inputs, {"tokens": tokens, "mean": keras.layers.GlobalAveragePooling1D(
        name="mean")(tokens)}).save(path)
    with pytest.raises(ValueError, match=r"end-point 't' \(from 'tokens'\) has shape "
                       r"\(None, 64, 3\)"):
        adapters.open_model(adapters.ModelSource(path, endpoints={"t": "tokens"}))
    # By default the rank-3 output is left out and the vector kept.
    assert adapters.open_model(adapters.ModelSource(path)).endpoint_names == ("mean",)


def test_safe_mode_refuses_lambda_layers(keras, tmp_path, data):
    from keras_ssl_eval.reading.keras_models import load_keras_file

    inputs = keras.Input((_SIZE, _SIZE, 3))
    doubled = keras.layers.Lambda(lambda x: x * 2.0, name="double")(inputs)
    path = str(tmp_path / "lambda.keras")
    keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(doubled)).save(path)
    with pytest.raises(ValueError, match="needs unsafe deserialisation.*with --unsafe_keras") \
            as error:
        load_keras_file(path)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="with init_from_unsafe=True"):
        load_keras_file(path, flag="init_from_unsafe=True")
    assert load_keras_file(path, unsafe=True).get_layer("double") is not None
    with pytest.raises(ValueError, match="--unsafe_keras"):
        run_eval_main([f"--model={path}", f"--dataset={data}", f"--output={tmp_path / 'o'}",
                       "--cache_dir="])
    model = adapters.open_model(adapters.ModelSource(path, unsafe_keras=True))
    assert model.endpoint_names == ("pre_logits",)


def test_unknown_custom_class_names_class_and_module(keras, tmp_path, monkeypatch):
    from keras_ssl_eval.reading.keras_models import load_keras_file

    module_name = "kse_custom_layers_for_test"
    (tmp_path / f"{module_name}.py").write_text(textwrap.dedent("""
        import keras

        @keras.saving.register_keras_serializable(package="kse_custom")
        class Doubler(keras.layers.Layer):
            def call(self, x):
                return 2.0 * x
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    custom = __import__(module_name)
    inputs = keras.Input((_SIZE, _SIZE, 3))
    path = str(tmp_path / "custom.keras")
    keras.Model(inputs, custom.Doubler(name="doubler")(inputs)).save(path)
    # As in a fresh process: the class is not registered and its module not imported.
    keras.saving.get_custom_objects().pop("kse_custom>Doubler")
    monkeypatch.delitem(sys.modules, module_name)
    with pytest.raises(ValueError, match=f"class 'Doubler' from module '{module_name}' "
                       r"\(registered as 'kse_custom>Doubler'\).*is installed but not "
                       f"imported.*--keras_modules={module_name}"):
        load_keras_file(path, import_hint="--keras_modules")
    monkeypatch.syspath_prepend(str(tmp_path / "elsewhere"))
    sys.path.remove(str(tmp_path))
    with pytest.raises(ValueError, match=f"install the package that provides '{module_name}'"):
        load_keras_file(path)
    sys.path.insert(0, str(tmp_path))
    __import__(module_name)  # what --keras_modules does
    assert load_keras_file(path).get_layer("doubler") is not None


def test_cli_keras_models_grid_knn(keras_models, data, tmp_path, capsys):
    out = tmp_path / "eval"
    run_eval_main([f"--model={keras_models['preset']}", f"--model={keras_models['keras']}",
                   "--endpoints=P3,pre_logits", "--endpoints=block=stack0_block0_out",
                   f"--dataset={data}", "--protocol=linear,grid,knn", "--heads=linear",
                   "--knn_k=3", "--batch_size=8", f"--output={out}", "--l2_grid=1e-2",
                   f"--cache_dir={tmp_path / 'cache'}", "--noplots"])
    results = json.loads((out / "results.json").read_text())
    preset, file = results["models"]
    assert [preset["name"], file["name"]] == ["resnet_preset", "resnet.keras"]
    assert set(preset["knn"]) == {"P3", "pre_logits"} and set(file["grid"]) == {"block"}
    assert file["linear"]["block"]["endpoint_shape"] == [4, 4, 64]  # after the stride-4 stem
    assert "- resnet.keras: keras; end-points block = stack0_block0_out" in capsys.readouterr().out


def test_cli_utility_fine_tunes_a_keras_model(keras_models, data, tmp_path):
    out = tmp_path / "eval"
    run_eval_main([f"--model={keras_models['keras']}", f"--dataset={data}",
                   "--protocol=utility", f"--scratch_model={keras_models['preset']}",
                   "--budgets=4,8", "--finetune_steps=2", "--finetune_batch_size=4",
                   f"--output={out}", "--cache_dir=", "--noplots"])
    utility = json.loads((out / "results.json").read_text())["models"][0]["utility"]
    assert utility["budgets"] == [4, 8] and len(utility["finetuned_accuracy"]) == 2
    # Same weights, same subsets and seeds: fine-tuned and scratch curves agree.
    assert utility["finetuned_accuracy"] == utility["scratch_accuracy"]
