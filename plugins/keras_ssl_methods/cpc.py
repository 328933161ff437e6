"""Contrastive Predictive Coding on images (van den Oord et al. 2018; Henaff et al. 2019).

Input builder (per image, in tf.data): the augmented image (optionally resized
to `resize` first) gives a random `crop` x `crop` window, cut into a
`grid_size` x `grid_size` grid of overlapping `patch_size` patches at
`patch_stride` (the papers: a 256 crop, 7 x 7 patches of 64 px at stride 32,
so neighbours overlap by half), with

    crop = patch_size + (grid_size - 1) * patch_stride.

Each patch is then augmented on its own (CPC v2's patch-based augmentation):
mirrored left-right with probability 1/2 and, with `color_drop_probability`,
reduced to one random colour channel (the other two become weak Gaussian
noise, the colour dropping of `relative_patch_location`).

Model: the shared backbone encodes every patch separately, z_{i,j} =
pre_logits(x_{i,j}) (optionally a linear map to `embedding_dim`). A masked
context network over the grid of z gives c_{i,j}, whose receptive field
holds only the rows <= i (a PixelCNN-style stack: every convolution sees the
current row and the one above, never a row below, by padding the grid at the
top only; `CausalContext`). For each offset k = 1..K (`prediction_steps`) a
linear W_k predicts the embedding k rows below, zhat_{i+k,j} = W_k c_{i,j}.

Loss (InfoNCE): every prediction must pick its own target out of all patch
embeddings of the global batch (every location of every image, gathered
across replicas with `keras_ssl.cross_replica.gather`, so 2 replicas train
like one device):

    L = -mean_{b,i,j,k} log( exp(zhat . z_{b,i+k,j}) / sum_{n in batch} exp(zhat . z_n) ),

the mean over every (image, position, offset) with a row i + k inside the
grid, i.e. the paper's sum over i, j, k divided by the number of terms. The
scores are raw dot products, as in the papers (no normalisation, no
temperature).

Export: the backbone on single patches, with the patch metadata
`keras-ssl-eval` follows (`input_form: "patches"`). The evaluation cuts
non-overlapping cells, so the export asks for the grid of
`crop // patch_size` cells of exactly `patch_size` px cut from the
`input_size` = cells x `patch_size` image, i.e. patches at the scale the
backbone was trained on, their features averaged.

Kolesnikov et al. (2019, Table 2) quote CPC (van den Oord et al. 2018,
ResNet-101 v2) at 48.7% ImageNet linear top-1; CPC v2 reports 71.5% with a
wider ResNet-161 and layer normalisation.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_ssl import Method, cross_replica, random
from keras_ssl.backbones import output_dim


def patch_grid(image: tf.Tensor, grid_size: int, patch_size: int, stride: int) -> tf.Tensor:
    """The `grid_size` x `grid_size` patches of `image` at `stride`, row-major.

    Args:
      image: `[H, W, C]`, at least `patch_size + (grid_size - 1) * stride`
        on each side; the grid starts at the top-left corner.
      grid_size: Patches per side.
      patch_size: Side of a patch in pixels.
      stride: Pixels between the tops (lefts) of neighbouring patches.

    Returns:
      `[grid_size ** 2, patch_size, patch_size, C]`: patch (i, j), whose top
      left corner is at `(i * stride, j * stride)`, at index `i * grid_size + j`.

    Example:

    >>> patch_grid(tf.zeros([32, 32, 3]), 3, 16, 8).shape
    TensorShape([9, 16, 16, 3])
    """
    extent = patch_size + (grid_size - 1) * stride
    window = image[None, :extent, :extent]
    patches = tf.image.extract_patches(
        window, sizes=[1, patch_size, patch_size, 1], strides=[1, stride, stride, 1],
        rates=[1, 1, 1, 1], padding="VALID")
    channels = image.shape[-1] if image.shape[-1] is not None else tf.shape(image)[-1]
    return tf.reshape(patches, [grid_size * grid_size, patch_size, patch_size, channels])


def cpc_info_nce(predictions, targets, gathered_targets=None, first_target: int | tf.Tensor = 0,
                 normalize: bool = False, temperature: float = 1.0):
    """CPC's InfoNCE over row offsets k = 1..K, with every patch of the batch as a candidate.

    Args:
      predictions: A list of K tensors `[B, n, n, D]`: entry k - 1 holds
        W_k c_{i,j} at every grid position (rows i + k >= n are ignored).
      targets: `[B, n, n, D]`, the patch embeddings z of this replica's images.
      gathered_targets: `[M, D]`, every candidate embedding (the global batch's
        z, flattened image-major then row-major); default: `targets` flattened.
      first_target: The row of `gathered_targets` where this replica's
        flattened `targets` start (`replica index * B * n * n`).
      normalize: l2-normalise predictions and candidates (cosine scores).
      temperature: The scores are divided by it.

    Returns:
      `(loss, accuracy)`: the mean cross-entropy over every (image, position,
      offset) term, and the share of terms whose highest score is their target.
    """
    targets = tf.cast(targets, tf.float32)
    batch, n, dim = tf.shape(targets)[0], targets.shape[1], targets.shape[-1]
    if gathered_targets is None:
        gathered_targets = tf.reshape(targets, [-1, dim])
    candidates = tf.cast(gathered_targets, tf.float32)
    if normalize:
        candidates = tf.math.l2_normalize(candidates, axis=-1)
    losses, hits = [], []
    for k, predicted in enumerate(predictions, start=1):
        queries = tf.reshape(tf.cast(predicted, tf.float32)[:, :n - k], [-1, dim])
        if normalize:
            queries = tf.math.l2_normalize(queries, axis=-1)
        # Query (b, i, j) targets z_{b, i + k, j}, flat index b n^2 + (i + k) n + j.
        rows = tf.range(n - k) + k
        local = (tf.range(batch)[:, None, None] * n * n + rows[None, :, None] * n
                 + tf.range(n)[None, None, :])
        labels = tf.reshape(local, [-1]) + tf.cast(first_target, tf.int32)
        logits = tf.matmul(queries, candidates, transpose_b=True) / temperature
        losses.append(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        hits.append(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels),
                            tf.float32))
    losses, hits = tf.concat(losses, 0), tf.concat(hits, 0)
    return tf.reduce_mean(losses), tf.reduce_mean(hits)


class CausalContext(keras.layers.Layer):
    """A masked (causal) convolutional context network over a grid of embeddings.

    A 1x1 convolution to `width` channels, then `num_blocks` residual blocks
    (ReLU, 1x1 conv, ReLU, causal conv, ReLU, 1x1 conv, added to the input),
    PixelCNN-style. The causal convolution has a 2 x 3 kernel over (the row
    above, this row) x (three columns): the grid is padded with one row at the
    top and none at the bottom, so output row i sees input rows i - 1 and i
    only: after `num_blocks` blocks c at row i depends on rows
    i - num_blocks .. i, never on a row below.
    No batch norm: CPC v2 found that statistics shared across patches let a
    network bypass the mask.

    Args:
      width: Channels of the context.
      num_blocks: Residual blocks.
    """

    def __init__(self, width: int, num_blocks: int, **kwargs):
        super().__init__(**kwargs)
        self.width, self.num_blocks = int(width), int(num_blocks)
        self.project = keras.layers.Conv2D(self.width, 1, name="project")
        self.blocks = []
        for b in range(self.num_blocks):
            self.blocks.append((
                keras.layers.Conv2D(self.width, 1, name=f"block{b}_in"),
                keras.layers.Conv2D(self.width, (2, 3), padding="valid", name=f"block{b}_causal"),
                keras.layers.Conv2D(self.width, 1, name=f"block{b}_out"),
            ))

    def call(self, grid):
        x = self.project(grid)
        for conv_in, causal, conv_out in self.blocks:
            h = conv_in(keras.activations.relu(x))
            # One row of zeros above, none below; one column each side.
            h = tf.pad(keras.activations.relu(h), [[0, 0], [1, 0], [1, 1], [0, 0]])
            h = conv_out(keras.activations.relu(causal(h)))
            x = x + h
        return x


class CPC(Method):
    """Predicts the embeddings of the patches below from a causal context of the rows above.

    Args:
      backbone: The backbone, applied to every patch (for 64-px patches
        Kolesnikov et al.'s patch backbone: root stride 1, block strides
        (1, 2, 2, 1)).
      grid_size: Patches per side of the grid (7).
      patch_size: Side of a patch in pixels (64).
      patch_stride: Pixels between neighbouring patches (32: half overlap).
        The crop is `patch_size + (grid_size - 1) * patch_stride` (256).
      resize: Side the image is resized to before the random crop; None
        (default) crops the image as it comes, which must then be at least
        the crop on each side (e.g. `keras_ssl.train.image_size = 300`).
      prediction_steps: K, the largest row offset predicted (5; at most
        `grid_size - 1`).
      context_width: Channels of the context network.
      context_blocks: Residual blocks of the context network; the context at
        row i sees rows i - context_blocks .. i.
      embedding_dim: Width of z: None (default) uses the pre-logits
        themselves, an int adds a linear map to that width.
      normalize: Score cosines (l2-normalised predictions and embeddings)
        rather than the papers' raw dot products.
      temperature: The scores are divided by it (1: the papers').
      flip_patches: Mirror every patch left-right with probability 1/2.
      color_drop_probability: Chance a patch keeps a single colour channel
        (CPC v2's colour dropping; 0 by default).
      augmentation: Stack applied to the whole image before the crop.
      **kwargs: Passed to `keras_ssl.Method`.

    Example:

    >>> from keras_ssl.backbones import build_backbone
    >>> net = build_backbone("resnet_v2", depth=10, widening_factor=1,
    ...                      small_image_stem=True)
    >>> method = CPC(net, grid_size=3, patch_size=16, patch_stride=8,
    ...              prediction_steps=2, context_width=32, context_blocks=1)
    >>> inputs = method.preprocess({"image": tf.zeros((32, 32, 3)),
    ...                             "label": tf.constant(0, tf.int64),
    ...                             "index": tf.constant(0, tf.int64)})
    >>> inputs["patches"].shape
    TensorShape([9, 16, 16, 3])
    """

    @classmethod
    def tiny_settings(cls):
        # A 3x3 grid of 8-px patches at stride 4 covers the 16-px images; K = 2 rows.
        return dict(grid_size=3, patch_size=8, patch_stride=4, prediction_steps=2, context_width=16,
                    context_blocks=1)

    def __init__(
        self,
        backbone,
        grid_size: int = 7,
        patch_size: int = 64,
        patch_stride: int = 32,
        resize: int | None = None,
        prediction_steps: int = 5,
        context_width: int = 512,
        context_blocks: int = 6,
        embedding_dim: int | None = None,
        normalize: bool = False,
        temperature: float = 1.0,
        flip_patches: bool = True,
        color_drop_probability: float = 0.0,
        augmentation="none",
        **kwargs,
    ):
        super().__init__(backbone, augmentation=augmentation, **kwargs)
        for setting, value in (("grid_size", grid_size), ("patch_size", patch_size),
                               ("patch_stride", patch_stride), ("context_width", context_width)):
            if int(value) < 1 or int(value) != value:
                raise ValueError(f"cpc: {setting} must be a positive integer, got {value!r}.")
        if grid_size < 2:
            raise ValueError(
                f"cpc: grid_size must be at least 2 (a row to predict from and one to predict), "
                f"got {grid_size}.")
        if not 1 <= prediction_steps <= grid_size - 1:
            raise ValueError(
                f"cpc: prediction_steps (K) must be in [1, grid_size - 1] = [1, {grid_size - 1}]: "
                f"the context at row 0 can predict at most {grid_size - 1} rows below; got "
                f"{prediction_steps}. Lower cpc.prediction_steps or raise cpc.grid_size.")
        if context_blocks < 0:
            raise ValueError(f"cpc: context_blocks must be >= 0, got {context_blocks}.")
        if embedding_dim is not None and embedding_dim < 1:
            raise ValueError(f"cpc: embedding_dim must be None or positive, got {embedding_dim}.")
        if temperature <= 0:
            raise ValueError(f"cpc: temperature must be positive, got {temperature}.")
        if not 0.0 <= color_drop_probability <= 1.0:
            raise ValueError(
                f"cpc: color_drop_probability must be in [0, 1], got {color_drop_probability}.")
        self.grid_size, self.patch_size = int(grid_size), int(patch_size)
        self.patch_stride = int(patch_stride)
        self.crop = self.patch_size + (self.grid_size - 1) * self.patch_stride
        if resize is not None and resize < self.crop:
            raise ValueError(
                f"cpc: resize ({resize}) is smaller than the crop the patch grid needs: "
                f"{self.grid_size} x {self.grid_size} patches of {self.patch_size} px at stride "
                f"{self.patch_stride} span patch_size + (grid_size - 1) * patch_stride = "
                f"{self.crop} px. Set cpc.resize >= {self.crop}, or shrink cpc.grid_size, "
                f"cpc.patch_size or cpc.patch_stride.")
        self.resize = None if resize is None else int(resize)
        self.prediction_steps = int(prediction_steps)
        self.normalize, self.temperature = bool(normalize), float(temperature)
        self.flip_patches = bool(flip_patches)
        self.color_drop_probability = float(color_drop_probability)
        self.embedding = (None if embedding_dim is None
                          else keras.layers.Dense(int(embedding_dim), name="cpc_embedding"))
        self.context_network = CausalContext(context_width, context_blocks, name="cpc_context")
        units = output_dim(backbone) if embedding_dim is None else int(embedding_dim)
        # W_k, k = 1..K: context -> the embedding k rows below.
        self.predictors = [keras.layers.Dense(units, use_bias=False, name=f"cpc_predictor_{k}")
                           for k in range(1, self.prediction_steps + 1)]

    # ------------------------------------------------------------ geometry
    def _too_small(self, height, width, where: str) -> str:
        return (
            f"cpc: {where} is {height} x {width} px, too small for the patch grid: "
            f"{self.grid_size} x {self.grid_size} patches of {self.patch_size} px at stride "
            f"{self.patch_stride} need a crop of patch_size + (grid_size - 1) * patch_stride = "
            f"{self.crop} px. Raise keras_ssl.train.image_size to at least {self.crop}, set "
            f"cpc.resize = {self.crop} (or more) to resize every image first, or shrink "
            f"cpc.grid_size, cpc.patch_size or cpc.patch_stride.")

    def check_training_setup(self, global_batch_size, image_size):
        if self.resize is None and image_size is not None and image_size < self.crop:
            raise ValueError(self._too_small(
                image_size, image_size, f"keras_ssl.train.image_size = {image_size}, so each image"))

    def crop_image(self, image: tf.Tensor) -> tf.Tensor:
        """The augmented image (resized to `resize` if set), then a random `crop` window."""
        image = self.augment(image)
        if self.resize is not None:
            image = tf.image.resize(image[None], [self.resize, self.resize], antialias=True)[0]
            image = tf.clip_by_value(image, 0.0, 1.0)
        else:
            height, width = image.shape[0], image.shape[1]
            if height is not None and width is not None:
                if height < self.crop or width < self.crop:
                    raise ValueError(self._too_small(height, width, "the image"))
            else:
                shape = tf.shape(image)
                check = tf.debugging.Assert(
                    tf.reduce_min(shape[:2]) >= self.crop,
                    [self._too_small("H", "W", "an image"), "H, W =", shape[:2]])
                with tf.control_dependencies([check]):
                    image = tf.identity(image)
        return tf.image.stateless_random_crop(image, [self.crop, self.crop, 3], random.next_seed())

    def augment_patches(self, patches: tf.Tensor) -> tf.Tensor:
        """Per-patch flips and colour dropping of `[N, p, p, 3]` patches (draws made for all)."""
        count = self.grid_size * self.grid_size
        flip = random.uniform([count]) < 0.5
        keep = random.uniform([count], 0, 3, dtype=tf.int32)
        noise = random.normal(tf.shape(patches))
        drop = random.uniform([count]) < self.color_drop_probability
        if self.flip_patches:
            patches = tf.where(flip[:, None, None, None], tf.reverse(patches, axis=[2]), patches)
        if self.color_drop_probability > 0.0:
            mask = tf.one_hot(keep, 3)[:, None, None, :]
            kept = tf.reduce_sum(patches * mask, axis=-1)
            scale = 0.01 * tf.math.reduce_std(kept, axis=[1, 2])[:, None, None, None]
            dropped = patches * mask + noise * scale * (1.0 - mask)
            patches = tf.where(drop[:, None, None, None], dropped, patches)
        return patches

    def preprocess(self, example):
        patches = patch_grid(self.crop_image(example["image"]), self.grid_size, self.patch_size,
                             self.patch_stride)
        return {"patches": self.augment_patches(patches)}

    # --------------------------------------------------------------- model
    def embed(self, patches: tf.Tensor, training: bool) -> tf.Tensor:
        """`[B, n * n, p, p, 3]` -> z `[B, n, n, D]` (one backbone pass for all patches)."""
        shape = tf.shape(patches)
        flat = tf.reshape(patches, tf.concat([[-1], shape[2:]], 0))
        z = self.backbone(self.export_input_transform(flat), training=training)["pre_logits"]
        if self.embedding is not None:
            z = self.embedding(z)
        n = self.grid_size
        return tf.reshape(z, [-1, n, n, z.shape[-1]])

    def compute_pretext_loss(self, batch, training):
        z = self.embed(batch["patches"], training)
        context = self.context_network(z)
        units = z.shape[-1]
        predictions = [predictor(context) for predictor in self.predictors]
        flat = tf.reshape(tf.cast(z, tf.float32), [-1, units])
        replicas, replica = cross_replica.replica_position()
        first = 0 if replicas == 1 else replica * tf.shape(flat)[0]
        loss, accuracy = cpc_info_nce(predictions, z, cross_replica.gather(flat), first,
                                      self.normalize, self.temperature)
        return loss, {"prediction_accuracy": accuracy}

    # -------------------------------------------------------------- export
    def export_metadata(self):
        cells = self.crop // self.patch_size
        return {
            "input_form": "patches",
            "patch_grid": [cells, cells],
            "patch_size": [self.patch_size, self.patch_size],
            "input_size": [cells * self.patch_size, cells * self.patch_size],
            # The overlapping grid of training, for the record (evaluation cuts the cells above).
            "training_patch_grid": [self.grid_size, self.grid_size],
            "training_patch_stride": self.patch_stride,
            "prediction_steps": self.prediction_steps,
        }
