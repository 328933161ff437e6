"""keras_ssl.portable: every backbone family as Keras built-ins, loadable and trainable without keras_ssl.

Parametrised over every registered family (a family missing from `KNOWN` is
built by `keras_ssl.testing.tiny_backbone`), plus a ViT with registers,
LayerScale, mean pooling and a mask token, converted at a size off its
learned grid.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_ssl import registry
from keras_ssl.backbones import build_backbone
from keras_ssl.export import export_backbone
from keras_ssl.portable import load_portable_weights, portable_backbone, save_portable
from keras_ssl.testing import TINY_BACKBONE, TINY_VIT, tiny_backbone
from tests.helpers import HELPERS

TOLERANCE = 1e-5
# case -> (family, arguments, image size). RevNet at 20 px pools odd maps (5 -> 3), where
# SAME average pooling pads; VGG and AlexNet at 16 px pad small maps up to their fc6 kernel.
KNOWN = {
    "resnet_v1": ("resnet_v1", TINY_BACKBONE, 16),
    "resnet_v2": ("resnet_v2", TINY_BACKBONE, 16),
    "revnet": ("revnet", TINY_BACKBONE, 20),
    "vgg19_bn": ("vgg19_bn", dict(widening_factor=1, depth=11, fc6_kernel=2), 16),
    "alexnet": ("alexnet", dict(widening_factor=1, fc6_kernel=2), 16),
    "resnet9": ("resnet9", dict(widening_factor=1), 16),
    "vit": ("vit", TINY_VIT, 16),
}
CASES = {family: KNOWN.get(family, (family, None, 16)) for family in registry.BACKBONES.names()}
# Grid 16 / 4 = 4 learned, converted at 24 px: a 6 x 6 grid of resized positions.
VIT_VARIANT = "vit_registers_layer_scale_mean"
CASES[VIT_VARIANT] = (
    "vit", dict(TINY_VIT, num_registers=2, layer_scale=0.5, pooling="mean", mask_token=True), 24)
# PyTorch's padding: the 7x7 stride-2 root and its max-pool (of values below zero, padded
# with -inf), and the units' stride-2 convolutions.
SYMMETRIC_VARIANT = "resnet_v2_symmetric_padding"
CASES[SYMMETRIC_VARIANT] = ("resnet_v2", dict(TINY_BACKBONE, small_image_stem=False,
                                              strided_padding="symmetric"), 32)
NAMES = sorted(CASES)
# Made of keras_ssl's own layers: their portable models hold Keras built-ins only (a family
# wrapping another package's network keeps that network's layers).
OWN_LAYERS = {*KNOWN, VIT_VARIANT, SYMMETRIC_VARIANT}


def _build(case, seed=0, **overrides):
    """The case's backbone, its 1-d weights, tokens and batch-norm statistics moved off their init.

    Fresh batch-norm statistics (0 and 1) and LayerScale would let a wrong
    inference formula pass.
    """
    family, arguments, _ = CASES[case]
    net = (tiny_backbone(family, **overrides) if arguments is None
           else build_backbone(family, **{**arguments, **overrides}))
    rng = np.random.default_rng(seed)
    for variable in net.weights:
        shape = tuple(variable.shape)
        if variable.path.endswith("moving_variance"):
            variable.assign(rng.uniform(1.0, 3.0, shape).astype("float32"))
        elif len(shape) <= 1 or variable.path.startswith("tokens/"):
            variable.assign(variable.numpy() + rng.normal(0, 0.3, shape).astype("float32"))
    return net


def _images(case, count=3, seed=1):
    size = CASES[case][2]
    return np.random.default_rng(seed).uniform(size=(count, size, size, 3)).astype("float32")


def _max_differences(a, b):
    return {name: float(np.abs(np.asarray(a[name]) - np.asarray(b[name])).max()) for name in a}


@pytest.fixture(scope="module")
def natives():
    """One backbone per case, built on first use."""
    built = {}

    def get(case):
        if case not in built:
            built[case] = _build(case)
        return built[case]

    return get


@pytest.fixture(scope="module")
def portables(natives):
    built = {}

    def get(case):
        if case not in built:
            built[case] = portable_backbone(natives(case), CASES[case][2])
        return built[case]

    return get


@pytest.mark.parametrize("case", NAMES)
def test_portable_model_equals_the_native_backbone_and_is_built_in_only(case, natives, portables):
    native, portable = natives(case), portables(case)
    images = _images(case)
    expected, got = native(images, training=False), portable(images)
    assert list(got) == list(native.endpoint_names)
    differences = _max_differences(expected, got)
    assert max(differences.values()) < TOLERANCE, differences
    assert all(np.asarray(value).dtype == np.float32 for value in got.values())
    size = CASES[case][2]
    assert portable.input.shape == (None, size, size, 3) and portable.input.name == "images"
    modules = {type(layer).__module__ for layer in portable._flatten_layers()}
    assert not [m for m in modules if m.split(".")[0] in ("keras_ssl", "keras_ssl_methods")]
    if case in OWN_LAYERS:
        assert all(module.startswith("keras.") for module in modules), modules
    # Its own weights: the portable model trains without moving the native one.
    native_ids = {id(v) for v in native.weights}
    assert not any(id(v) in native_ids for v in portable.weights)


def test_synchronized_batch_norm_becomes_keras_batch_norm():
    native = build_backbone("resnet_v2", **TINY_BACKBONE, synchronized_bn=True)
    norms = [layer for layer in portable_backbone(native, 16).layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(type(layer) is keras.layers.BatchNormalization
                         and not layer.synchronized for layer in norms)


def test_vit_conversion_folds_layer_scale_and_drops_the_mask_token(natives, portables):
    case = VIT_VARIANT
    names = {layer.name for layer in portables(case).layers}
    assert {"tokens_position_6x6", "tokens_registers", "tokens_class_token",
            "block1_transformer_projection", "block2_transformer_fc2"} <= names
    native_count = sum(int(np.prod(v.shape)) for v in natives(case).weights)
    portable_count = sum(int(np.prod(v.shape)) for v in portables(case).weights)
    depth, width, learned, resized = 2, 64, 4 * 4, 6 * 6
    # Less: the mask token and 2 LayerScale vectors per block; more: the resized grid.
    assert portable_count == native_count - width - 2 * depth * width + (resized - learned) * width


def _has_op_nodes(model) -> bool:
    """The model computes with keras.ops nodes (slices, pads, erf, attention), not only layers.

    Those models are fine-tuned as a Keras user's would be, traced (4 s more
    per model); models of layers only run eagerly.
    """
    return any(not isinstance(operation, keras.layers.Layer) for operation in model._operations)


@pytest.fixture(scope="module")
def keras_user_results(natives, portables, tmp_path_factory):
    """Every case saved as .keras and as a contract SavedModel, loaded by one keras_ssl-free process."""
    root = tmp_path_factory.mktemp("portable")
    cases, rng = [], np.random.default_rng(2)
    for case in NAMES:
        native, size = natives(case), CASES[case][2]
        folder = root / case
        keras_path = save_portable(native, str(folder / "backbone.keras"), size)
        saved_model = export_backbone(native, str(folder / "saved_model"), {}, size)
        images = _images(case, count=12, seed=3)
        np.save(folder / "images.npy", images)
        np.save(folder / "labels.npy", rng.integers(0, 3, 12))
        cases.append(dict(name=case, keras=keras_path, saved_model=saved_model, num_classes=3,
                          images=str(folder / "images.npy"), labels=str(folder / "labels.npy"),
                          run_eagerly=not _has_op_nodes(portables(case))))
    (root / "cases.json").write_text(json.dumps(cases))
    out = root / "out.json"
    done = subprocess.run(
        [sys.executable, os.path.join(HELPERS, "load_keras_without_keras_ssl.py"),
         str(root / "cases.json"), str(out)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("case", NAMES)
def test_keras_file_loads_safely_without_keras_ssl_matches_the_saved_model_and_fine_tunes(
        case, keras_user_results):
    assert keras_user_results["_blocked_modules_loaded"] == []
    result = keras_user_results[case]
    assert max(result["differences"].values()) < TOLERANCE, result["differences"]
    assert result["output_dtypes"] == ["float32"]
    if case in OWN_LAYERS:
        assert all(module.startswith("keras.") for module in result["layer_modules"])
    assert result["steps"] == 3 and np.isfinite(result["loss"]).all()
    # Every backbone weight the classifier's loss reaches moves (all of them: none is frozen).
    assert result["changed_weights"] == result["trainable_weights"] > 0


@pytest.mark.parametrize("case", NAMES)
def test_load_portable_weights_round_trip(case, natives, tmp_path):
    family, arguments, size = CASES[case]
    source = natives(case)
    # A ViT goes back at its learned grid; another grid is refused (next test).
    size = arguments["image_size"] if family == "vit" else size
    path = save_portable(source, str(tmp_path / "portable.keras"), size)
    target = _build(case, seed=7)
    mask_token = [v.numpy() for v in target.weights if "mask_token" in v.path]
    images = _images(case)
    assert max(_max_differences(source(images), target(images)).values()) > 1e-3
    load_portable_weights(target, path)
    differences = _max_differences(source(images, training=False), target(images, training=False))
    assert max(differences.values()) < TOLERANCE, differences
    after = [v.numpy() for v in target.weights if "mask_token" in v.path]
    assert len(after) == len(mask_token) and all(map(np.array_equal, mask_token, after))
    if (arguments or {}).get("layer_scale"):
        scales = [v.numpy() for v in target.weights if "layer_scale" in v.path]
        assert scales and all((s == 1).all() for s in scales)


def test_load_portable_weights_refuses_a_resized_position_grid(natives, portables):
    case = VIT_VARIANT
    with pytest.raises(ValueError) as error:
        load_portable_weights(_build(case, seed=7), portables(case))
    message = str(error.value)
    assert "\n" not in message
    assert "missing: tokens_position_4x4/embeddings (for tokens/position_embedding)" in message
    assert "unexpected: tokens_position_6x6/embeddings" in message


def _wider(case) -> dict:
    """Arguments over the case's that make some of its variables wider."""
    family, arguments, _ = CASES[case]
    if family == "keras_hub":
        from keras_ssl.testing.tiny import TINY_KERAS_HUB

        config = dict(TINY_KERAS_HUB["config"])
        config["stackwise_num_filters"] = [*config["stackwise_num_filters"][:-1],
                                           2 * config["stackwise_num_filters"][-1]]
        return dict(config=config)
    return dict(widening_factor=2 * (arguments or {}).get("widening_factor", 1))


