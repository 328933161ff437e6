"""A tiny PIRL's tile pass traced on two mirrored logical CPUs: what it leaves to batch norm.

Traces and runs `jigsaw_features` in training mode under a 2-CPU
MirroredStrategy, then prints one JSON line: the batch-norm momenta after the
trace, and the largest change the pass made to any moving mean or variance.
Runs in its own process: logical devices must be set before TensorFlow starts.
"""

import json

from keras_ssl.testing.replicas import strategies, use_two_cpus

use_two_cpus()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_ssl.testing import TINY_PATCH_GRID, build_tiny_method, tiny_backbone  # noqa: E402


def main():
    strategy = strategies()[1]
    rng = np.random.default_rng(0)
    tiles = rng.uniform(size=(8, 9, TINY_PATCH_GRID["patch_size"], TINY_PATCH_GRID["patch_size"], 3))
    with strategy.scope():
        method = build_tiny_method("pirl", backbone=tiny_backbone(synchronized_bn=True),
                                   num_examples=8, **TINY_PATCH_GRID)
        method.jigsaw_features(tf.constant(tiles[:2], tf.float32), training=False)
    layers = [layer for layer in method.backbone._flatten_layers()
              if isinstance(layer, keras.layers.BatchNormalization)]

    def moving():
        return [np.concatenate([layer.moving_mean.numpy(), layer.moving_variance.numpy()])
                for layer in layers]

    before = moving()
    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors(tf.constant(tiles, tf.float32)))

    @tf.function
    def tile_pass(batch):
        return strategy.run(lambda x: method.jigsaw_features(x, training=True), args=(batch,))

    tile_pass(next(iter(dataset)))
    print(json.dumps({
        "momenta": sorted({float(layer.momentum) for layer in layers}),
        "moving_change": max(float(np.abs(now - was).max()) for was, now in zip(before, moving())),
    }))


if __name__ == "__main__":
    main()
