"""Replicas and determinism on CPU, and the bytes a step communicates at scale.

1. Step time of SimCLR and Rotation (ResNet-10 v2, k=1, 32 px, global batch
   32) through the training loop's `MethodTrainer`, on inputs cached in
   memory (the input pipeline is not timed), in three settings:
   - `default`: one device, `enable_op_determinism()` on (the default);
   - `mirrored x2`: `MirroredStrategy` over the CPU split into 2 logical
     devices (`--cpu_replicas=2`), synchronized batch norm, determinism on;
   - `nondeterministic`: one device, op determinism off;
   - `xla`: one device, determinism on, the replica step compiled with XLA
     (`keras_ssl.train.jit_compile = True`).
   Each setting runs in its own process (logical devices are fixed at
   start-up), alternating in `--rounds` rounds; ratios are taken to the
   `default` time of the same round, and the median over rounds reported.
2. Bytes sent per replica and step by SimCLR on ResNet-50 (the paper's
   setting: global batch 4096, 2 views, 128-d projections, synchronized BN)
   at 8, 64 and 256 replicas: the ring all-reduce of the gradients (each
   replica sends `2 (R - 1) / R` times their size), the all-gather of the
   projections (`(R - 1) / R` of the gathered tensor) and the synchronized
   batch-norm statistics (a sum and a sum of squares per channel and layer,
   all-reduced twice: forward, and backward for their gradients).

    python benchmarks/scaling.py --output_dir=benchmarks/results

Writes `scaling.json` and `scaling.md` to --output_dir and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

SETTINGS = ("default", "mirrored x2", "nondeterministic", "xla")
METHODS = ("simclr", "rotation")
REPLICA_COUNTS = (8, 64, 256)


def _child(method_name, setting, steps, batch_size):
    """Times `steps` training steps of one setting; prints seconds per step as JSON."""
    import tensorflow as tf

    if setting == "mirrored x2":
        from keras_ssl.distribute import configure_cpu_replicas

        configure_cpu_replicas(2)
    if setting != "nondeterministic":
        tf.config.experimental.enable_op_determinism()
    import keras
    import numpy as np
    import orbit

    from keras_ssl.backbones import build_backbone
    from keras_ssl.registry import METHODS as REGISTRY
    from keras_ssl.training import MethodTrainer

    strategy = (tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if setting == "mirrored x2"
                else tf.distribute.get_strategy())
    images = np.random.RandomState(0).rand(batch_size, 32, 32, 3).astype(np.float32)
    examples = tf.data.Dataset.from_tensor_slices(
        {"image": images, "label": np.zeros(batch_size, np.int64), "index": np.arange(batch_size)})
    keras.utils.set_random_seed(0)
    with strategy.scope():
        net = build_backbone("resnet_v2", depth=10, widening_factor=1, small_image_stem=True,
                             synchronized_bn=setting == "mirrored x2")
        method = REGISTRY.get(method_name)(net)
        batches = method.make_dataset(examples, batch_size).cache().repeat()
        _, metrics = method.compute_pretext_loss(next(iter(batches)), training=False)
        method.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
        method.optimizer.build(method.trainable_variables)
        step = orbit.utils.create_global_step()
    trainer = MethodTrainer(method, batches, strategy, step, ["loss", "regularization_loss", *metrics],
                            batch_size, steps, jit_compile=setting == "xla", verbose=False)
    trainer.train(tf.constant(3))  # trace and warm up
    start = time.perf_counter()
    trainer.train(tf.constant(steps))
    print(json.dumps({"seconds_per_step": (time.perf_counter() - start) / steps}))


def communication_table():
    """Bytes per replica and step for SimCLR on ResNet-50 at REPLICA_COUNTS replicas."""
    import keras

    from keras_ssl.backbones import build_backbone

    net = build_backbone("resnet_v1", depth=50, widening_factor=4)
    backbone_params = sum(int(v.numpy().size) for v in net.trainable_variables)
    head_params = 2048 * 2048 + 2048 * 128  # SimCLR's 2-layer projection head, no biases before BN
    bn_channels = sum(
        int(layer.gamma.shape[0]) for layer in net._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
    ) + 2048 + 128
    gradient_bytes = 4 * (backbone_params + head_params)
    rows = []
    for replicas in REPLICA_COUNTS:
        per_replica_batch = 4096 // replicas
        all_reduce = 2 * (replicas - 1) / replicas * gradient_bytes
        # Both views' projections are gathered: [2 * 4096, 128] float32.
        gather = (replicas - 1) / replicas * 2 * 4096 * 128 * 4
        sync_bn = 2 * 2 * (replicas - 1) / replicas * 2 * bn_channels * 4
        rows.append({
            "replicas": replicas, "per_replica_batch": per_replica_batch,
            "gradient_all_reduce_mb": all_reduce / 1e6, "embedding_all_gather_mb": gather / 1e6,
            "sync_bn_mb": sync_bn / 1e6, "total_mb": (all_reduce + gather + sync_bn) / 1e6,
        })
    return {"backbone_params": backbone_params, "head_params": head_params,
            "bn_channels": bn_channels, "rows": rows}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--output_dir", default=".")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.child[0], args.child[1], args.steps, args.batch_size)

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    times = {(m, s): [] for m in METHODS for s in SETTINGS}
    for round_index in range(args.rounds):
        for method in METHODS:
            for setting in SETTINGS:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", method, setting, f"--steps={args.steps}",
                     f"--batch_size={args.batch_size}"],
                    capture_output=True, text=True, env=env, check=True,
                ).stdout
                seconds = json.loads(out.strip().splitlines()[-1])["seconds_per_step"]
                times[(method, setting)].append(seconds)
                print(f"round {round_index + 1}: {method:<8} {setting:<16} {seconds * 1000:7.1f} ms/step",
                      flush=True)
    results = {"machine": f"{os.cpu_count()} logical cores, {platform.machine()}",
               "steps": args.steps, "batch_size": args.batch_size, "rounds": args.rounds, "step_time": []}
    for method in METHODS:
        base = times[(method, "default")]
        for setting in SETTINGS:
            ratios = [t / b for t, b in zip(times[(method, setting)], base)]
            results["step_time"].append({
                "method": method, "setting": setting,
                "ms_per_step": statistics.median(times[(method, setting)]) * 1000,
                "time_ratio_to_default": statistics.median(ratios),
            })
    results["communication"] = communication_table()

    lines = [
        f"Step time ({results['machine']}; ResNet-10 v2 k=1, 32 px, global batch {args.batch_size}, "
        f"{args.steps} timed steps, median of {args.rounds} rounds; ratio to `default` in the same round):",
        "", "| method | setting | ms/step | time / default |", "| --- | --- | ---: | ---: |",
    ]
    for row in results["step_time"]:
        lines.append(f"| {row['method']} | {row['setting']} | {row['ms_per_step']:.1f} | "
                     f"{row['time_ratio_to_default']:.2f} |")
    comm = results["communication"]
    lines += [
        "", f"SimCLR on ResNet-50 (v1, {comm['backbone_params'] / 1e6:.1f}M backbone + "
        f"{comm['head_params'] / 1e6:.1f}M head parameters, {comm['bn_channels']} batch-norm channels), "
        "global batch 4096, float32: MB sent per replica and step.", "",
        "| replicas | batch per replica | gradient all-reduce | projection all-gather | sync BN | total |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in comm["rows"]:
        lines.append(f"| {row['replicas']} | {row['per_replica_batch']} | {row['gradient_all_reduce_mb']:.1f} | "
                     f"{row['embedding_all_gather_mb']:.2f} | {row['sync_bn_mb']:.2f} | {row['total_mb']:.1f} |")
    lines += ["", f"Command: `python benchmarks/scaling.py --rounds={args.rounds} --steps={args.steps} "
              f"--output_dir=benchmarks/results`"]
    markdown = "\n".join(lines) + "\n"
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "scaling.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(args.output_dir, "scaling.md"), "w") as f:
        f.write(markdown)
    print(markdown)
    return None


if __name__ == "__main__":
    main()
