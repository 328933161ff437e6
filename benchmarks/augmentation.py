"""Views per second of each augmentation stack against the same ops written plainly.

For every registered stack, two tf.data pipelines make two views per image of
synthetic_shapes (`--image_size` px) and batch them:

- `keras_ssl`: the registered stack, each example seeded as
  `Method.make_dataset` seeds it (`keras_ssl.random.seeded`, stateless draws);
- `plain`: the same transforms written as a tf.data user would with
  `tf.image` and stateful `tf.random` draws (`tf.image.random_flip_left_right`,
  `sample_distorted_bounding_box`, `tf.cond` for the random application),
  with no seeding. Its colour jitter is `tf.image`'s own adjust ops in a
  fixed order, which clip after each: the cheapest way to write it plainly.

The two alternate in `--rounds` rounds of `--images` images each; the ratio is
taken per round and the median reported, so load from other processes skews
it less. `keras_ssl` is the path `Method.make_dataset` builds (parameters drawn
per example, applied in groups of `keras_ssl.augment.deferred.tf_data_group_size`,
except the cheap `flip` and `crop_flip`, applied per image);
`per_image` calls the stack on each image (what a method whose preprocess
transforms the views further, e.g. Rotation, gets); with `--on_device`,
`draw_only` is tf.data's share when the views are augmented on the device.

    python -m benchmarks.augmentation --output=benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time

import numpy as np

ROUNDS = 7
# Images per timed round. A round of 4096 lasted 0.1 s for `flip`, short enough
# for a neighbour's burst on a shared machine to move one round's ratio by 20%.
IMAGES = 16384


# ------------------------------------------------------------ plain versions
def _plain_stacks(tf, size):
    def flip(x):
        return tf.image.random_flip_left_right(x)

    def crop_flip(x, padding=4):
        padded = tf.pad(x, [[padding, padding], [padding, padding], [0, 0]], "REFLECT")
        return tf.image.random_flip_left_right(tf.image.random_crop(padded, [size, size, 3]))

    def inception_crop(x, area_range):
        begin, crop_size, _ = tf.image.sample_distorted_bounding_box(
            tf.shape(x), tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
            min_object_covered=area_range[0], aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=area_range, max_attempts=100, use_image_if_no_bounding_boxes=True,
        )
        return tf.image.resize(tf.slice(x, begin, crop_size)[None], [size, size])[0]

    def jitter(x, s):
        x = tf.clip_by_value(x * tf.random.uniform([], max(0.0, 1 - 0.8 * s), 1 + 0.8 * s), 0, 1)
        x = tf.clip_by_value(tf.image.random_contrast(x, max(0.0, 1 - 0.8 * s), 1 + 0.8 * s), 0, 1)
        x = tf.clip_by_value(tf.image.random_saturation(x, max(0.0, 1 - 0.8 * s), 1 + 0.8 * s), 0, 1)
        return tf.clip_by_value(tf.image.random_hue(x, 0.2 * s), 0, 1)

    def blur(x):
        radius = size // 20
        sigma = tf.random.uniform([], 0.1, 2.0)
        k = tf.exp(-tf.square(tf.range(-radius, radius + 1, dtype=tf.float32)) / (2 * sigma ** 2))
        k = k / tf.reduce_sum(k)
        padded = tf.pad(x[None], [[0, 0], [radius] * 2, [radius] * 2, [0, 0]], "REFLECT")
        out = tf.nn.depthwise_conv2d(padded, tf.tile(k[None, :, None, None], [1, 1, 3, 1]),
                                     [1] * 4, "VALID")
        return tf.nn.depthwise_conv2d(out, tf.tile(k[:, None, None, None], [1, 1, 3, 1]),
                                      [1] * 4, "VALID")[0]

    def simclr_like(area_range, strength, blur_probability):
        def stack(x):
            x = tf.image.random_flip_left_right(inception_crop(x, area_range))
            x = tf.cond(tf.random.uniform([]) < 0.8, lambda: jitter(x, strength), lambda: x)
            x = tf.cond(tf.random.uniform([]) < 0.2,
                        lambda: tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 3]), lambda: x)
            if blur_probability and size // 20 >= 1:
                x = tf.cond(tf.random.uniform([]) < blur_probability, lambda: blur(x), lambda: x)
            return x
        return stack

    def randaugment(x):
        from official.vision.ops.augment import RandAugment

        x = tf.image.random_flip_left_right(inception_crop(x, (0.08, 1.0)))
        scale = size / 224.0
        q = tf.cast(tf.round(x * 255.0), tf.uint8)
        out = RandAugment(num_layers=2, magnitude=10.0, cutout_const=max(1.0, round(40 * scale)),
                          translate_const=100.0 * scale).distort(q)
        return tf.cast(out, tf.float32) / 255.0

    return {
        "none": lambda x: x,
        "flip": flip,
        "crop_flip": crop_flip,
        "simclr_imagenet": simclr_like((0.08, 1.0), 1.0, 0.5),
        "simclr_cifar": simclr_like((0.08, 1.0), 0.5, 0.0),
        "moco_v2": simclr_like((0.2, 1.0), 1.0, 0.5),
        "randaugment": randaugment,
    }


# ------------------------------------------------------------------ timing
def _views_per_second(tf, dataset, images):
    iterator = iter(dataset)
    next(iterator)  # warm up: tracing, thread pools
    start, seen = time.perf_counter(), 0
    while seen < images:
        batch = next(iterator)
        seen += int(tf.nest.flatten(batch)[0].shape[0])
    return 2 * seen / (time.perf_counter() - start)


def measure(stacks, image_size=32, images=IMAGES, rounds=ROUNDS, batch_size=256, on_device=False):
    """Median views/s of each stack, its plain twin and (optionally) its batched path.

    Args:
      stacks: Registered stack names.
      image_size: Side of the synthetic_shapes images.
      images: Images per timed round (two views each).
      rounds: Alternating rounds per stack.
      batch_size: Images per batch.
      on_device: Also time drawing in tf.data + applying per batch
        (`keras_ssl.augment.deferred`), here on the CPU.

    Returns:
      `{stack: {"keras_ssl": views/s, "plain": views/s, "ratio": median
      ratio, "ratios": [...], ...}}`.
    """
    import tensorflow as tf

    from keras_ssl import random
    from keras_ssl.augment.deferred import DeferredViews
    from keras_ssl.datasets.shapes_render import render_split
    from keras_ssl.registry import AUGMENTATIONS

    pixels = render_split("TCV-", image_size, 512)["image"].astype(np.float32) / 255.0
    examples = tf.data.Dataset.from_tensor_slices(
        {"image": pixels, "index": np.arange(len(pixels))}).repeat()
    plain = _plain_stacks(tf, image_size)
    results = {}
    for name in stacks:
        fn = AUGMENTATIONS.get(name)

        def seeded_views(example, fn=fn):
            with random.seeded(random.example_seed(0, example["index"])):
                return {"view1": fn(example["image"]), "view2": fn(example["image"])}

        def plain_views(example, fn=plain[name]):
            return {"view1": fn(example["image"]), "view2": fn(example["image"])}

        def batches(dataset):
            return dataset.batch(batch_size, drop_remainder=True).prefetch(2)

        def mapped(map_fn):
            return examples.map(map_fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

        # What Method.make_dataset builds: draws per example, applied in small batches.
        views = DeferredViews(seeded_views, name)
        drawn = mapped(views)
        made = (views.apply_in_tf_data(drawn, batch_size).prefetch(2) if views.deferred
                else batches(drawn))
        pipelines = {"keras_ssl": made, "plain": batches(mapped(plain_views)),
                     "per_image": batches(mapped(seeded_views))}
        if on_device and name not in ("none", "randaugment"):
            # With keras_ssl.train.augment_on_device, tf.data only draws.
            pipelines["draw_only"] = batches(mapped(DeferredViews(
                seeded_views, name, on_device=True)))
        series = {key: [] for key in pipelines}
        for _ in range(rounds):
            for key, dataset in pipelines.items():
                series[key].append(_views_per_second(tf, dataset, images))
        ratios = [k / p for k, p in zip(series["keras_ssl"], series["plain"])]
        entry = {key: float(np.median(values)) for key, values in series.items()}
        entry.update(ratio=float(np.median(ratios)), ratios=[round(r, 3) for r in ratios],
                     deferred=views.deferred)
        entry["per_image_ratio"] = float(np.median(
            [k / p for k, p in zip(series["per_image"], series["plain"])]))
        results[name] = entry
        print(f"{name}: {entry}", file=sys.stderr, flush=True)
    return results


def markdown(result) -> str:
    setting = result["setting"]
    lines = [
        "# Augmentation throughput",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Setting: synthetic_shapes {setting['image_size']} px, two views per image, batches of "
        f"{setting['batch_size']}, {setting['rounds']} alternating rounds of {setting['images']} "
        f"images; {setting['machine']}. Views/s are medians over rounds; the ratio is the median "
        f"of the per-round ratios (keras_ssl / plain).",
        "",
        "| stack | keras_ssl views/s | plain views/s | x plain (median, min-max) |"
        " per image views/s | per image x plain |"
        + (" draw only views/s |" if setting["on_device"] else ""),
        "| --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if setting["on_device"] else ""),
    ]
    for name, e in result["stacks"].items():
        row = (f"| {name} | {e['keras_ssl']:.0f} | {e['plain']:.0f} | {e['ratio']:.2f} "
               f"({min(e['ratios']):.2f}-{max(e['ratios']):.2f}) | {e['per_image']:.0f} | "
               f"{e['per_image_ratio']:.2f} |")
        if setting["on_device"]:
            row += f" {e['draw_only']:.0f} |" if "draw_only" in e else " - |"
        lines.append(row)
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stacks", default="none,flip,crop_flip,simclr_imagenet,simclr_cifar,moco_v2,randaugment")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--images", type=int, default=IMAGES)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--on_device", action="store_true",
                        help="also time tf.data's share of the on-device path (drawing only)")
    parser.add_argument("--output", default=os.path.join("benchmarks", "results"))
    args = parser.parse_args(argv)
    stacks = [s for s in args.stacks.split(",") if s]
    result = {
        "command": "python -m benchmarks.augmentation " + shlex.join(sys.argv[1:] if argv is None else argv),
        "setting": dict(image_size=args.image_size, images=args.images, rounds=args.rounds,
                        batch_size=args.batch_size, on_device=args.on_device,
                        machine=f"CPU ({os.cpu_count()} logical cores visible, {platform.machine()})"),
        "stacks": measure(stacks, args.image_size, args.images, args.rounds, args.batch_size,
                          args.on_device),
    }
    text = markdown(result)
    if args.output:
        os.makedirs(args.output, exist_ok=True)
        with open(os.path.join(args.output, "augmentation.json"), "w") as f:
            json.dump(result, f, indent=2)
        with open(os.path.join(args.output, "augmentation.md"), "w") as f:
            f.write(text)
    print(text)
    return result


if __name__ == "__main__":
    main()
