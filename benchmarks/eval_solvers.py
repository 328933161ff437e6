"""Benchmark of keras-ssl-eval: linear-probe solvers and feature extraction.

1. ``fast`` (L-BFGS to the regularised optimum) vs ``sgd`` (Kolesnikov's
   schedule: momentum 0.9, lr 0.1 per 256, x0.1 at 30/70 and 50/70 of the
   epochs) on fixed synthetic features: time and test accuracy for growing
   epoch budgets, and the SGD time to come within 0.5 points of ``fast``.
2. One pass over the data for all end-points (what keras-ssl-eval does) vs
   one pass per end-point, on a toy contract SavedModel.

Writes ``eval_solvers.json`` and ``eval_solvers.md`` to ``--output`` and
prints the markdown. Usage::

    CUDA_VISIBLE_DEVICES=-1 python benchmarks/eval_solvers.py --output=/tmp/bench
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np

from keras_ssl_eval.heads import train_head
from keras_ssl_eval.linear import fit_linear_probe
from keras_ssl_eval.report import package_versions
from keras_ssl_eval.savedmodel import load_representation_model
from keras_ssl_eval.testing import save_toy_savedmodel


def _features(n, dim, classes, seed):
    centres = np.random.default_rng(123).normal(0, 0.25, [classes, dim])
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    return (centres[labels] + 3.0 * rng.normal(size=[n, dim])).astype(np.float32), labels


def solver_benchmark(n_train, n_test, dim, classes, epoch_budgets, l2):
    """Returns rows of solver, budget, seconds, accuracy, gradient."""
    x, y = _features(n_train, dim, classes, 0)
    xt, yt = _features(n_test, dim, classes, 1)
    start = time.perf_counter()
    fast = fit_linear_probe(x, y, xt, yt, l2_grid=[l2])
    fast_seconds = time.perf_counter() - start
    rows = [{"solver": "fast (L-BFGS)", "budget": f"{fast.iterations} iterations",
             "seconds": fast_seconds, "test_accuracy": fast.test_accuracy,
             "grad_norm": fast.grad_norm}]
    reached = None
    for epochs in epoch_budgets:
        result = train_head(x, y, xt, yt, head="linear", epochs=epochs, batch_size=256,
                            weight_decay=l2)
        rows.append({"solver": "sgd (paper schedule)", "budget": f"{epochs} epochs",
                     "seconds": result.seconds, "test_accuracy": result.test_accuracy,
                     "grad_norm": result.grad_norm})
        if reached is None and result.test_accuracy >= fast.test_accuracy - 0.005:
            reached = {"epochs": epochs, "seconds": result.seconds}
    return {"rows": rows, "fast_seconds": fast_seconds, "sgd_to_fast_accuracy": reached,
            "setup": {"n_train": n_train, "n_test": n_test, "dim": dim, "classes": classes,
                      "l2": l2}}


def extraction_benchmark(num_images, input_size, batch_size, repeats=3):
    """Times one pass for all end-points vs one pass per end-point."""
    with tempfile.TemporaryDirectory() as tmp:
        path = save_toy_savedmodel(os.path.join(tmp, "toy"), input_size=input_size,
                                   root_channels=16, block1_channels=64)
        model = load_representation_model(path)
        images = np.random.default_rng(0).uniform(
            size=[num_images, input_size, input_size, 3]).astype(np.float32)
        layers = list(model.endpoint_names)
        model.extract(images[:batch_size], layers, batch_size=batch_size)  # Warm-up.
        one, per = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            model.extract(images, layers, batch_size=batch_size)
            one.append(time.perf_counter() - start)
            start = time.perf_counter()
            for layer in layers:
                model.extract(images, [layer], batch_size=batch_size)
            per.append(time.perf_counter() - start)
    return {"layers": layers, "num_images": num_images, "input_size": input_size,
            "one_pass_seconds": min(one), "per_layer_seconds": min(per)}


def markdown(result):
    """Formats the benchmark as markdown tables."""
    s = result["solvers"]["setup"]
    lines = [f"Linear head on fixed features ({s['n_train']} train / {s['n_test']} test, "
             f"{s['dim']} dims, {s['classes']} classes, l2 = {s['l2']:g})", "",
             "| solver | budget | seconds | test accuracy (%) | max abs gradient |",
             "| --- | --- | ---: | ---: | ---: |"]
    for row in result["solvers"]["rows"]:
        lines.append(f"| {row['solver']} | {row['budget']} | {row['seconds']:.2f} | "
                     f"{100 * row['test_accuracy']:.1f} | {row['grad_norm']:.1e} |")
    reached = result["solvers"]["sgd_to_fast_accuracy"]
    lines += ["", "SGD within 0.5 points of fast: " + (
        f"{reached['epochs']} epochs, {reached['seconds']:.2f} s "
        f"(fast: {result['solvers']['fast_seconds']:.2f} s)" if reached else
        "not reached in the budgets tried"), ""]
    e = result["extraction"]
    lines += [f"Feature extraction, toy SavedModel, {e['num_images']} images of "
              f"{e['input_size']} px, {len(e['layers'])} end-points", "",
              "| extraction | seconds |", "| --- | ---: |",
              f"| one pass, all end-points | {e['one_pass_seconds']:.2f} |",
              f"| one pass per end-point | {e['per_layer_seconds']:.2f} |", ""]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="/tmp/eval_solvers")
    parser.add_argument("--n_train", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--epochs", default="5,10,20,40,70")
    parser.add_argument("--images", type=int, default=512)
    args = parser.parse_args()
    result = {
        "solvers": solver_benchmark(args.n_train, args.n_train // 5, args.dim, args.classes,
                                    [int(e) for e in args.epochs.split(",")], 1e-3),
        "extraction": extraction_benchmark(args.images, 96, 64),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "versions": package_versions(),
    }
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "eval_solvers.json"), "w") as f:
        json.dump(result, f, indent=2)
    text = markdown(result)
    with open(os.path.join(args.output, "eval_solvers.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
