"""MAE's training step with 75% of the patches masked against the same step on all of them.

MAE (He et al. 2022) is fast because its encoder sees only the visible
quarter of the patches. This times, on a fixed batch and one device, in
alternating rounds (ratios taken within a round, medians reported):

- `mae_masked`: MAE's whole training step (`MAE.train_step`: encoder on the
  K = int(N (1 - r)) visible patches, decoder on all N, AdamW) at
  `--mask_ratio` (0.75);
- `mae_unmasked`: the same step at mask ratio 0 (the encoder on all N);
- `encoder_visible` / `encoder_all`: the encoder's forward + backward + AdamW
  update alone (`encode_tokens`, a mean-square loss on its tokens) on the K
  visible patches and on all N.

The figure asked for is `mae_masked / mae_unmasked` (step time; below 1 is
faster); `encoder_visible / encoder_all` is the encoder's share of it. The
decoder (`--decoders`, depth x width, e.g. `4x256,8x512`) runs on all N
tokens in both steps, so a heavier decoder pulls the step ratio towards 1.

    python benchmarks/mae_speed.py                                  # ViT-S/16 at 224 px
    python benchmarks/mae_speed.py --widening_factor=3 --image_size=64 --patch_size=8

Writes `mae_speed.json` and `mae_speed.md` to --output_dir and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time


def _time(step, warmup, steps):
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        out = step()
    float(out)  # the work has finished before the clock stops
    return time.perf_counter() - start


def markdown(result) -> str:
    """The measurement's setting and its table, as `mae_speed.md` holds them."""
    lines = [
        f"{result['model']}; {result['machine']} ({result['cpus']} logical CPUs, "
        f"{', '.join(result['devices'])}), TensorFlow {result['tensorflow']}, Keras "
        f"{result['keras']}; batch {result['batch_size']}, N = {result['num_patches']} patches, "
        f"K = {result['num_visible']} visible at mask ratio {result['mask_ratio']}; "
        f"{result['steps']} timed steps per round, {result['repeats']} alternating rounds"
        f"{', XLA' if result['jit_compile'] else ''}. Step time relative to the row named "
        f"(median over rounds, min-max); below 1 is faster.",
        "",
        "| step | seconds/step (median) | relative | to |",
        "| --- | ---: | ---: | --- |",
    ]
    enc = result["encoder"]
    lines.append(f"| encoder alone, K visible patches | {enc['visible_seconds']:.3f} | "
                 f"{enc['ratio_median']:.2f} ({enc['ratio_min']:.2f}-{enc['ratio_max']:.2f}) | "
                 f"encoder alone, all N |")
    lines.append(f"| encoder alone, all N patches | {enc['all_seconds']:.3f} | 1 | |")
    for row in result["decoders"]:
        name = f"decoder {row['decoder_depth']} x {row['decoder_width']}"
        lines.append(f"| MAE step, mask ratio {result['mask_ratio']}, {name} | "
                     f"{row['masked_seconds']:.3f} | {row['ratio_median']:.2f} "
                     f"({row['ratio_min']:.2f}-{row['ratio_max']:.2f}) | MAE step, mask ratio 0 |")
        lines.append(f"| MAE step, mask ratio 0, {name} | {row['unmasked_seconds']:.3f} | "
                     f"{row['to_encoder_all']:.2f} | encoder alone, all N |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widening_factor", type=int, default=6, help="heads (6: ViT-S)")
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--patch_size", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--mask_ratio", type=float, default=0.75)
    parser.add_argument("--decoders", default="4x256,8x512",
                        help="comma-separated depth x width (heads: width / 32)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jit_compile", action="store_true", help="XLA-compile every step")
    parser.add_argument("--output_dir", default=".")
    args = parser.parse_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf

    from keras_ssl.backbones import build_backbone
    from keras_ssl.backbones.vit import encode_tokens
    from keras_ssl.toolkit.masking import visible_count
    from keras_ssl_methods.mae import MAE

    keras.utils.set_random_seed(0)
    decoders = [tuple(int(v) for v in d.split("x")) for d in args.decoders.split(",") if d]
    num_patches = (args.image_size // args.patch_size) ** 2
    num_visible = visible_count(num_patches, args.mask_ratio)
    images = np.random.default_rng(0).uniform(
        size=(args.batch_size, args.image_size, args.image_size, 3)).astype(np.float32)
    examples = tf.data.Dataset.from_tensor_slices({
        "image": images, "label": np.zeros(args.batch_size, np.int64),
        "index": np.arange(args.batch_size, dtype=np.int64)})

    def backbone():
        return build_backbone("vit", widening_factor=args.widening_factor, depth=args.depth,
                              patch_size=args.patch_size, image_size=args.image_size)

    def mae_step(ratio, depth, width):
        method = MAE(backbone(), mask_ratio=ratio, decoder_depth=depth, decoder_width=width,
                     decoder_heads=max(1, width // 32))
        batch = next(iter(method.make_dataset(examples, args.batch_size)))
        method.build_from_batch(batch)
        method.compile(optimizer=keras.optimizers.AdamW(1e-4))
        method.optimizer.build(method.trainable_variables)
        step = tf.function(method.train_step, jit_compile=args.jit_compile)
        count = sum(int(np.prod(v.shape)) for v in method.trainable_variables)
        return lambda: step(batch)["loss"], count

    def encoder_step(keep):
        net = backbone()
        optimizer = keras.optimizers.AdamW(1e-4)
        batch = tf.constant(images)

        @tf.function(jit_compile=args.jit_compile)
        def step():
            with tf.GradientTape() as tape:
                tokens = encode_tokens(net, batch, keep=keep, training=True)["patch_tokens"]
                loss = tf.reduce_mean(tf.square(tokens))
            variables = net.trainable_variables
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss

        return step

    # The same K positions for every image: the encoder's cost depends on K only.
    keep = tf.tile(tf.range(num_visible)[None], [args.batch_size, 1])
    steps = {"encoder_visible": encoder_step(keep), "encoder_all": encoder_step(None)}
    parameters = {}
    for depth, width in decoders:
        for ratio, key in ((args.mask_ratio, "masked"), (0.0, "unmasked")):
            steps[f"{depth}x{width}/{key}"], parameters[f"{depth}x{width}"] = mae_step(
                ratio, depth, width)
    seconds = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            seconds[name].append(_time(step, args.warmup, args.steps) / args.steps)

    def ratio(a, b):
        r = np.array(seconds[a]) / np.array(seconds[b])
        return dict(ratio_median=float(np.median(r)), ratio_min=float(r.min()),
                    ratio_max=float(r.max()))

    median = {name: float(np.median(v)) for name, v in seconds.items()}
    rows = []
    for depth, width in decoders:
        key = f"{depth}x{width}"
        rows.append(dict(
            decoder_depth=depth, decoder_width=width, parameters=parameters[key],
            masked_seconds=median[f"{key}/masked"], unmasked_seconds=median[f"{key}/unmasked"],
            to_encoder_all=median[f"{key}/unmasked"] / median["encoder_all"],
            **ratio(f"{key}/masked", f"{key}/unmasked")))
    width = 64 * args.widening_factor
    result = dict(
        machine=platform.processor() or platform.machine(), cpus=os.cpu_count(),
        tensorflow=tf.__version__, keras=keras.__version__,
        devices=[d.device_type for d in tf.config.list_physical_devices()],
        model=f"MAE on ViT k={args.widening_factor} (width {width}), depth {args.depth}, "
              f"patch {args.patch_size}, {args.image_size} px",
        batch_size=args.batch_size, steps=args.steps, repeats=args.repeats,
        jit_compile=args.jit_compile, mask_ratio=args.mask_ratio, num_patches=num_patches,
        num_visible=num_visible, seconds=seconds,
        encoder=dict(visible_seconds=median["encoder_visible"], all_seconds=median["encoder_all"],
                     **ratio("encoder_visible", "encoder_all")),
        decoders=rows,
    )
    table = markdown(result)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "mae_speed.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(args.output_dir, "mae_speed.md"), "w") as f:
        f.write(table)
    print(table)
    return result


if __name__ == "__main__":
    main()
