"""The 3x3 patch grid of Jigsaw, Relative Patch Location and PIRL, and their shared patch head.

Geometry (Noroozi & Favaro 2016; Kolesnikov et al. 2019): the image is resized
to `resize`, a random `crop` x `crop` window is taken, cut into a `grid` x
`grid` array of cells of `crop // grid` pixels, and one `patch` x `patch`
crop is taken inside every cell. The space a cell leaves around its patch is
the gap between patches; where the patch sits in its cell is the jitter:
anywhere in the cell (`jitter=None`, Jigsaw), or centred plus at most
`jitter` pixels each way (Relative Patch Location, after Doersch et al. 2015).

Evaluation (keras-ssl-eval, from the export metadata `input_form: "patches"`,
`patch_grid`, `patch_size`, `input_size`) cuts the image resized to
`input_size` = `[crop, crop]` into the same grid of non-overlapping cells,
resizes each cell to `patch_size` and averages the features over patches.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_ssl import Method, random
from keras_ssl.heads import uses_synchronized_bn
from keras_ssl.normalization import BatchNormalization

_HEAD_DROPOUT_KEY = 1
GRID = 3  # cells per side


def random_crop_resized(image: tf.Tensor, resize: int, crop: int) -> tf.Tensor:
    """Resizes a `[H, W, 3]` image to `resize` x `resize`, then crops `crop` x `crop` at random."""
    image = tf.image.resize(image[None], [resize, resize], antialias=True)[0]
    return tf.image.stateless_random_crop(image, [crop, crop, 3], random.next_seed())


def cut_grid(image: tf.Tensor, grid: int, cell: int, patch: int, jitter: int | None = None) -> tf.Tensor:
    """One `patch` x `patch` crop per cell of a `grid` x `grid` cell array, row-major.

    Args:
      image: `[>= grid * cell, >= grid * cell, C]`; cells start at the top left.
      grid: Cells per side.
      cell: Cell size in pixels.
      patch: Patch size in pixels (<= cell).
      jitter: None: the patch lies anywhere in its cell (uniformly). An int:
        the patch is centred in its cell and moved by at most `jitter`
        pixels along each axis (clipped to the cell).

    Returns:
      `[grid * grid, patch, patch, C]`: cell (r, c) at index r * grid + c.
    """
    room = cell - patch
    count = grid * grid
    if jitter is None:
        offsets = random.uniform([count, 2], 0, room + 1, dtype=tf.int32)
    else:
        shift = random.uniform([count, 2], -jitter, jitter + 1, dtype=tf.int32)
        offsets = tf.clip_by_value(room // 2 + shift, 0, room)
    patches = []
    for index in range(count):
        row, col = divmod(index, grid)
        top = row * cell + offsets[index, 0]
        left = col * cell + offsets[index, 1]
        patches.append(tf.slice(image, tf.stack([top, left, 0]), [patch, patch, -1]))
    return tf.stack(patches)


def grid_cell(name: str, resize: int, crop: int, patch_size: int) -> int:
    """The cell size `crop // GRID` of a patch grid, its geometry checked.

    Args:
      name: The method's name in errors.
      resize: Side the image is resized to.
      crop: Side of the random crop cut into the grid.
      patch_size: Side of the patches.

    Returns:
      The cell size in pixels.

    Raises:
      ValueError: The crop exceeds the resized image, or a patch exceeds its cell.
    """
    if crop > resize:
        raise ValueError(f"{name}: crop ({crop}) must not exceed resize ({resize}).")
    cell = crop // GRID
    if patch_size > cell:
        raise ValueError(
            f"{name}: a patch of patch_size = {patch_size} px must fit in a cell of "
            f"crop // {GRID} = {crop} // {GRID} = {cell} px."
        )
    return cell


def standardize_patches(images: tf.Tensor) -> tf.Tensor:
    """Per-patch standardisation: zero mean and unit variance over each patch's pixels."""
    mean, variance = tf.nn.moments(images, axes=[-3, -2, -1], keepdims=True)
    return (images - mean) * tf.math.rsqrt(variance + 1e-5)


