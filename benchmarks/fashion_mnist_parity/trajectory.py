"""keras-ssl's SimCLR step against LightlySSL's: the same weights, the same views, N steps.

Seeds cannot show a difference of one point at the parity study's spread without
many runs; this check needs none. LightlySSL trains N steps in float64 and writes
its views, its loss at each step and its weights before and after:

    python benchmarks/fashion_mnist_parity/lightly_simclr.py --arrays=DIR/arrays.npz \
        --steps=10 --batch_size=64 --trajectory --output=DIR/lightly_trajectory.npz

then keras-ssl's SimCLR, built in float64 from the parity recipe's gin file, starts
from those weights, trains on those views with its own train step, optimizer and
schedule, and the two are compared:

    python -m benchmarks.fashion_mnist_parity.trajectory --lightly=DIR/lightly_trajectory.npz \
        --output=benchmarks/results/fashion_mnist_trajectory

The report gives each step's loss in both libraries (keras-ssl's NT-Xent is the sum of
both directions, LightlySSL's their mean: keras-ssl's is halved) and, per weight tensor,
how far keras-ssl's update (end - start) is from LightlySSL's, relative to LightlySSL's.
In float64 the same training agrees to about 1e-7; a different network, loss, decay,
head or momentum buffer shows as 1e-3 or more. (In float32 it would not: one step's
gradients already differ by up to a few percent in tensors whose gradient is a small
sum of large terms, e.g. a batch norm's offset, and the difference grows each step.)
"""

from __future__ import annotations

import argparse
import json

import numpy as np

_RECIPE = "gin_configs/simclr/fashion_mnist_resnet18.gin"


def _backbone_names():
    """keras-ssl's ResNet-18 v2 layer -> the PyTorch module of lightly_simclr.py."""
    names = {"root_conv": "net.0"}
    module = 1
    for block in range(1, 5):
        for unit in range(1, 3):
            name, torch = f"block{block}_unit{unit}", f"net.{module}"
            names.update({f"{name}_preact_bn": f"{torch}.preact.0", f"{name}_conv1": f"{torch}.conv1",
                          f"{name}_conv1_bn": f"{torch}.mid.0", f"{name}_conv2": f"{torch}.conv2",
                          f"{name}_shortcut": f"{torch}.shortcut"})
            module += 1
    names["final_bn"] = f"net.{module}"
    return names


# LightlySSL's SimCLRProjectionHead: Linear, BatchNorm1d, ReLU, Linear, BatchNorm1d.
_HEAD_NAMES = {"dense_0": "layers.0", "bn_0": "layers.1", "dense_1": "layers.3", "bn_1": "layers.4"}
_BN_WEIGHTS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
               "moving_variance": "running_var"}


def _links(method):
    """(keras variable, PyTorch name, to keras layout) for every variable of the two models."""
    links = []
    for model, prefix, names in ((method.backbone, "backbone", _backbone_names()),
                                 (method.head, "head", _HEAD_NAMES)):
        for layer in model.layers:
            for variable in layer.weights:
                torch = f"{prefix}.{names[layer.name]}"
                if variable.name == "kernel" and len(variable.shape) == 4:  # OIHW -> HWIO
                    links.append((variable, f"{torch}.weight", lambda w: w.transpose(2, 3, 1, 0)))
                elif variable.name == "kernel":  # [out, in] -> [in, out]
                    links.append((variable, f"{torch}.weight", np.transpose))
                elif variable.name == "bias":
                    links.append((variable, f"{torch}.bias", np.asarray))
                else:
                    links.append((variable, f"{torch}.{_BN_WEIGHTS[variable.name]}", np.asarray))
    return links


def train_from(saved, gin_file, bindings):
    """keras-ssl's SimCLR in float64, from LightlySSL's start, trained on its views.

    Returns `(links, losses)`: `_links` of the trained model (its weights now the
    end of the steps) and each step's loss, halved to LightlySSL's scale.
    """
    import keras
    import tensorflow as tf

    import keras_ssl.training  # noqa: F401  registers keras_ssl.train, which the recipe binds
    from keras_ssl.building import build_method
    from keras_ssl.config import parse_gin
    from keras_ssl.optimizers import build_optimizer, learning_rate_schedule

    info = json.loads(str(saved["info"]))
    steps, batch_size = info["steps"], info["batch_size"]
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    try:
        parse_gin([gin_file], bindings)
        keras.utils.set_random_seed(0)
        method = build_method()
        optimizer = build_optimizer(learning_rate_schedule(global_batch_size=batch_size,
                                                           total_steps=steps))
        method.compile(optimizer=optimizer)

        def batch(step):
            return {"view_1": tf.constant(saved["view_1"][step], tf.float64),
                    "view_2": tf.constant(saved["view_2"][step], tf.float64),
                    "label": tf.zeros([batch_size], tf.int64),
                    "index": tf.range(batch_size, dtype=tf.int64)}

        method.build_from_batch(batch(0))
        optimizer.build(method.trainable_variables)
    finally:
        keras.config.set_dtype_policy(policy)
    links = _links(method)
    unmatched = set(k[len("start/"):] for k in saved.files if k.startswith("start/"))
    unmatched -= {name for _, name, _ in links}
    if unmatched or len(links) != len(method.weights):
        raise SystemExit(f"the two models' weights do not pair up: LightlySSL's {sorted(unmatched)} "
                         f"unmatched, {len(method.weights) - len(links)} of keras-ssl's")
    for variable, name, layout in links:
        variable.assign(layout(saved[f"start/{name}"]))
    step_fn = tf.function(method.train_step)
    return links, [float(step_fn(batch(step))["loss"]) / 2 for step in range(steps)]


