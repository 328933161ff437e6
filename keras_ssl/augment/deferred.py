"""Deferred augmentation: views drawn per example in tf.data, applied per group or per batch.

In training, `Method.make_dataset` goes through `DeferredViews`: tf.data
draws each view's parameters per example, carries them next to the
un-augmented view, and applies them to groups of images
(`tf_data_group_size`: each op's fixed cost, which dominates at small image
sizes, is then paid once per group; the cheap `flip` and `crop_flip` stay
per image), or, with `keras_ssl.train.augment_on_device = True`, leaves them
to `Method.train_step`, which applies them to each replica's whole batch on
the accelerator (`apply_deferred`).
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import tensorflow as tf

from keras_ssl.augment.stacks import Stack, apply_now

PARAM_SEPARATOR = "/augment/"


class AugmentOnDeviceError(ValueError):
    """A method's inputs cannot be augmented on the device."""


# Per thread: tf.data traces map functions on threads of its own.
_local = threading.local()


@contextlib.contextmanager
def recording():
    """Inside the block, `run` draws parameters but leaves the views as they are.

    Yields:
      The list it appends `(view, stack, params)` to.
    """
    previous = getattr(_local, "views", None)
    _local.views = []
    try:
        yield _local.views
    finally:
        _local.views = previous


def run(stack: Stack, image: tf.Tensor) -> tf.Tensor:
    """`apply_now`, or inside `recording()` the draw alone (the view is applied later)."""
    views = getattr(_local, "views", None)
    if views is None:
        return apply_now(stack, image)
    image = tf.convert_to_tensor(image, tf.float32)
    params = stack.draw(image.shape)
    view = tf.identity(image)  # a tensor of its own: two views of one image stay apart
    views.append((view, stack, params))
    return view


def apply_deferred(batch: dict, stacks: dict) -> dict:
    """Applies the parameters carried in `batch` to its views, on the whole batch.

    Args:
      batch: A batch of a deferred `preprocess` (views plus their
        `<key>/augment/<name>` parameters).
      stacks: `{view key: Stack}`.

    Returns:
      The batch with augmented views and without the parameters.
    """
    batch = dict(batch)
    for key, stack in stacks.items():
        prefix = key + PARAM_SEPARATOR
        names = [name for name in batch if name.startswith(prefix)]
        if not names:
            continue
        params = {name[len(prefix):]: batch.pop(name) for name in names}
        batch[key] = stack.apply(tf.cast(batch[key], tf.float32), params)
    return batch


# Bytes of one view tensor (float32 pixels) per group applied in tf.data:
# enough images to share each op's fixed cost, few enough that a group's
# tensors stay in the CPU's cache. In benchmarks/augmentation.py's setting
# the fastest groups held 1.5-3 MiB: the whole batch of 256 at 32 px, 32
# images at 64 px and 16-32 at 96 px (there the whole batch ran 7-15% slower).
TF_DATA_GROUP_BYTES = 3 << 20
MIN_TF_DATA_GROUP = 8


def tf_data_group_size(view_shape, batch_size: int) -> int:
    """Images per group in which tf.data applies deferred views.

    Args:
      view_shape: The static `(H, W, C)` of the largest view.
      batch_size: The batch size; a group is never larger.

    Returns:
      `TF_DATA_GROUP_BYTES` of float32 views, at least `MIN_TF_DATA_GROUP`
      images and at most `batch_size`.
    """
    view_bytes = 4 * int(np.prod([int(d) for d in view_shape]))
    return int(min(batch_size, max(MIN_TF_DATA_GROUP, TF_DATA_GROUP_BYTES // view_bytes)))


class DeferredViews:
    """A `preprocess` whose augmentation stacks draw per example and apply per batch.

    Calling it runs `preprocess` with `recording()` on: every view a `Stack`
    makes comes back un-augmented, with its parameters next to it as
    `<key>/augment/<name>`. That works when `preprocess` returns the views
    themselves (SimCLR, MoCo, NPID); when it transforms them further
    (rotations, patches, stacks of copies) the call runs `preprocess` again
    as it is, per image, and `deferred` is False.

    In tf.data (not `on_device`), stacks whose `batch_in_tf_data` is False
    are applied per image too.

    Args:
      preprocess: `example -> dict`, seeded per example (`Method.seeded_preprocess`).
      name: The method's name, for errors.
      on_device: The views will be applied in the training step.

    Attributes:
      deferred: After the first call (tf.data traces the map at once):
        whether views were deferred.
      stacks: `{view key: Stack}` of the deferred views.
    """

    def __init__(self, preprocess, name: str = "method", on_device: bool = False):
        self.preprocess = preprocess
        self.name = name
        self.on_device = on_device
        self.deferred = False
        self.stacks = {}

    def __call__(self, example):
        with recording() as views:
            outputs = dict(self.preprocess(example))
        found = {}
        for view, stack, params in views:
            keys = [key for key, value in outputs.items() if value is view]
            if len(keys) != 1:
                # A view transformed after augmentation: augment per image after all
                # (the draws above are unused, and pruned from the traced function).
                self.deferred, self.stacks = False, {}
                return self.preprocess(example)
            if not (self.on_device or stack.batch_in_tf_data):
                self.deferred, self.stacks = False, {}
                return self.preprocess(example)
            found[keys[0]] = (stack, params)
        self.deferred = bool(found)
        self.stacks = {key: stack for key, (stack, _) in found.items()}
        for key, (_, params) in found.items():
            outputs.update({f"{key}{PARAM_SEPARATOR}{k}": v for k, v in params.items()})
        return outputs

    def apply(self, batch: dict) -> dict:
        """`apply_deferred(batch, self.stacks)`."""
        return apply_deferred(batch, self.stacks)

    def apply_in_tf_data(self, dataset: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
        """Batches the examples and applies the deferred views in tf.data.

        The views are applied to groups of `tf_data_group_size` images: the
        batches themselves where a batch fits, else groups that are unbatched
        and batched again.

        Args:
          dataset: Examples of this preprocess (one per element, in order).
          batch_size: Examples per batch; the last partial batch is dropped.

        Returns:
          Batches of augmented examples, in the same order.
        """
        spec = dataset.element_spec
        group = tf_data_group_size(
            max((spec[key].shape for key in self.stacks), key=lambda shape: shape.num_elements()),
            batch_size)
        if group < batch_size:
            dataset = dataset.batch(group).map(
                self.apply, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()
            return dataset.batch(batch_size, drop_remainder=True)
        return dataset.batch(batch_size, drop_remainder=True).map(
            self.apply, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def check_on_device(self) -> None:
        """Raises `AugmentOnDeviceError` unless the views were deferred."""
        if not self.deferred:
            raise AugmentOnDeviceError(
                f"keras_ssl.train.augment_on_device = True, but method {self.name!r} has no "
                f"views to augment on the device: its preprocess transforms the augmented "
                f"views further (rotations, patches, stacks of copies) or its stack is not "
                f"batched (randaugment). Augment on the device only methods whose inputs "
                f"are the views themselves (simclr, moco, npid), or set it to False."
            )
