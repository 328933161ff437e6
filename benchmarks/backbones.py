"""Backbone zoo benchmark: parameters, FLOPs per image and CPU training throughput.

For every registered family at two widths (default k = 1 and 2) on 32-px
images, with each family's small-image settings, it reports

- parameters (trainable, and all weights including batch-norm statistics),
- the pre-logits width,
- forward FLOPs per image, counted by the TensorFlow profiler on the frozen
  graph of the inference function (a multiply-add counts as 2 FLOPs),
- images/s of a forward + backward pass (gradients of the summed
  pre-logits with respect to every trainable weight, no optimizer update)
  on a batch: the batch size over the median time of a few steps after
  warm-up.

With `--standard` it also builds the ImageNet-size configurations of the
scaling studies (ResNet-50 v1/v2 and RevNet-50 at k = 4 and 16, VGG19-BN at
k = 8, AlexNet at k = 4, ResNet-9 at k = 4) and records their parameter
counts and pre-logits widths (no timing; k = 16 needs about 3 GB of memory).

Writes `backbones.json` and `backbones.md` to `--output`
(default `benchmarks/results/`).

    CUDA_VISIBLE_DEVICES=-1 python benchmarks/backbones.py --standard
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time

import numpy as np
import tensorflow as tf

# Settings for 32-px images, per family (the gin configs' comments say the same).
SMALL_IMAGE = {
    "resnet_v1": dict(depth=50, small_image_stem=True),
    "resnet_v2": dict(depth=50, small_image_stem=True),
    "revnet": dict(depth=50, small_image_stem=True),
    "vgg19_bn": dict(depth=19, fc6_kernel=1),
    "alexnet": dict(root_stride=2, fc6_kernel=1),
    "resnet9": dict(),
    # ViT-S/4 at 32 px (widening_factor: heads), 64 patch tokens.
    "vit": dict(depth=12, patch_size=4, image_size=32),
}

STANDARD = [
    ("resnet_v1", dict(depth=50, widening_factor=4)),
    ("resnet_v1", dict(depth=50, widening_factor=16)),
    ("resnet_v2", dict(depth=50, widening_factor=4)),
    ("resnet_v2", dict(depth=50, widening_factor=16)),
    ("revnet", dict(depth=50, widening_factor=4)),
    ("revnet", dict(depth=50, widening_factor=16)),
    ("vgg19_bn", dict(depth=19, widening_factor=8)),
    ("alexnet", dict(widening_factor=4)),
    ("resnet9", dict(widening_factor=4)),
    ("vit", dict(depth=12, widening_factor=3, patch_size=16, image_size=224)),
    ("vit", dict(depth=12, widening_factor=6, patch_size=16, image_size=224)),
    ("vit", dict(depth=12, widening_factor=12, patch_size=16, image_size=224)),
]


def _counts(net):
    trainable = sum(int(np.prod(w.shape)) for w in net.trainable_weights)
    return trainable, int(net.count_params())


def forward_flops(net, image_size: int) -> int:
    """FLOPs of one image's inference pass, from the profiler on the frozen graph."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    fn = tf.function(lambda x: net(x, training=False)["pre_logits"])
    concrete = fn.get_concrete_function(tf.TensorSpec([1, image_size, image_size, 3], tf.float32))
    frozen = convert_variables_to_constants_v2(concrete)
    options = (
        tf.compat.v1.profiler.ProfileOptionBuilder(
            tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        )
        .with_empty_output()
        .build()
    )
    profile = tf.compat.v1.profiler.profile(
        graph=frozen.graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op", options=options
    )
    return int(profile.total_float_ops)


def throughput(net, image_size: int, batch: int, warmup: int, steps: int) -> float:
    """Images/s of forward + backward (no optimizer update)."""
    variables = net.trainable_variables

    @tf.function
    def step(images):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(net(images, training=True)["pre_logits"])
        return tape.gradient(loss, variables)

    images = tf.random.uniform((batch, image_size, image_size, 3))
    for _ in range(warmup):
        [g.numpy() for g in step(images)]
    # The median step time resists the bursts of other work on shared CPUs.
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        [g.numpy() for g in step(images)]
        times.append(time.perf_counter() - start)
    return batch / float(np.median(times))