@pytest.mark.parametrize("case", NAMES)
def test_load_portable_weights_names_every_mismatched_variable(case, natives, portables):
    size = CASES[case][2]
    wider = _build(case, **_wider(case))
    before = [v.numpy() for v in wider.weights]
    with pytest.raises(ValueError) as error:
        load_portable_weights(wider, portables(case))
    message = str(error.value)
    assert "\n" not in message and "does not match backbone" in message
    ours = {w.path: tuple(w.shape) for w in portables(case).weights}
    theirs = {w.path: tuple(w.shape) for w in portable_backbone(wider, size).weights}
    mismatched = [key for key in ours if key in theirs and ours[key] != theirs[key]]
    assert mismatched
    # A resized position grid is no variable of the native backbone: named as unexpected.
    unexpected = message.partition("unexpected: ")[2].partition(" | ")[0].split("; ")
    for key in mismatched:
        assert f"{key} {ours[key]} != {theirs[key]}" in message or key in unexpected
    # Nothing assigned.
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, wider.weights))


@pytest.mark.parametrize("case", [c for c in NAMES
                                  if c in ("resnet_v2", "revnet", "keras_hub", VIT_VARIANT)])
def test_mixed_precision_backbone_gives_a_float32_portable_model(case):
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        mixed = _build(case)
        portable = portable_backbone(mixed, CASES[case][2])
    finally:
        keras.config.set_dtype_policy(policy)
    assert {layer.dtype_policy.name for layer in portable._flatten_layers()} == {"float32"}
    assert "bfloat16" not in json.dumps(portable.get_config())
    assert {v.dtype for v in portable.weights} == {"float32"}
    # The same weights in a float32 native backbone: what the portable model computes.
    full = _build(case)
    full.set_weights(mixed.get_weights())
    images = _images(case)
    got = portable(images)
    assert all(np.asarray(value).dtype == np.float32 for value in got.values())
    differences = _max_differences(full(images, training=False), got)
    assert max(differences.values()) < TOLERANCE, differences


