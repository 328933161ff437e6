"""Tests for the embedded `synthetic_shapes` dataset (tiny sizes: 16-32 px, tens of examples)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from keras_ssl.datasets import synthetic_shapes as ss

NUM_CLASSES = len(ss.CLASS_NAMES)


def _split(factors, size=24, n=2 * NUM_CLASSES, seed=0):
    return ss.render_split(factors, size, num_examples=n, seed=seed)


def _interior(mask):
    """Mask pixels whose 4-neighbours are shape too (free of antialiased edges)."""
    m = mask[..., 0] > 0
    inner = m.copy()
    inner[1:] &= m[:-1]
    inner[:-1] &= m[1:]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    return inner


def _modal_fraction(pixels):
    """Fraction of pixels (rows of an [N, 3] array) equal to the most common one."""
    _, counts = np.unique(pixels, axis=0, return_counts=True)
    return counts.max() / len(pixels)


def _frame(image):
    """The outermost ring of pixels: pure background whenever viewpoint is off."""
    return np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])


def test_class_names_and_factor_strings():
    assert len(ss.CLASS_NAMES) >= 12 and len(set(ss.CLASS_NAMES)) == NUM_CLASSES
    assert len(set(ss.FACTOR_STRINGS)) == 16
    assert {"TCVL", "----", "-C-L"} <= set(ss.FACTOR_STRINGS)
    assert ss.parse_factors("-C-L") == ss.Factors(False, True, False, True)
    assert ss.parse_factors("TCVL") == ss.Factors(True, True, True, True)


@pytest.mark.parametrize("bad", ["TCV", "TCVLX", "tcvl", "CTVL", "TC-l", "", "T C-", 42])
def test_bad_factor_strings_raise(bad):
    with pytest.raises(ValueError, match=r"T, C, V, L") as err:
        ss.parse_factors(bad)
    assert repr(bad) in str(err.value)
    with pytest.raises(ValueError):
        ss.render_example(0, 0, bad, 16)


@pytest.mark.parametrize("size", [8, 15, 257, 32.0, True])
def test_bad_image_size_raises(size):
    with pytest.raises(ValueError, match="image_size"):
        ss.render_example(0, 0, "----", size)
    with pytest.raises(ValueError, match="image_size"):
        ss.synthetic_shapes_config("----", image_size=size)


def test_render_example_shapes_and_ranges():
    image, pose, mask = ss.render_example(3, 1, "TCVL", 16)
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    assert mask.shape == (16, 16, 1) and mask.dtype == np.uint8
    assert isinstance(pose, float) and -45 <= pose <= 45
    assert set(np.unique(mask)) == {0, 2}
    with pytest.raises(ValueError, match="label"):
        ss.render_example(0, NUM_CLASSES, "----", 16)


def test_deterministic_from_seed_and_independent_of_order():
    a, b, c = _split("TCVL", seed=0), _split("TCVL", seed=0), _split("TCVL", seed=1)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert a["image"].tobytes() != c["image"].tobytes()
    # Example 7 rendered alone equals example 7 of the split, and int seeds match generators.
    image, pose, mask = ss.render_example(ss.example_rng(0, "train", 7), 7, "TCVL", 24)
    np.testing.assert_array_equal(image, a["image"][7])
    assert np.float32(pose) == a["pose"][7]
    np.testing.assert_array_equal(ss.render_example([0, 0, 7], 7, "TCVL", 24)[0], image)
    test = ss.render_split("TCVL", 24, 4, seed=0, split="test")
    assert test["image"].tobytes() != a["image"][:4].tobytes()


def test_all_classes_balanced_and_masks_labelled():
    data = _split("TCVL")
    np.testing.assert_array_equal(np.bincount(data["label"]), np.full(NUM_CLASSES, 2))
    np.testing.assert_array_equal(data["index"], np.arange(len(data["label"])))
    for label, mask in zip(data["label"], data["segmentation_mask"]):
        assert set(np.unique(mask)) == {0, label + 1}
    assert np.all(np.abs(data["pose"]) <= 45)


def test_colour_off_is_grey_with_one_colour_set():
    grey = _split("T-VL")["image"].astype(int)
    assert np.all(grey[..., 0] == grey[..., 1]) and np.all(grey[..., 1] == grey[..., 2])
    colour = _split("TCVL")["image"].astype(int)
    assert np.mean(np.abs(colour[..., 0] - colour[..., 1])) > 5
    # All flat "----" images share one shape colour and one background colour; pixels that
    # are not a single colour are antialiased mixtures of those two.
    flat = _split("----")
    inner = np.stack([_interior(m) for m in flat["segmentation_mask"]])
    assert _modal_fraction(flat["image"][inner]) > 0.9
    assert len(np.unique(np.concatenate([_frame(im) for im in flat["image"]]), axis=0)) == 1
    # With colour on, shape and background keep their contrast.
    plain = _split("-C--")
    for image, mask in zip(plain["image"].astype(float), plain["segmentation_mask"]):
        luma = image @ np.array([0.299, 0.587, 0.114])
        inner = _interior(mask)
        assert abs(luma[inner].mean() - luma[mask[..., 0] == 0].mean()) > 0.25 * 255


def test_viewpoint_off_is_canonical_and_on_varies():
    fixed = _split("TC-L")
    assert np.all(fixed["pose"] == 0)
    masks = fixed["segmentation_mask"]
    np.testing.assert_array_equal(masks[:NUM_CLASSES], masks[NUM_CLASSES:])
    for mask in masks:  # Centred: the bounding box is (nearly) symmetric about the middle.
        cols = np.nonzero(mask[..., 0].any(0))[0]
        assert abs((cols[0] + cols[-1]) / 2 - (mask.shape[1] - 1) / 2) <= 1.5
    moving = _split("TCVL")
    assert np.all(np.abs(moving["pose"]) <= 45) and np.std(moving["pose"]) > 10
    assert not np.array_equal(
        moving["segmentation_mask"][:NUM_CLASSES], moving["segmentation_mask"][NUM_CLASSES:]
    )


def test_lighting_off_uniform_on_lit_from_above():
    flat = _split("----")
    for image, mask in zip(flat["image"], flat["segmentation_mask"]):
        assert _modal_fraction(image[_interior(mask)]) > 0.85
        assert _modal_fraction(_frame(image)) == 1
    lit = _split("---L")
    for image, mask in zip(lit["image"].astype(int), lit["segmentation_mask"]):
        assert _modal_fraction(image[_interior(mask)]) < 0.5
        assert _frame(image).std() > 1
        assert np.all(image[0, 0] > image[-1, 0]) and np.all(image[0, -1] > image[-1, -1])


def test_texture_off_flat_on_varied():
    flat = _split("-CV-")
    textured = _split("TCV-")
    for image, mask in zip(flat["image"], flat["segmentation_mask"]):
        assert _modal_fraction(image[_interior(mask)]) > 0.85
    tex_std = [
        im[_interior(m)].astype(float).std(axis=0).mean()
        for im, m in zip(textured["image"], textured["segmentation_mask"])
    ]
    assert np.median(tex_std) > 8
    assert np.median([_frame(im).astype(float).std(axis=0).mean() for im in textured["image"]]) > 8


def test_configs_differing_in_one_factor_share_the_other_nuisances():
    full = _split("TCVL")
    np.testing.assert_array_equal(_split("--V-")["pose"], full["pose"])
    np.testing.assert_array_equal(_split("--V-")["segmentation_mask"], full["segmentation_mask"])
    # Same colours with and without texture: the flat fill is the texture's primary tone.
    flat, lit = _split("-C--"), _split("TC--")
    np.testing.assert_array_equal(flat["segmentation_mask"], lit["segmentation_mask"])
    assert np.all(
        np.abs(flat["image"][:, 0, 0].astype(int) - lit["image"][:, 0, 0].astype(int)).max(-1) < 128
    )


def test_mask_matches_rendered_shape():
    data = _split("----", size=32)
    for image, mask in zip(data["image"].astype(float), data["segmentation_mask"]):
        midpoint = (0.9 + 0.45) / 2 * 255
        value = image[..., 0]
        clear = np.abs(value - midpoint) > 1  # Exactly half-covered pixels may go either way.
        assert np.all((value > midpoint)[clear] == (mask[..., 0] > 0)[clear])
        assert clear.mean() > 0.95
        differs = image[..., 0] != image[0, 0, 0]
        assert np.all(differs[mask[..., 0] > 0])


def test_64px():
    image, _, mask = ss.render_example(0, 4, "TCVL", 64)
    assert image.shape == (64, 64, 3) and mask.shape == (64, 64, 1)


def test_builder_configs():
    names = [c.name for c in ss.SyntheticShapes.BUILDER_CONFIGS]
    assert len(names) == 32 and len(set(names)) == 32
    assert set(ss.FACTOR_STRINGS) <= set(names)
    assert {f + "_64" for f in ss.FACTOR_STRINGS} <= set(names)
    assert ss.SyntheticShapes.DEFAULT_CONFIG_NAME == "TCVL"
    by_name = {c.name: c for c in ss.SyntheticShapes.BUILDER_CONFIGS}
    assert by_name["-C-L_64"].image_size == 64 and by_name["-C-L_64"].factors == "-C-L"
    assert (by_name["TCVL"].train_size, by_name["TCVL"].test_size) == (10000, 2000)
    cfg = ss.synthetic_shapes_config("-C-L", 16, 48, 24, seed=3)
    assert cfg.name == "-C-L_16px_n48x24_s3"
    with pytest.raises(ValueError, match="Bad factor string"):
        ss.synthetic_shapes_config("TCVX")


def _prepare(data_dir, factors="-C-L", size=16, train=2 * NUM_CLASSES, test=NUM_CLASSES):
    import tensorflow_datasets as tfds

    cfg = ss.synthetic_shapes_config(factors, size, train, test, seed=0)
    builder = tfds.builder("synthetic_shapes", config=cfg, data_dir=str(data_dir))
    builder.download_and_prepare()
    return builder


def test_builder_prepares_and_reads_back(tmp_path):
    builder = _prepare(tmp_path)
    info = builder.info
    assert info.splits["train"].num_examples == 2 * NUM_CLASSES
    assert info.splits["test"].num_examples == NUM_CLASSES
    assert info.features["label"].names == list(ss.CLASS_NAMES)
    assert info.supervised_keys == ("image", "label")
    assert "Newell" in info.description
    examples = sorted(builder.as_dataset(split="train").as_numpy_iterator(), key=lambda e: e["index"])
    expected = ss.render_split("-C-L", 16, 2 * NUM_CLASSES, seed=0)
    assert len(examples) == 2 * NUM_CLASSES
    for ex in examples:
        i = ex["index"]
        assert ex["image"].shape == (16, 16, 3) and ex["image"].dtype == np.uint8
        assert ex["segmentation_mask"].shape == (16, 16, 1)
        assert ex["pose"].dtype == np.float32 and ex["index"].dtype == np.int64
        np.testing.assert_array_equal(ex["image"], expected["image"][i])
        np.testing.assert_array_equal(ex["segmentation_mask"], expected["segmentation_mask"][i])
        assert ex["label"] == expected["label"][i]
    image, label = next(iter(builder.as_dataset(split="test", as_supervised=True)))
    assert tuple(image.shape) == (16, 16, 3) and label.dtype.name == "int64"


@pytest.mark.slow
def test_read_from_files_without_builder_code(tmp_path):
    _prepare(tmp_path, factors="-C-L")
    name = ss.synthetic_shapes_config("-C-L", 16, 2 * NUM_CLASSES, NUM_CLASSES).name
    script = textwrap.dedent(f"""
      import sys
      import tensorflow_datasets as tfds
      builder = tfds.builder("synthetic_shapes/{name}", data_dir={str(tmp_path)!r})
      ds = builder.as_dataset(split="test")
      n = sum(1 for _ in ds)
      ex = next(iter(ds))
      assert not any(m.startswith("keras_ssl") for m in sys.modules), "imported keras_ssl"
      print(type(builder).__name__, n, tuple(ex["image"].shape),
            builder.info.features["label"].num_classes)
  """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    last_line = result.stdout.strip().splitlines()[-1]
    assert last_line == f"ReadOnlyBuilder {NUM_CLASSES} (16, 16, 3) {NUM_CLASSES}"