def run(lightly_path, gin_file, bindings, float32_path=None):
    """Trains keras-ssl from LightlySSL's start on its views; returns the comparison.

    `float32_path`: LightlySSL's float32 run of the same steps, whose distance from its
    float64 run is what float32 rounding alone does (the floor of a float32 comparison).
    """
    saved = np.load(lightly_path)
    info = json.loads(str(saved["info"]))
    links, losses = train_from(saved, gin_file, bindings)
    floor = np.load(float32_path) if float32_path else None
    tensors = {}
    for variable, name, layout in links:
        start, end = saved[f"start/{name}"], saved[f"end/{name}"]
        reference = end - start
        tensors[name] = dict(
            shape=list(layout(reference).shape), lightly_update=float(np.abs(reference).max()),
            difference=_relative(np.asarray(variable.numpy()) - layout(start), layout(reference)))
        if floor is not None:
            tensors[name]["float32_difference"] = _relative(
                floor[f"end/{name}"] - floor[f"start/{name}"], reference)
    return dict(lightly=info, gin_file=gin_file, bindings=list(bindings),
                keras_ssl_losses=losses, lightly_losses=saved["losses"].tolist(),
                lightly_float32_losses=None if floor is None else floor["losses"].tolist(),
                tensors=tensors)


def _relative(update, reference):
    """max |update - reference| / max |reference|: 0 for the same step, 1 for an unrelated one."""
    scale = float(np.abs(reference).max())
    return float(np.abs(update - reference).max()) / scale if scale else 0.0


def write_report(result, output, command):
    with open(output + ".json", "w") as f:
        json.dump({"command": command, **result}, f, indent=1)
    info = result["lightly"]
    lines = [f"LightlySSL's weights and views ({info['steps']} steps of {info['batch_size']} "
             f"images, lr {info['learning_rate']:g} per step, seed {info['seed']}), "
             f"keras-ssl trained from them with `{result['gin_file']}`"
             + "".join(f", `{b}`" for b in result["bindings"]) + ".", "",
             "| step | LightlySSL loss | keras-ssl loss (halved) | difference | "
             "LightlySSL in float32: difference |",
             "| ---: | ---: | ---: | ---: | ---: |"]
    floor = result["lightly_float32_losses"] or [None] * len(result["lightly_losses"])
    lines += [f"| {i + 1} | {a:.6f} | {b:.6f} | {b - a:+.2e} | "
              + ("-" if c is None else f"{c - a:+.2e}") + " |" for i, (a, b, c) in
              enumerate(zip(result["lightly_losses"], result["keras_ssl_losses"], floor))]
    tensors = result["tensors"]

    def statistic(name):
        return name.endswith(("running_mean", "running_var"))

    groups = {
        "convolution kernels": [t for t in tensors.values() if len(t["shape"]) == 4],
        "head kernels": [t for t in tensors.values() if len(t["shape"]) == 2],
        "batch-norm scales and offsets": [t for n, t in tensors.items()
                                          if len(t["shape"]) == 1 and not statistic(n)],
        "backbone batch-norm moving statistics": [
            t for n, t in tensors.items() if statistic(n) and n.startswith("backbone.")],
        "head batch-norm moving statistics (momentum 0.99 against LightlySSL's BatchNorm1d "
        "0.1; never used in training or in the features)": [
            t for n, t in tensors.items() if statistic(n) and n.startswith("head.")],
    }
    worst = sorted(((n, t) for n, t in tensors.items()
                    if not (statistic(n) and n.startswith("head."))),
                   key=lambda kv: -kv[1]["difference"])
    lines += ["", "Largest |update difference| / |LightlySSL's update| per kind of weight "
              "(updates: the weights after the steps minus before):", "",
              "| weights | tensors | keras-ssl | LightlySSL in float32 |", "| --- | ---: | ---: | ---: |"]

    def largest(ts, key):
        return f"{max(t[key] for t in ts):.2e}" if key in ts[0] else "-"

    lines += [f"| {name} | {len(ts)} | {largest(ts, 'difference')} | "
              f"{largest(ts, 'float32_difference')} |" for name, ts in groups.items() if ts]
    lines += ["", "Largest differences, the head's moving statistics aside: " + ", ".join(
        f"`{name}` {t['difference']:.2e}" for name, t in worst[:5]) + ".",
        "", f"Command: `{command}`"]
    with open(output + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lightly", required=True,
                        help="the .npz lightly_simclr.py --trajectory wrote")
    parser.add_argument("--lightly_float32",
                        help="optional: lightly_simclr.py --trajectory=float32 of the same steps")
    parser.add_argument("--gin_file", default=_RECIPE)
    parser.add_argument("--gin_bindings", action="append", default=[])
    parser.add_argument("--output", required=True, help="path prefix of the .json and .md")
    args = parser.parse_args(argv)
    command = ("python -m benchmarks.fashion_mnist_parity.trajectory "
               f"--lightly={args.lightly} --gin_file={args.gin_file}"
               + (f" --lightly_float32={args.lightly_float32}" if args.lightly_float32 else "")
               + "".join(f" --gin_bindings=\"{b}\"" for b in args.gin_bindings)
               + f" --output={args.output}")
    write_report(run(args.lightly, args.gin_file, args.gin_bindings, args.lightly_float32),
                 args.output, command)


if __name__ == "__main__":
    main()