class PatchHead(keras.layers.Layer):
    """fc `hidden` + BN + ReLU + dropout -> `num_classes` logits (Jigsaw / RPL head).

    The dropout mask is drawn for the global batch from `dropout_seed` and
    sliced per replica (`keras_ssl.random.dropout`), so 2 replicas train like
    one device; Keras' `Dropout` would give every replica the same masks.
    The batch norm is synchronized across replicas when `synchronized_bn`.
    """

    def __init__(
        self, num_classes: int, hidden: int = 4096, dropout: float = 0.5,
        synchronized_bn: bool = False, **kwargs,
    ):
        super().__init__(**kwargs)
        self.rate = float(dropout)
        self.fc = keras.layers.Dense(hidden, use_bias=False, name="fc")
        self.fc_bn = BatchNormalization(synchronized=synchronized_bn, name="fc_bn")
        self.logits = keras.layers.Dense(num_classes, name="logits")

    def call(self, features, training=False, dropout_seed=None):
        hidden = keras.activations.relu(self.fc_bn(self.fc(features), training=training))
        if training and self.rate > 0.0:
            seed = random.next_seed() if dropout_seed is None else dropout_seed
            hidden = random.dropout(hidden, self.rate, seed)
        return self.logits(hidden)


def fc_head(backbone, num_classes: int, hidden: int = 4096, dropout: float = 0.5,
            name: str = "patch_head"):
    """The `PatchHead` of Jigsaw and Relative Patch Location (synchronized BN if the backbone's is)."""
    return PatchHead(
        num_classes, hidden, dropout, synchronized_bn=uses_synchronized_bn(backbone), name=name
    )


def embed_patches(method, embedding: keras.layers.Layer, patches: tf.Tensor, training: bool):
    """`[B, N, h, w, 3]` patches -> `[B, N * D]`, embeddings concatenated in patch order.

    Every patch goes through `method.export_input_transform`, the shared
    backbone (one forward pass for all B * N patches), its pre-logits and the
    dense `embedding` (D units).
    """
    shape = tf.shape(patches)
    flat = tf.reshape(patches, tf.concat([[-1], shape[2:]], 0))
    features = method.backbone(method.export_input_transform(flat), training=training)
    embedded = embedding(features["pre_logits"])
    return tf.reshape(embedded, [-1, patches.shape[1] * embedding.units])


class PatchGridMethod(Method):
    """Base of the methods whose backbone sees the cells of a 3x3 grid.

    Holds the grid's geometry (the module docstring) and cuts it. Exports
    take whole [0, 1] RGB images in the evaluation's patch protocol:
    `keras-ssl-eval` cuts the same grid and averages features over the
    patches.

    Args:
      backbone: The backbone, applied to every patch.
      name: The method's name in errors.
      resize: Side the image is resized to.
      crop: Side of the random crop cut into the grid.
      patch_size: Side of the patches (at most `crop // 3`).
      standardize: Per-patch standardisation (also in the export).
      **kwargs: Passed to `keras_ssl.Method`.
    """

    def __init__(self, backbone, name: str, resize: int, crop: int, patch_size: int,
                 standardize: bool, **kwargs):
        super().__init__(backbone, **kwargs)
        self.cell = grid_cell(name, resize, crop, patch_size)
        self.resize, self.crop, self.patch_size = int(resize), int(crop), int(patch_size)
        self.standardize = bool(standardize)

    def crop_image(self, image):
        """The augmented image resized to `resize`, then a random `crop` x `crop` window."""
        return random_crop_resized(self.augment(image), self.resize, self.crop)

    def cut_patches(self, image, jitter: int | None):
        """`[9, patch, patch, 3]`: one patch per cell of `crop_image`'s output (`cut_grid`)."""
        return cut_grid(image, GRID, self.cell, self.patch_size, jitter=jitter)

    def head_logits(self, features, training):
        """`self.head` on `features`, its dropout keyed by the step (same on every replica)."""
        return self.head(
            features, training=training, dropout_seed=random.step_seed(self, _HEAD_DROPOUT_KEY)
        )

    def export_input_transform(self, images):
        """What every patch goes through before the backbone (built into the export)."""
        return standardize_patches(images) if self.standardize else images

    def export_metadata(self):
        return {
            "input_form": "patches",
            "patch_grid": [GRID, GRID],
            "patch_size": [self.patch_size, self.patch_size],
            "input_size": [self.crop, self.crop],
        }
