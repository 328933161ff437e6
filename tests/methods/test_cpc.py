"""CPC: the patch grid, per-patch augmentation, the causal context, InfoNCE, setup errors, training."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.registry import METHODS
from keras_ssl_methods.cpc import CausalContext, cpc_info_nce, patch_grid
from tests.helpers.classic_methods import fit_losses
from tests.helpers.method_runs import build_configured_method
from keras_ssl.testing import tiny_backbone

# A 3x3 grid of 8-px patches at stride 4: a 16-px crop.
SMALL = dict(grid_size=3, patch_size=8, patch_stride=4, prediction_steps=2, context_width=16,
             context_blocks=1)


def _method(**kwargs):
    return METHODS.get("cpc")(tiny_backbone(), **{**SMALL, **kwargs})


def _example(image, index=0):
    return {"image": tf.constant(image, tf.float32), "label": tf.constant(0, tf.int64),
            "index": tf.constant(index, tf.int64)}


def _numpy_grid(image, grid, patch, stride):
    return np.stack([image[i * stride:i * stride + patch, j * stride:j * stride + patch]
                     for i in range(grid) for j in range(grid)])


def _numpy_info_nce(predictions, targets, candidates, first):
    """The mean over (b, i, j, k) of -log softmax(zhat . candidates)[target of (b, i + k, j)]."""
    batch, n = targets.shape[:2]
    terms, hits = [], []
    for k, predicted in enumerate(predictions, start=1):
        for b in range(batch):
            for i in range(n - k):
                for j in range(n):
                    scores = candidates @ predicted[b, i, j].astype(np.float64)
                    label = first + b * n * n + (i + k) * n + j
                    log_softmax = scores - scores.max() - np.log(np.exp(scores - scores.max()).sum())
                    terms.append(-log_softmax[label])
                    hits.append(np.argmax(scores) == label)
    return np.mean(terms), np.mean(hits)


@pytest.mark.parametrize("size,grid,patch,stride", [(16, 3, 8, 4), (20, 3, 8, 5), (32, 7, 8, 4),
                                                   (11, 2, 4, 6)])
def test_patch_grid_matches_numpy_slicing(size, grid, patch, stride):
    image = np.random.RandomState(size).rand(size, size + 3, 3).astype(np.float32)
    np.testing.assert_array_equal(patch_grid(tf.constant(image), grid, patch, stride),
                                  _numpy_grid(image, grid, patch, stride))


def _check_patches(patches, image, flipped_allowed):
    expected = _numpy_grid(image, 3, 8, 4)
    assert patches.shape == (9, 8, 8, 3)
    flips = []
    for got, plain in zip(np.asarray(patches), expected):
        if np.array_equal(got, plain):
            flips.append(False)
        else:
            assert flipped_allowed
            np.testing.assert_array_equal(got, plain[:, ::-1])
            flips.append(True)
    return flips


def test_preprocess_eager_cuts_the_grid():
    # A 16-px image is exactly the crop: the patches are its grid.
    image = np.random.RandomState(0).rand(16, 16, 3).astype(np.float32)
    inputs = _method(flip_patches=False).preprocess(_example(image))
    assert not any(_check_patches(inputs["patches"], image, flipped_allowed=False))


def test_preprocess_inside_tf_data_flips_patches_one_by_one():
    image = np.random.RandomState(1).rand(16, 16, 3).astype(np.float32)
    method = _method()
    examples = tf.data.Dataset.from_tensor_slices({
        "image": np.repeat(image[None], 4, 0), "label": np.zeros(4, np.int64),
        "index": np.arange(4, dtype=np.int64)})
    flips = [flip for patches in next(iter(method.make_dataset(examples, 4)))["patches"]
             for flip in _check_patches(patches, image, flipped_allowed=True)]
    assert 0 < sum(flips) < len(flips)   # drawn per patch


def test_larger_images_give_a_random_crop_and_resize_is_honoured():
    image = np.random.RandomState(2).rand(24, 24, 3).astype(np.float32)
    patches = _method(flip_patches=False).preprocess(_example(image))["patches"].numpy()
    # The top-left patch sits somewhere in the image, at the grid's offsets.
    offsets = [(t, left) for t in range(9) for left in range(9)
               if np.array_equal(image[t:t + 16, left:left + 16][:8, :8], patches[0])]
    assert len(offsets) == 1
    t, left = offsets[0]
    np.testing.assert_array_equal(patches, _numpy_grid(image[t:t + 16, left:left + 16], 3, 8, 4))
    resized = _method(resize=20).preprocess(_example(np.full((9, 9, 3), 0.25, np.float32)))
    np.testing.assert_allclose(resized["patches"], 0.25, atol=1e-5)


def test_color_dropping_keeps_one_channel_per_patch():
    image = np.random.RandomState(3).rand(16, 16, 3).astype(np.float32)
    patches = _method(flip_patches=False, color_drop_probability=1.0).preprocess(
        _example(image))["patches"].numpy()
    for got, plain in zip(patches, _numpy_grid(image, 3, 8, 4)):
        kept = [c for c in range(3) if np.array_equal(got[..., c], plain[..., c])]
        assert len(kept) == 1
        others = [c for c in range(3) if c != kept[0]]
        assert np.abs(got[..., others]).max() < 0.1 * plain[..., kept[0]].std() + 1e-6


def test_info_nce_matches_numpy():
    rng = np.random.RandomState(4)
    batch, n, dim, steps = 2, 4, 5, 3
    targets = rng.randn(batch, n, n, dim).astype(np.float32)
    predictions = [rng.randn(batch, n, n, dim).astype(np.float32) for _ in range(steps)]
    # One device: the candidates are this batch's patches.
    loss, accuracy = cpc_info_nce(predictions, targets)
    flat = targets.reshape(-1, dim).astype(np.float64)
    want_loss, want_accuracy = _numpy_info_nce(predictions, targets, flat, 0)
    assert float(loss) == pytest.approx(want_loss, rel=1e-5)
    assert float(accuracy) == pytest.approx(want_accuracy)
    # Second of two replicas: another replica's patches come first among the candidates.
    others = rng.randn(batch * n * n, dim).astype(np.float32)
    gathered = np.concatenate([others, targets.reshape(-1, dim)])
    loss, _ = cpc_info_nce(predictions, targets, gathered, first_target=batch * n * n)
    want_loss, _ = _numpy_info_nce(predictions, targets, gathered.astype(np.float64),
                                   batch * n * n)
    assert float(loss) == pytest.approx(want_loss, rel=1e-5)
    # Cosine scores at a temperature.
    loss, _ = cpc_info_nce(predictions, targets, normalize=True, temperature=0.1)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    want_loss, _ = _numpy_info_nce([unit(p.astype(np.float64)) / 0.1 for p in predictions],
                                   targets, unit(flat), 0)
    assert float(loss) == pytest.approx(want_loss, rel=1e-5)


def test_pretext_loss_is_info_nce_of_the_model_outputs():
    method = _method()
    image = np.random.RandomState(5).rand(4, 16, 16, 3).astype(np.float32)
    examples = tf.data.Dataset.from_tensor_slices({
        "image": image, "label": np.zeros(4, np.int64), "index": np.arange(4, dtype=np.int64)})
    batch = next(iter(method.make_dataset(examples, 4)))
    loss, metrics = method.compute_pretext_loss(batch, training=False)
    z = method.embed(batch["patches"], training=False)
    context = method.context_network(z)
    predictions = [p(context).numpy() for p in method.predictors]
    want_loss, want_accuracy = _numpy_info_nce(
        predictions, z.numpy(), z.numpy().reshape(-1, z.shape[-1]).astype(np.float64), 0)
    assert float(loss) == pytest.approx(want_loss, rel=1e-4)
    assert float(metrics["prediction_accuracy"]) == pytest.approx(want_accuracy)


def test_context_at_row_i_does_not_depend_on_rows_below():
    keras.utils.set_random_seed(6)
    network = CausalContext(width=8, num_blocks=3)
    rng = np.random.RandomState(6)
    grid = rng.randn(2, 5, 5, 4).astype(np.float32)
    base = network(grid).numpy()
    for row in range(5):
        below = grid.copy()
        below[:, row + 1:] = rng.randn(*below[:, row + 1:].shape)
        changed = network(below).numpy()
        np.testing.assert_array_equal(changed[:, :row + 1], base[:, :row + 1])
        # Row i itself and the rows above do reach c_i (the mask is not too strict).
        this_row = grid.copy()
        this_row[:, row] += 1.0
        assert not np.allclose(network(this_row).numpy()[:, row], base[:, row])
        # Each block reaches one row further up: c_i sees rows i - 3 .. i.
        for source in range(row):
            above = grid.copy()
            above[:, source] += 1.0
            reached = not np.allclose(network(above).numpy()[:, row], base[:, row])
            assert reached == (source >= row - 3), (row, source)


def test_context_mask_holds_in_the_gradient():
    network = CausalContext(width=8, num_blocks=2)
    grid = tf.constant(np.random.RandomState(7).randn(1, 4, 4, 3).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(grid)
        context = network(grid)
        rows = [tf.reduce_sum(context[:, i]) for i in range(4)]
    for i, row in enumerate(rows):
        gradient = np.abs(tape.gradient(row, grid).numpy()).sum(axis=(0, 2, 3))
        # Two blocks: c_i sees rows i - 2 .. i, nothing else.
        reach = np.arange(4)
        assert np.all((gradient > 0.0) == ((reach <= i) & (reach >= i - 2))), (i, gradient)


def test_an_image_too_small_for_the_grid_is_refused_at_setup():
    method = _method()
    with pytest.raises(ValueError, match=r"image_size = 15.*15 x 15 px.*3 x 3 patches of 8 px "
                                         r"at stride 4.*16 px.*at least 16.*cpc.resize"):
        method.check_training_setup(32, 15)
    method.check_training_setup(32, 16)
    method.check_training_setup(32, None)
    _method(resize=16).check_training_setup(32, 8)   # resized first: any size works


def test_an_image_too_small_for_the_grid_is_refused_in_preprocess():
    method = _method()
    with pytest.raises(ValueError, match=r"the image is 12 x 20 px.*16 px"):
        method.preprocess(_example(np.zeros((12, 20, 3), np.float32)))
    # Images of unknown size (as stored): the check runs in the graph.
    dataset = tf.data.Dataset.from_generator(
        lambda: iter([_example(np.zeros((12, 12, 3), np.float32))]),
        output_signature={"image": tf.TensorSpec([None, None, 3], tf.float32),
                          "label": tf.TensorSpec([], tf.int64),
                          "index": tf.TensorSpec([], tf.int64)}).map(method.preprocess)
    with pytest.raises(tf.errors.InvalidArgumentError, match="too small for the patch grid"):
        next(iter(dataset))


@pytest.mark.parametrize("kwargs,message", [
    ({"grid_size": 1, "prediction_steps": 1}, "grid_size must be at least 2"),
    ({"prediction_steps": 3}, r"prediction_steps \(K\) must be in \[1, grid_size - 1\]"),
    ({"prediction_steps": 0}, "prediction_steps"),
    ({"patch_stride": 0}, "patch_stride must be a positive integer"),
    ({"resize": 12}, r"resize \(12\) is smaller than the crop.*16 px"),
    ({"color_drop_probability": 1.5}, "color_drop_probability"),
    ({"embedding_dim": 0}, "embedding_dim"),
    ({"temperature": 0.0}, "temperature must be positive"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _method(**kwargs)


def test_export_metadata_gives_evaluation_cells_at_the_training_patch_scale():
    from keras_ssl_eval.extraction.patches import cut_patches, patch_spec_from_metadata

    metadata = _method().export_metadata()
    assert metadata["input_form"] == "patches" and metadata["patch_grid"] == [2, 2]
    assert metadata["patch_size"] == [8, 8] and metadata["input_size"] == [16, 16]
    image = np.random.RandomState(8).rand(1, 16, 16, 3).astype(np.float32)
    cells = cut_patches(image, patch_spec_from_metadata(metadata)).numpy()
    # Non-overlapping cells of the training patch size: every other patch of the grid.
    np.testing.assert_array_equal(cells, _numpy_grid(image[0], 2, 8, 8))


def test_loss_falls_when_training_a_few_steps(data_dir):
    keras.utils.set_random_seed(0)
    # The papers' raw dot-product scores: at the harness's 0.05 these 16-px shapes' loss
    # went 5.5 -> 10.5 (the scores overshoot); at 0.01 it falls 2.3 -> 0.9.
    losses = fit_losses(_method(), data_dir, image_size=16, learning_rate=0.01)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("config", ["synthetic_shapes", "imagenet_resnet50"])
def test_gin_configs_build_the_method(config):
    method = build_configured_method(f"cpc/{config}.gin", [
        "resnet_v2.widening_factor = 1", "resnet_v2.depth = 10", "cpc.context_width = 8"])
    patches = tf.zeros([1, method.grid_size ** 2, method.patch_size, method.patch_size, 3])
    assert method.embed(patches, training=False).shape[:3] == (1, method.grid_size,
                                                               method.grid_size)
