"""TFDS datasets as a source of `keras_ssl_eval.reading.data.load_images` (internal).

Kept apart from `data` so that folder sources never import
`tensorflow_datasets`, which is slow to import.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_ssl_eval.reading.records import DatasetInfo, RandomAccess, to_rgb_float

_PREPARE_HINT = ("prepare it with `keras-ssl-prepare-data {name}` from keras-ssl or "
                 "`tfds build {name}` (with --data_dir)")


def load(name, split, *, data_dir, image_size, shuffle_files, seed, segmentation=False):
    """Loads split `split` of TFDS dataset `name`; see `data.load_images`."""
    return _load(_builder(name, data_dir), name, split, image_size=image_size,
                 shuffle_files=shuffle_files, seed=seed, segmentation=segmentation)


def _load(builder, name, split, *, image_size, shuffle_files, seed, segmentation):
    features = builder.info.features
    if segmentation and "segmentation_mask" not in features:
        raise ValueError(
            f"Dataset {name!r} has no 'segmentation_mask' feature (features: "
            f"{sorted(features.keys())}); the segmentation task reads a foreground mask, as "
            f"synthetic_shapes provides.")
    if "image" not in features:
        raise ValueError(f"Dataset {name!r} has no 'image' feature (features: "
                         f"{sorted(features.keys())}); keras-ssl reads 'image' and "
                         f"optionally 'label'.")
    native_size = _check_image_feature(name, features["image"])
    label_feature = features["label"] if "label" in features else None
    class_names = tuple(getattr(label_feature, "names", None) or ())

    ds = _as_dataset(builder, name, split, shuffle_files, seed)
    num_examples = int(ds.cardinality())
    if num_examples < 0:  # Unknown cardinality: fall back to the metadata.
        num_examples = builder.info.splits[split].num_examples
    indexed = _indexer(builder, split, shuffle_files)

    def convert(position, example):
        image = to_rgb_float(example["image"], image_size)
        label = (tf.cast(example["label"], tf.int64) if label_feature is not None
                 else tf.constant(-1, tf.int64))
        index = indexed(position, example)
        converted = {"image": image, "label": label, "index": index}
        if segmentation:
            converted["segmentation"] = _foreground(example["segmentation_mask"], image_size)
        return converted

    ds = ds.enumerate().map(convert, num_parallel_calls=tf.data.AUTOTUNE)
    info = DatasetInfo(name=name, split=split, num_examples=num_examples,
                       num_classes=len(class_names), class_names=class_names,
                       image_size=image_size or native_size)
    return ds, info


def load_for_training(name, split, *, data_dir, image_size, memory_bytes):
    """`load(name, split)` and its `RandomAccess`; see `data.load_for_training`."""
    builder = _builder(name, data_dir)
    ds, info = _load(builder, name, split, image_size=image_size, shuffle_files=False, seed=None,
                     segmentation=False)
    image = builder.info.features["image"]
    if not isinstance(image, tfds.features.Image):
        return ds, info, RandomAccess(
            None, f"read in order: its 'image' feature is a {type(image).__name__}, not an "
                  f"encoded Image")
    needed = _encoded_bytes(builder, split)
    if needed is None or needed > memory_bytes:
        size = "of unknown size" if needed is None else f"{needed / 2**20:.0f} MiB"
        return ds, info, RandomAccess(
            None, f"read in order: its encoded images ({size}) exceed the memory budget of "
                  f"{memory_bytes / 2**20:.0f} MiB")
    encoded, labels = _read_encoded(builder, split)
    # A variable, not a constant captured by the dataset's functions: those
    # are copied into each function's graph, and a graph holds at most 2 GB.
    with tf.device("/cpu:0"):
        encoded = tf.Variable(encoded, trainable=False, name="encoded_images")
        labels = tf.constant(labels, tf.int64)

    def decode(element):
        index = element["index"]
        return {**element, "image": to_rgb_float(image.decode_example(encoded[index]), image_size),
                "label": labels[index]}

    def read(indices):
        return indices.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    held = int(tf.reduce_sum(tf.strings.length(encoded))) / 2**20
    return ds, info, RandomAccess(read, f"{info.num_examples} encoded images ({held:.0f} MiB) "
                                        f"held in memory, decoded by index")


def _encoded_bytes(builder, split):
    """The split's bytes on disk (its encoded images and labels), None if unknown."""
    try:
        split_info = builder.info.splits[split]
    except (KeyError, ValueError):
        return None
    if split_info.num_bytes:
        return int(split_info.num_bytes)
    # A slice ("train[:10%]") has no size of its own: scale its whole split's.
    base = builder.info.splits[split.split("[")[0]]
    if not base.num_bytes or not base.num_examples:
        return None
    return int(base.num_bytes) * int(split_info.num_examples) // int(base.num_examples)


