"""Training speed of keras-ssl's ViT against the same ViT written in plain Keras.

Times one training step (forward, backward, AdamW update; a Dense head on the
pre-logits and a mean-square loss) of `keras_ssl.backbones.vit` and of the
same network built from Keras' own layers (`MultiHeadAttention`,
`LayerNormalization`, `Dense`; the class token and position embeddings in a
small layer, as Keras has none), on a fixed batch, one device. The two are
timed in alternating rounds and the ratio (keras-ssl's images/s over plain
Keras') is taken within each round; the median is reported, so a machine
whose load changes during the run skews it less.

    python benchmarks/vit_speed.py                           # ViT-S/16 at 224 px
    python benchmarks/vit_speed.py --widening_factor=3 --image_size=32 --patch_size=4

Writes `vit_speed.json` and `vit_speed.md` to --output_dir and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time


def plain_keras_vit(width, depth, heads, patch_size, image_size, mlp_ratio=4.0):
    """ViT from Keras' layers: patches, class token + positions, pre-norm blocks, final norm."""
    import keras

    class TokensAndPositions(keras.layers.Layer):
        def build(self, input_shape):
            tokens = input_shape[1] + 1
            self.cls = self.add_weight(shape=(1, 1, width), initializer="zeros")
            self.positions = self.add_weight(shape=(1, tokens, width), initializer="zeros")

        def call(self, x):
            cls = keras.ops.tile(self.cls, (keras.ops.shape(x)[0], 1, 1))
            return keras.ops.concatenate([cls, x], axis=1) + self.positions

    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Conv2D(width, patch_size, strides=patch_size)(inputs)
    x = keras.layers.Reshape((-1, width))(x)
    x = TokensAndPositions()(x)
    for _ in range(depth):
        y = keras.layers.LayerNormalization(epsilon=1e-6)(x)
        y = keras.layers.MultiHeadAttention(heads, width // heads)(y, y)
        x = keras.layers.Add()([x, y])
        y = keras.layers.LayerNormalization(epsilon=1e-6)(x)
        y = keras.layers.Dense(int(width * mlp_ratio), activation="gelu")(y)
        x = keras.layers.Add()([x, keras.layers.Dense(width)(y)])
    x = keras.layers.LayerNormalization(epsilon=1e-6)(x)
    return keras.Model(inputs, x[:, 0])


def _time(step, batch, warmup, steps):
    for _ in range(warmup):
        step(batch)
    start = time.perf_counter()
    for _ in range(steps):
        loss = step(batch)
    float(loss)  # the work has finished before the clock stops
    return time.perf_counter() - start


def markdown(result) -> str:
    """The measurement's setting and its table, as `vit_speed.md` holds them."""
    rate, params = result["images_per_second"], result["parameters"]
    return "\n".join([
        f"{result['model']}; {result['machine']} ({result['cpus']} logical CPUs, "
        f"{', '.join(result['devices'])}), TensorFlow {result['tensorflow']}, Keras "
        f"{result['keras']}; batch {result['batch_size']}, {result['steps']} timed steps per "
        f"round, {result['repeats']} alternating rounds{', XLA' if result['jit_compile'] else ''}.",
        "",
        "| network | parameters | images/s (median) | keras-ssl / plain (median, min-max) |",
        "| --- | ---: | ---: | ---: |",
        f"| keras_ssl `vit` | {params['keras_ssl']:,} | {rate['keras_ssl']:.2f} | "
        f"{result['ratio_median']:.2f} ({result['ratio_min']:.2f}-{result['ratio_max']:.2f}) |",
        f"| plain Keras | {params['plain_keras']:,} | {rate['plain_keras']:.2f} | 1 |",
        "",
    ])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widening_factor", type=int, default=6, help="heads (6: ViT-S)")
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--patch_size", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jit_compile", action="store_true", help="XLA-compile both steps")
    parser.add_argument("--output_dir", default=".")
    args = parser.parse_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf

    from keras_ssl.backbones import build_backbone

    keras.utils.set_random_seed(0)
    width = 64 * args.widening_factor
    ours = build_backbone("vit", widening_factor=args.widening_factor, depth=args.depth,
                          patch_size=args.patch_size, image_size=args.image_size)
    plain = plain_keras_vit(width, args.depth, args.widening_factor, args.patch_size,
                            args.image_size)

    def train_step(network, pre_logits_of):
        head = keras.layers.Dense(10)
        optimizer = keras.optimizers.AdamW(1e-4)

        @tf.function(jit_compile=args.jit_compile)
        def step(images):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(head(pre_logits_of(images))))
            variables = network.trainable_variables + head.trainable_variables
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss

        return step

    ours_step = train_step(ours, lambda x: ours(x, training=True)["pre_logits"])
    plain_step = train_step(plain, lambda x: plain(x, training=True))
    images = tf.random.stateless_uniform(
        (args.batch_size, args.image_size, args.image_size, 3), seed=[0, 1])
    ratios, rates = [], {"keras_ssl": [], "plain_keras": []}
    for _ in range(args.repeats):
        ours_rate = args.batch_size * args.steps / _time(ours_step, images, args.warmup, args.steps)
        plain_rate = args.batch_size * args.steps / _time(plain_step, images, args.warmup,
                                                          args.steps)
        rates["keras_ssl"].append(ours_rate)
        rates["plain_keras"].append(plain_rate)
        ratios.append(ours_rate / plain_rate)
    result = dict(
        machine=platform.processor() or platform.machine(), cpus=os.cpu_count(),
        tensorflow=tf.__version__, keras=keras.__version__,
        devices=[d.device_type for d in tf.config.list_physical_devices()],
        model=f"ViT k={args.widening_factor} (width {width}), depth {args.depth}, "
              f"patch {args.patch_size}, {args.image_size} px",
        parameters={"keras_ssl": ours.count_params(), "plain_keras": plain.count_params()},
        batch_size=args.batch_size, steps=args.steps, repeats=args.repeats,
        jit_compile=args.jit_compile,
        images_per_second={k: float(np.median(v)) for k, v in rates.items()},
        ratio_median=float(np.median(ratios)), ratio_min=float(np.min(ratios)),
        ratio_max=float(np.max(ratios)),
    )
    table = markdown(result)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "vit_speed.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(args.output_dir, "vit_speed.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