@pytest.mark.parametrize("image_size, problem", [
    (0, "image_size must be a positive int"),
    ((16,), "image_size must be a positive int"),
    (2.5, "image_size must be a positive int"),
    (None, "image_size must be a positive int"),
    ("16", "image_size must be a positive int"),
    ((16, 0), "image_size must be a positive int"),
])
def test_bad_image_sizes_are_refused(natives, image_size, problem):
    with pytest.raises(ValueError, match=problem):
        portable_backbone(natives("resnet_v2"), image_size)


def test_a_vit_side_its_patch_does_not_divide_is_refused(natives):
    with pytest.raises(ValueError, match="image side 18 is not a multiple of the ViT's patch "
                                         "size 4; pass an image_size that is, e.g. 16"):
        portable_backbone(natives("vit"), 18)


def test_a_backbone_built_for_another_size_is_refused():
    net = build_backbone("resnet_v2", **TINY_BACKBONE, image_size=32)
    with pytest.raises(ValueError, match="takes 32x32 images, not 16x16; pass image_size=32"):
        portable_backbone(net, 16)
    assert portable_backbone(net, 32).input.shape == (None, 32, 32, 3)


def test_non_square_images(natives):
    portable = portable_backbone(natives("vit"), (16, 24))
    images = np.random.default_rng(4).uniform(size=(2, 16, 24, 3)).astype("float32")
    expected = natives("vit")(images, training=False)
    assert portable(images)["block1"].shape == (2, 4, 6, 64)
    assert max(_max_differences(expected, portable(images)).values()) < TOLERANCE