def _read_encoded(builder, split):
    """The split's encoded images (object array of bytes) and labels (-1 without), stored order."""
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders={"image": tfds.decode.SkipDecoding()})
    has_label = "label" in builder.info.features

    def pair(example):
        label = (tf.cast(example["label"], tf.int64) if has_label
                 else tf.constant(-1, tf.int64))
        return example["image"], label

    encoded, labels = [], []
    for images, batch_labels in ds.map(pair).batch(8192).as_numpy_iterator():
        encoded.append(images)
        labels.append(batch_labels)
    if not encoded:
        return np.zeros([0], object), np.zeros([0], np.int64)
    return np.concatenate(encoded), np.concatenate(labels)


def _foreground(mask, image_size):
    """int64 [H, W]: 1 where the mask is non-zero (the object), 0 elsewhere."""
    mask = mask[..., :1]
    if image_size is not None:
        mask = tf.image.resize(mask, image_size, method="nearest")
    return tf.cast(mask[..., 0] > 0, tf.int64)


def _builder(name, data_dir):
    searched = data_dir or os.environ.get("TFDS_DATA_DIR") or tfds.core.constants.DATA_DIR
    try:
        return tfds.builder(name, data_dir=data_dir, try_gcs=False)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise FileNotFoundError(
            f"Dataset {name!r} is neither a TFDS builder imported in this process nor a "
            f"prepared dataset in data_dir {searched!r}. Fix: {_PREPARE_HINT.format(name=name)}, "
            f"pass the --data_dir it was prepared in, or, for a directory of images, "
            f"use the name 'folder:/path/to/images'.") from e


def _as_dataset(builder, name, split, shuffle_files, seed):
    read_config = tfds.ReadConfig(shuffle_seed=seed, add_tfds_id=shuffle_files)
    try:
        return builder.as_dataset(split=split, shuffle_files=shuffle_files,
                                  read_config=read_config)
    except AssertionError as e:  # TFDS' way of saying "not prepared".
        raise FileNotFoundError(
            f"Dataset {name!r} is known but not prepared in data_dir "
            f"{builder.data_dir!r}. Fix: {_PREPARE_HINT.format(name=name)}.") from e
    except (KeyError, ValueError) as e:
        splits = sorted(builder.info.splits.keys())
        if splits and split.split("[")[0] not in splits:
            raise ValueError(f"Dataset {name!r} has no split {split!r}; available "
                             f"splits: {splits}.") from e
        raise


def _check_image_feature(name, feature):
    shape = tuple(getattr(feature, "shape", ()) or ())
    if len(shape) != 3 or shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"Dataset {name!r}: feature 'image' has shape {shape}; expected "
            f"[height, width, channels] with 1 (grey), 3 (RGB) or 4 (RGBA) channels.")
    height, width = shape[:2]
    return (height, width) if height and width else None


def _indexer(builder, split, shuffle_files):
    """Returns fn(position, example) -> index of the example within the split.

    Without file shuffling the read order is the split order. With it, the
    example's ``tfds_id`` (``<shard file>__<index in shard>``) is mapped through
    the split's file instructions to the position the unshuffled read gives.
    """
    try:
        instructions = builder.info.splits[split].file_instructions if shuffle_files else []
    except KeyError:  # No split metadata (e.g. under tfds.testing.mock_data).
        instructions = []
    if len(instructions) < 2:  # One shard: shuffling files keeps the order.
        return lambda position, example: position

    keys, offsets, offset = [], [], 0
    for instruction in instructions:
        keys.append(os.path.basename(instruction.filename))
        offsets.append(offset - instruction.skip)
        offset += instruction.take
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.constant(offsets, tf.int64)),
        default_value=-1)

    def index(position, example):
        del position
        tfds_id = example["tfds_id"]
        prefix = tf.strings.regex_replace(tfds_id, "__[0-9]+$", "")
        shard = tf.strings.regex_replace(prefix, "^.*/", "")
        within = tf.strings.to_number(tf.strings.regex_replace(tfds_id, "^.*__", ""), tf.int64)
        return table.lookup(shard) + within

    return index