def _release():
    import keras

    keras.backend.clear_session()
    gc.collect()


def run_small(families, widths, image_size, batch, warmup, steps):
    from keras_ssl.backbones import build_backbone, output_dim

    rows = []
    for family in families:
        for k in widths:
            kwargs = dict(SMALL_IMAGE.get(family, {}), widening_factor=k)
            net = build_backbone(family, **kwargs)
            trainable, total = _counts(net)
            row = dict(
                family=family,
                config=kwargs,
                image_size=image_size,
                batch_size=batch,
                trainable_parameters=trainable,
                all_weights=total,
                pre_logits=output_dim(net),
                forward_flops_per_image=forward_flops(net, image_size),
                images_per_second=throughput(net, image_size, batch, warmup, steps),
            )
            print(json.dumps(row), flush=True)
            rows.append(row)
            del net
            _release()
    return rows


def run_standard():
    from keras_ssl.backbones import build_backbone, output_dim

    rows = []
    for family, kwargs in STANDARD:
        net = build_backbone(family, **kwargs)
        trainable, total = _counts(net)
        row = dict(family=family, config=kwargs, trainable_parameters=trainable,
                   all_weights=total, pre_logits=output_dim(net))
        print(json.dumps(row), flush=True)
        rows.append(row)
        del net
        _release()
    return rows


def _config_text(config):
    return ", ".join(f"{k}={v}" for k, v in config.items() if k != "widening_factor")


def markdown(result) -> str:
    lines = [
        f"Measured on {result['machine']} ({result['cpus']} logical CPUs, shared with other "
        f"work), TensorFlow {result['tensorflow']}; images {result['image_size']} px, batch "
        f"{result['batch_size']}, median of {result['steps']} timed steps after {result['warmup']} "
        f"of warm-up; forward + backward, no optimizer update.",
        "",
        "| family | k | settings | trainable params | pre-logits | forward MFLOPs / image | images/s (fwd+bwd) |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in result["small"]:
        lines.append(
            f"| {r['family']} | {r['config']['widening_factor']} | {_config_text(r['config'])} "
            f"| {r['trainable_parameters']:,} | {r['pre_logits']} "
            f"| {r['forward_flops_per_image'] / 1e6:,.1f} | {r['images_per_second']:.1f} |"
        )
    if result.get("standard"):
        lines += [
            "",
            "| family | k | settings | trainable params | all weights (with BN statistics) | pre-logits |",
            "| --- | ---: | --- | ---: | ---: | ---: |",
        ]
        for r in result["standard"]:
            lines.append(
                f"| {r['family']} | {r['config']['widening_factor']} | {_config_text(r['config'])} "
                f"| {r['trainable_parameters']:,} | {r['all_weights']:,} | {r['pre_logits']} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=os.path.join("benchmarks", "results"))
    parser.add_argument("--families", default="", help="comma-separated; default: all registered")
    parser.add_argument("--widths", default="1,2")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--standard", action="store_true",
                        help="also count the parameters of the ImageNet-size models")
    args = parser.parse_args(argv)

    from keras_ssl import registry

    families = [f for f in args.families.split(",") if f] or registry.BACKBONES.names()
    widths = [int(k) for k in args.widths.split(",")]
    result = dict(
        machine=platform.processor() or platform.machine(),
        cpus=os.cpu_count(),
        tensorflow=tf.__version__,
        image_size=args.image_size,
        batch_size=args.batch_size,
        warmup=args.warmup,
        steps=args.steps,
        small=run_small(families, widths, args.image_size, args.batch_size, args.warmup, args.steps),
    )
    if args.standard:
        result["standard"] = run_standard()
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "backbones.json"), "w") as f:
        json.dump(result, f, indent=2)
    table = markdown(result)
    with open(os.path.join(args.output, "backbones.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