def test_save_portable_is_atomic_and_checks_the_path(natives, tmp_path, monkeypatch):
    net = natives("resnet9")
    with pytest.raises(ValueError, match=r"must end in '\.keras'"):
        save_portable(net, str(tmp_path / "model.h5"), 16)
    path = tmp_path / "out" / "model.keras"
    path.parent.mkdir()
    path.write_text("an older file")

    def crash(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(keras.Model, "save", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_portable(net, str(path), 16)
    assert os.listdir(path.parent) == ["model.keras"] and path.read_text() == "an older file"
    monkeypatch.undo()
    assert save_portable(net, str(path), 16) == str(path)
    assert os.listdir(path.parent) == ["model.keras"]
    assert keras.saving.load_model(str(path), safe_mode=True).input.shape == (None, 16, 16, 3)


@pytest.mark.parametrize("source, problem", [
    ("missing.keras", "is not a .keras file"),
    ("weights.h5", "is not a .keras file"),
    (3, "source must be a keras.Model or a .keras path; got int"),
])
def test_load_portable_weights_refuses_what_is_not_a_portable_model(natives, source, problem):
    with pytest.raises(ValueError, match=problem):
        load_portable_weights(natives("resnet9"), source)


@keras.saving.register_keras_serializable(package="test_portable")
class _Scale(keras.layers.Layer):
    """A layer of another package (this test's): the portable model keeps a copy of it."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")

    def call(self, x):
        return x * self.scale


class _Unconverted(keras.layers.Layer):
    """Stands for a keras_ssl layer that keras_ssl.portable has no rule for."""

    __module__ = "keras_ssl.hypothetical"

    def call(self, x):
        return x


def _small_backbone(layer):
    from keras_ssl.backbones import make_backbone

    images = keras.Input((None, None, 3), name="images")
    x = layer(keras.layers.Conv2D(4, 3, name="conv")(images))
    return make_backbone(images, {"block1": x,
                                  "pre_logits": keras.layers.GlobalAveragePooling2D()(x)},
                         name="small", spec={"family": "small"})


def test_a_foreign_layer_is_copied_with_its_weights():
    native = _small_backbone(_Scale(name="scale"))
    native.get_layer("scale").scale.assign(np.arange(1, 5, dtype="float32"))
    portable = portable_backbone(native, 8)
    copy = portable.get_layer("scale")
    assert isinstance(copy, _Scale) and copy is not native.get_layer("scale")
    images = np.random.default_rng(5).uniform(size=(2, 8, 8, 3)).astype("float32")
    assert max(_max_differences(native(images), portable(images)).values()) == 0
    target = _small_backbone(_Scale(name="scale"))
    load_portable_weights(target, portable)
    assert max(_max_differences(native(images), target(images)).values()) == 0


def test_a_keras_ssl_layer_without_a_rule_is_refused():
    with pytest.raises(ValueError, match="layer 'odd' \\(_Unconverted\\) has no portable form"):
        portable_backbone(_small_backbone(_Unconverted(name="odd")), 8)
