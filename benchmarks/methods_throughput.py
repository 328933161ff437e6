"""Training throughput of the contrastive methods relative to the bare backbone.

For each method, times its `train_step` (compiled with tf.function, one
device) on a fixed batch of `--batch_size` source images, and the bare
backbone's forward + backward + SGD update on the same number of images
(a Dense head on the pre-logits, mean-square loss). Reports images/s
(source images, before a method's views) and the ratio to the bare backbone.
The input pipeline (augmentation) is not timed: views are drawn once. Each
method is timed right after the bare backbone, in each of `--repeats`
rounds; the ratio is taken within each pair and the median reported, so a
machine whose load changes during the run skews the ratios less.

    python benchmarks/methods_throughput.py --output_dir=/tmp/throughput
    python benchmarks/methods_throughput.py --methods=simclr,moco --depth=18 --widening_factor=4

Writes `methods_throughput.json` and `methods_throughput.md` to --output_dir
and prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time


def _time(step, batch, warmup, steps):
    for _ in range(warmup):
        step(batch)
    start = time.perf_counter()
    for _ in range(steps):
        out = step(batch)
    # Make sure the work finished before stopping the clock.
    float(list(out.values())[0]) if isinstance(out, dict) else float(out)
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="simclr,moco,npid")
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--widening_factor", type=int, default=1)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output_dir", default=".")
    args = parser.parse_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf

    from keras_ssl.backbones import build_backbone
    from keras_ssl.registry import METHODS

    def backbone():
        return build_backbone(
            "resnet_v2", depth=args.depth, widening_factor=args.widening_factor,
            small_image_stem=args.image_size <= 64,
        )

    keras.utils.set_random_seed(0)
    n = args.batch_size
    images = np.random.RandomState(0).rand(n, args.image_size, args.image_size, 3).astype(np.float32)
    examples = tf.data.Dataset.from_tensor_slices(
        {"image": images, "label": np.zeros(n, np.int64), "index": np.arange(n)}
    )
    method_args = {
        "simclr": dict(augmentation="simclr_cifar"),
        "moco": dict(augmentation="simclr_cifar", queue_size=4096),
        "npid": dict(augmentation="crop_flip", num_examples=n, num_negatives=4096),
        "rotation": dict(augmentation="crop_flip"),
    }

    # The bare backbone: forward + backward + update on n images.
    net = backbone()
    head = keras.layers.Dense(10)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)

    @tf.function
    def bare_step(x):
        with tf.GradientTape() as tape:
            y = head(net(x, training=True)["pre_logits"])
            loss = tf.reduce_mean(tf.square(y)) + tf.add_n(net.losses)
        variables = net.trainable_variables + head.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    steps = {"backbone (bare)": (bare_step, tf.constant(images))}
    for name in [m for m in args.methods.split(",") if m]:
        method = METHODS.get(name)(backbone(), **method_args.get(name, {}))
        batch = next(iter(method.make_dataset(examples, n)))
        method.compute_pretext_loss(batch, training=False)
        method.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
        method.optimizer.build(method.trainable_variables)
        steps[name] = (tf.function(method.train_step), batch)
    # Each method is timed right after the bare backbone, in every round, and
    # the ratio is taken within the pair; medians over rounds. A machine
    # whose load changes during the run skews pairs far less than totals.
    bare_step_, bare_batch = steps.pop("backbone (bare)")
    for step, batch in [(bare_step_, bare_batch), *steps.values()]:
        _time(step, batch, args.warmup, 1)  # trace and warm up
    rates = {name: [] for name in ["backbone (bare)", *steps]}
    ratios = {name: [] for name in steps}
    for round_ in range(args.repeats):
        for name, (step, batch) in steps.items():
            bare_rate = n * args.steps / _time(bare_step_, bare_batch, 0, args.steps)
            rate = n * args.steps / _time(step, batch, 0, args.steps)
            rates["backbone (bare)"].append(bare_rate)
            rates[name].append(rate)
            ratios[name].append(rate / bare_rate)
        print(f"round {round_ + 1}: " + ", ".join(
            f"{k} {v[-1]:.2f}" for k, v in ratios.items()) + " x bare", flush=True)
    rows = [dict(method="backbone (bare)", images_per_second=float(np.median(rates["backbone (bare)"])),
                 relative=1.0)]
    rows += [dict(method=k, images_per_second=float(np.median(rates[k])),
                  relative=float(np.median(ratios[k])),
                  relative_min=float(np.min(ratios[k])), relative_max=float(np.max(ratios[k])))
             for k in steps]

    setting = (
        f"resnet_v2 depth {args.depth} k={args.widening_factor}, {args.image_size} px, batch "
        f"{n}, medians of {args.repeats} rounds of {args.steps} timed steps, "
        f"{'GPU' if tf.config.list_physical_devices('GPU') else 'CPU'} "
        f"({os.cpu_count()} logical cores visible, {platform.machine()})"
    )
    lines = [
        f"Setting: {setting}.", "",
        "| method | images/s | relative to bare backbone (median, min-max over rounds) |",
        "| --- | ---: | ---: |",
    ] + [
        f"| {r['method']} | {r['images_per_second']:.1f} | {r['relative']:.2f}"
        + (f" ({r['relative_min']:.2f}-{r['relative_max']:.2f})" if "relative_min" in r else "")
        + " |"
        for r in rows
    ]
    markdown = "\n".join(lines)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "methods_throughput.json"), "w") as f:
        json.dump(dict(setting=setting, results=rows), f, indent=2)
    with open(os.path.join(args.output_dir, "methods_throughput.md"), "w") as f:
        f.write(markdown + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
