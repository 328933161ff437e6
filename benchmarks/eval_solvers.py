"""Benchmark of keras-ssl-eval: the linear probe's solver, the other heads, extraction.

Sections (``--sections``, comma-separated; default ``probe,solvers,extraction``):

1. ``probe``: on real features (``--features=NPZ`` with arrays ``x, y, xt, yt``,
   or ``--saved_model`` + ``--dataset`` + ``--layer`` to extract them first),
   all in this one run: `fit_linear_probe` over the whole l2 grid and at the
   chosen l2 only; scikit-learn's ``LogisticRegression`` (lbfgs, optional
   dependency) on the same standardised features at the chosen l2 and the same
   gradient tolerance; the SGD linear head (Kolesnikov's schedule, 70 epochs);
   the MLP head; weighted kNN. Times, test accuracies and ratios.
2. ``scale``: CIFAR-size synthetic features (``--scale_train`` x ``--scale_dim``,
   random projections of Gaussian class clusters through a ReLU, so correlated
   like conv features): the probe's whole grid, kNN in memory-bounded blocks,
   and the MLP head for ``--scale_mlp_epochs`` epochs, with the process's peak
   memory after each.
3. ``solvers``: ``fast`` vs ``sgd`` on easy synthetic features for growing
   epoch budgets, and the SGD time to come within 0.5 points of ``fast``.
4. ``extraction``: one pass over the data for all end-points vs one pass per
   end-point, on a toy contract SavedModel.

Writes ``<name>.json`` and ``<name>.md`` (``--name``, default ``eval_solvers``)
to ``--output`` (default ``benchmarks/results``) and prints the markdown, which
records the command. Usage (the scale section alone takes tens of minutes on
2 cores)::

    CUDA_VISIBLE_DEVICES=-1 python benchmarks/eval_solvers.py --saved_model=DIR
    CUDA_VISIBLE_DEVICES=-1 python benchmarks/eval_solvers.py --sections=scale \\
        --name=eval_solvers_scale
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import sys
import tempfile
import time

import numpy as np

from keras_ssl_eval.probes.heads import train_head
from keras_ssl_eval.probes.knn import knn_accuracy
from keras_ssl_eval.probes.linear import DEFAULT_L2_GRID, fit_linear_probe
from keras_ssl_eval.reporting.report import package_versions
from keras_ssl_eval.reading.savedmodel import load_representation_model
from keras_ssl_eval.testing import save_toy_savedmodel


def _features(n, dim, classes, seed):
    centres = np.random.default_rng(123).normal(0, 0.25, [classes, dim])
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    return (centres[labels] + 3.0 * rng.normal(size=[n, dim])).astype(np.float32), labels


def _timed(function, *args, **kwargs):
    """Returns (result, seconds) of one call."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def _best_of(repeats, function, *args, **kwargs):
    """Returns (result, fastest seconds) of `repeats` calls.

    On a machine shared with other jobs the fastest run is the one least
    slowed down by them; every solver compared this way gets the same treatment.
    """
    timings = [_timed(function, *args, **kwargs) for _ in range(repeats)]
    return timings[-1][0], min(seconds for _, seconds in timings)


def _peak_memory_gib():
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def real_features(args):
    """Returns (x, y, xt, yt, description): from --features, or extracted from --saved_model."""
    if args.features and os.path.exists(args.features):
        arrays = np.load(args.features)
        return (arrays["x"], arrays["y"], arrays["xt"], arrays["yt"],
                f"{args.features} (saved earlier)")
    from keras_ssl_eval.extraction.features import split_features  # pylint: disable=import-outside-toplevel

    model = load_representation_model(args.saved_model)
    splits = [split_features(model, args.dataset, split, [args.layer], limit=limit, seed=0)
              for split, limit in (("train", args.max_train_examples),
                                   ("test", args.max_test_examples))]
    x, y = splits[0].features[args.layer], splits[0].labels
    xt, yt = splits[1].features[args.layer], splits[1].labels
    if args.features:
        np.savez(args.features, x=x, y=y, xt=xt, yt=yt)
    return x, y, xt, yt, (f"{args.layer} of {args.saved_model} on {args.dataset} "
                          f"(endpoint {splits[0].endpoint_shapes.get(args.layer)})")


def _objective(x, targets, weights, bias, l2):
    """The probe's objective (mean cross-entropy + l2 / 2 ||W||^2) on standardised `x`."""
    logits = x @ np.asarray(weights, np.float64) + bias
    log_norm = np.logaddexp.reduce(logits, axis=1)
    return float(np.mean(log_norm - logits[np.arange(len(x)), targets])
                 + 0.5 * l2 * np.sum(np.asarray(weights, np.float64)**2))


def probe_benchmark(x, y, xt, yt, *, mlp_epochs, sgd_epochs, repeats, tolerance=1e-5):
    """The probe vs scikit-learn, SGD, the MLP head and kNN on one set of features.

    The probe (whole grid and chosen l2) and the SGD linear head run in
    `repeats` alternating rounds; each row keeps its fastest round and the
    probe-vs-SGD ratio is the median of the per-round ratios, so load from
    other processes falls on both alike (numpy's BLAS threads suffer more from
    oversubscribed cores than TensorFlow's pool: timed apart, the ratio
    followed the load). kNN is the best of `repeats` runs; scikit-learn and
    the MLP head, which take minutes, run once.
    """
    rounds = {"probe_grid": [], "probe_chosen_l2": [], "sgd_linear": []}
    grid = chosen = sgd = None
    for _ in range(repeats):
        grid, seconds = _timed(fit_linear_probe, x, y, xt, yt, l2_grid=DEFAULT_L2_GRID,
                               tolerance=tolerance)
        rounds["probe_grid"].append(seconds)
        chosen, seconds = _timed(fit_linear_probe, x, y, xt, yt, l2_grid=[grid.l2],
                                 tolerance=tolerance)
        rounds["probe_chosen_l2"].append(seconds)
        sgd = train_head(x, y, xt, yt, head="linear", epochs=sgd_epochs, batch_size=256)
        rounds["sgd_linear"].append(sgd.seconds)
    rows = {}
    rows["probe_grid"] = {"seconds": min(rounds["probe_grid"]), "test_accuracy": grid.test_accuracy,
                          "l2": grid.l2, "newton_iterations": grid.iterations,
                          "hessian_products": grid.hessian_products,
                          "converged": grid.converged, "grad_norm": grid.grad_norm,
                          "validation_accuracy": grid.to_dict()["validation_accuracy"]}
    rows["probe_chosen_l2"] = {"seconds": min(rounds["probe_chosen_l2"]),
                               "test_accuracy": chosen.test_accuracy,
                               "l2": chosen.l2, "newton_iterations": chosen.iterations,
                               "hessian_products": chosen.hessian_products,
                               "converged": chosen.converged, "grad_norm": chosen.grad_norm}
    xs = ((x - chosen.feature_mean) / chosen.feature_std).astype(np.float32)
    xts = ((xt - chosen.feature_mean) / chosen.feature_std).astype(np.float32)
    targets = np.searchsorted(chosen.classes, y)
    ours = _objective(xs, targets, chosen.weights, chosen.bias, chosen.l2)
    try:
        from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
    except ImportError:
        rows["sklearn_lbfgs"] = None
    else:
        # scikit-learn minimises the same mean loss with l2 = 1 / (C N); its lbfgs
        # tolerance is on the same gradient's largest entry.
        reference = LogisticRegression(C=1 / (chosen.l2 * len(x)), tol=tolerance, max_iter=10000)
        _, seconds = _timed(reference.fit, xs, y)
        theirs = _objective(xs, targets, reference.coef_.T, reference.intercept_, chosen.l2)
        rows["sklearn_lbfgs"] = {"seconds": seconds, "test_accuracy": reference.score(xts, yt),
                                 "l2": chosen.l2, "iterations": int(np.max(reference.n_iter_)),
                                 "objective": theirs, "probe_objective": ours}
    rows["sgd_linear"] = {"seconds": min(rounds["sgd_linear"]), "test_accuracy": sgd.test_accuracy,
                          "epochs": sgd_epochs, "grad_norm": sgd.grad_norm}
    # SGD with longer schedules, until it comes within 0.5 points of the probe
    # (at most 8x the protocol's epochs): the SGD time at equal accuracy.
    rows["sgd_longer"] = []
    latest, epochs = rows["sgd_linear"], sgd_epochs
    while latest["test_accuracy"] < grid.test_accuracy - 0.005 and epochs < 8 * sgd_epochs:
        epochs *= 2
        longer = train_head(x, y, xt, yt, head="linear", epochs=epochs, batch_size=256)
        latest = {"seconds": longer.seconds, "epochs": epochs,
                  "test_accuracy": longer.test_accuracy}
        rows["sgd_longer"].append(latest)
    mlp = train_head(x, y, xt, yt, head="mlp", epochs=mlp_epochs, batch_size=256)
    rows["sgd_mlp"] = {"seconds": mlp.seconds, "test_accuracy": mlp.test_accuracy,
                       "epochs": mlp_epochs}
    knn, seconds = _best_of(repeats, knn_accuracy, x, y, xt, yt)
    rows["knn"] = {"seconds": seconds, "test_accuracy": knn["test_accuracy"], "k": knn["k"]}
    grid_seconds = rows["probe_grid"]["seconds"]
    per_round = [s / g for s, g in zip(rounds["sgd_linear"], rounds["probe_grid"])]
    ratios = {"sgd_seconds_per_probe_grid_second": float(np.median(per_round))}
    if rows["sklearn_lbfgs"]:
        ratios["sklearn_seconds_per_probe_grid_second"] = (
            rows["sklearn_lbfgs"]["seconds"] / grid_seconds)
        ratios["sklearn_seconds_per_probe_chosen_second"] = (
            rows["sklearn_lbfgs"]["seconds"] / rows["probe_chosen_l2"]["seconds"])
    return {"rows": rows, "ratios": ratios,
            "setup": {"n_train": len(x), "n_test": len(xt), "dim": x.shape[1],
                      "classes": len(np.unique(y)), "tolerance": tolerance,
                      "repeats": repeats},
            "rounds": {name: [round(v, 3) for v in values] for name, values in rounds.items()}}


def synthetic_conv_like(n, dim, classes, seed, latent=128, block=5000):
    """Features with class structure and correlated, decaying-spectrum dimensions.

    Gaussian class clusters in a `latent`-dim space, randomly projected to
    `dim` with decaying scales, plus noise, through a ReLU (non-negative and
    correlated like conv activations). Generated block by block in float32.
    """
    shared = np.random.default_rng(1234)
    centres = shared.normal(0, 0.15, [classes, latent])
    scales = 1 / np.sqrt(1 + np.arange(latent) / 8)
    projection = (shared.normal(size=[latent, dim]) * scales[:, None]).astype(np.float32)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    x = np.empty([n, dim], np.float32)
    for i in range(0, n, block):
        codes = (centres[labels[i:i + block]] + rng.normal(size=[len(labels[i:i + block]),
                                                                  latent])).astype(np.float32)
        noise = rng.standard_normal([len(codes), dim], np.float32)
        x[i:i + block] = np.maximum(codes @ projection + 2.0 * noise, 0)
    return x, labels


def scale_benchmark(n_train, n_test, dim, classes, mlp_epochs, knn_queries):
    """The probe, kNN and the MLP head at CIFAR size, with time and peak memory."""
    x, y = synthetic_conv_like(n_train, dim, classes, 0)
    xt, yt = synthetic_conv_like(n_test, dim, classes, 1)
    rows = {"features": {"peak_memory_gib": _peak_memory_gib()}}
    probe, seconds = _timed(fit_linear_probe, x, y, xt, yt)
    rows["probe_grid"] = {"seconds": seconds, "test_accuracy": probe.test_accuracy,
                          "l2": probe.l2, "newton_iterations": probe.iterations,
                          "hessian_products": probe.hessian_products,
                          "converged": probe.converged, "grad_norm": probe.grad_norm,
                          "peak_memory_gib": _peak_memory_gib()}
    _progress("scale probe", rows["probe_grid"])
    knn, seconds = _timed(knn_accuracy, x, y, xt[:knn_queries], yt[:knn_queries])
    rows["knn"] = {"seconds": seconds, "test_accuracy": knn["test_accuracy"],
                   "queries": min(knn_queries, n_test), "peak_memory_gib": _peak_memory_gib()}
    _progress("scale kNN", rows["knn"])
    mlp = train_head(x, y, xt, yt, head="mlp", epochs=mlp_epochs, batch_size=256)
    rows["sgd_mlp"] = {"seconds": mlp.seconds, "test_accuracy": mlp.test_accuracy,
                       "epochs": mlp_epochs, "seconds_per_epoch": mlp.seconds / mlp_epochs,
                       "peak_memory_gib": _peak_memory_gib()}
    return {"rows": rows, "setup": {"n_train": n_train, "n_test": n_test, "dim": dim,
                                    "classes": classes,
                                    "features_gib": x.nbytes / 2**30}}


def solver_benchmark(n_train, n_test, dim, classes, epoch_budgets, l2):
    """Returns rows of solver, budget, seconds, accuracy, gradient."""
    x, y = _features(n_train, dim, classes, 0)
    xt, yt = _features(n_test, dim, classes, 1)
    start = time.perf_counter()
    fast = fit_linear_probe(x, y, xt, yt, l2_grid=[l2])
    fast_seconds = time.perf_counter() - start
    rows = [{"solver": "fast (Newton-CG)", "budget": f"{fast.iterations} Newton iterations",
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


def _probe_markdown(probe):
    s = probe["setup"]
    rows = probe["rows"]
    lines = [f"Real features: {probe['source']}; {s['n_train']} train / {s['n_test']} test, "
             f"{s['dim']} dims, {s['classes']} classes; gradient tolerance "
             f"{s['tolerance']:g}. Probe and SGD linear head: the fastest of "
             f"{s.get('repeats', 1)} alternating rounds (the SGD ratio below is the median of "
             f"the per-round ratios); kNN: best of {s.get('repeats', 1)} runs; scikit-learn "
             f"and the MLP: one run.", "",
             "| method | seconds | test accuracy (%) | detail |", "| --- | ---: | ---: | --- |"]
    grid, chosen = rows["probe_grid"], rows["probe_chosen_l2"]
    lines.append(f"| probe, whole l2 grid (hold-out + refit) | {grid['seconds']:.2f} | "
                 f"{100 * grid['test_accuracy']:.1f} | l2 = {grid['l2']:g}; "
                 f"{grid['hessian_products']} Hessian products in all; final fit "
                 f"{grid['newton_iterations']} Newton iterations, gradient "
                 f"{grid['grad_norm']:.1e}, converged {grid['converged']} |")
    lines.append(f"| probe, chosen l2 only | {chosen['seconds']:.2f} | "
                 f"{100 * chosen['test_accuracy']:.1f} | {chosen['newton_iterations']} Newton "
                 f"iterations, {chosen['hessian_products']} Hessian products, gradient "
                 f"{chosen['grad_norm']:.1e} |")
    sk = rows["sklearn_lbfgs"]
    if sk:
        lines.append(f"| scikit-learn lbfgs, chosen l2 | {sk['seconds']:.2f} | "
                     f"{100 * sk['test_accuracy']:.1f} | {sk['iterations']} iterations; "
                     f"objective {sk['objective']:.8f} (probe {sk['probe_objective']:.8f}) |")
    else:
        lines.append("| scikit-learn lbfgs | - | - | scikit-learn not installed |")
    sgd, mlp, knn = rows["sgd_linear"], rows["sgd_mlp"], rows["knn"]
    lines += [f"| SGD linear head, {sgd['epochs']} epochs | {sgd['seconds']:.2f} | "
              f"{100 * sgd['test_accuracy']:.1f} | gradient {sgd['grad_norm']:.1e} |"]
    lines += [f"| SGD linear head, {row['epochs']} epochs (longer, to match the probe) | "
              f"{row['seconds']:.2f} | {100 * row['test_accuracy']:.1f} | one run |"
              for row in rows.get("sgd_longer", [])]
    lines += [
              f"| MLP head, {mlp['epochs']} epochs | {mlp['seconds']:.2f} | "
              f"{100 * mlp['test_accuracy']:.1f} | |",
              f"| kNN, k = {knn['k']} | {knn['seconds']:.2f} | "
              f"{100 * knn['test_accuracy']:.1f} | |", ""]
    lines += ["| ratio (measured in this run) | value |", "| --- | ---: |"]
    lines += [f"| {name.replace('_', ' ')} | {value:.1f} |"
              for name, value in probe["ratios"].items()]
    return lines + [""]


def _scale_markdown(scale):
    s, rows = scale["setup"], scale["rows"]
    probe, knn, mlp = rows["probe_grid"], rows["knn"], rows["sgd_mlp"]
    return [f"CIFAR size, synthetic features (class clusters randomly projected, ReLU): "
            f"{s['n_train']} train / {s['n_test']} test, {s['dim']} dims, {s['classes']} "
            f"classes ({s['features_gib']:.2f} GiB of float32 training features)", "",
            "| method | seconds | test accuracy (%) | peak memory of the process (GiB) | detail |",
            "| --- | ---: | ---: | ---: | --- |",
            f"| probe, whole l2 grid | {probe['seconds']:.1f} | "
            f"{100 * probe['test_accuracy']:.1f} | {probe['peak_memory_gib']:.2f} | "
            f"l2 = {probe['l2']:g}, {probe['hessian_products']} Hessian products, gradient "
            f"{probe['grad_norm']:.1e}, converged {probe['converged']} |",
            f"| kNN, {knn['queries']} queries | {knn['seconds']:.1f} | "
            f"{100 * knn['test_accuracy']:.1f} | {knn['peak_memory_gib']:.2f} | "
            f"query blocks of at most 256 MiB |",
            f"| MLP head, {mlp['epochs']} epochs | {mlp['seconds']:.1f} | "
            f"{100 * mlp['test_accuracy']:.1f} | {mlp['peak_memory_gib']:.2f} | "
            f"{mlp['seconds_per_epoch']:.1f} s per epoch |", ""]


def markdown(result):
    """Formats the benchmark as markdown: the command, then one table per section."""
    lines = [f"Measured on {result['machine']['platform']} ({result['machine']['cpu_count']} "
             f"logical CPUs, shared with other work); command:", "", "```",
             result["command"], "```", ""]
    if result.get("setup_note"):
        lines += [result["setup_note"], ""]
    if "probe" in result:
        lines += _probe_markdown(result["probe"])
    if "scale" in result:
        lines += _scale_markdown(result["scale"])
    if "solvers" in result:
        s = result["solvers"]["setup"]
        lines += [f"Linear head on easy synthetic features ({s['n_train']} train / "
                  f"{s['n_test']} test, {s['dim']} dims, {s['classes']} classes, "
                  f"l2 = {s['l2']:g})", "",
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
    if "extraction" in result:
        e = result["extraction"]
        lines += [f"Feature extraction, toy SavedModel, {e['num_images']} images of "
                  f"{e['input_size']} px, {len(e['layers'])} end-points", "",
                  "| extraction | seconds |", "| --- | ---: |",
                  f"| one pass, all end-points | {e['one_pass_seconds']:.2f} |",
                  f"| one pass per end-point | {e['per_layer_seconds']:.2f} |", ""]
    return "\n".join(lines)


def _progress(section, values):
    """Prints a finished section's numbers at once: a long run shows where it is."""
    print(f"[{time.strftime('%H:%M:%S')}] {section}: {json.dumps(values, default=str)}",
          file=sys.stderr, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=os.path.join("benchmarks", "results"))
    parser.add_argument("--name", default="eval_solvers",
                        help="Stem of the JSON and markdown files written to --output.")
    parser.add_argument("--sections", default="probe,solvers,extraction",
                        help="Comma-separated: probe, scale, solvers, extraction.")
    parser.add_argument("--features", default="",
                        help="NPZ with x, y, xt, yt; written after extraction when missing.")
    parser.add_argument("--saved_model", default="")
    parser.add_argument("--setup_note", default="",
                        help="How --saved_model was made (commands), copied into the markdown.")
    parser.add_argument("--dataset", default="synthetic_shapes/TCV-")
    parser.add_argument("--layer", default="block2")
    parser.add_argument("--max_train_examples", type=int, default=2000)
    parser.add_argument("--max_test_examples", type=int, default=1000)
    parser.add_argument("--sgd_epochs", type=int, default=70)
    parser.add_argument("--repeats", type=int, default=3,
                        help="Alternating rounds of the probe and the SGD head; kNN: best of this many runs.")
    parser.add_argument("--mlp_epochs", type=int, default=70)
    parser.add_argument("--scale_train", type=int, default=50000)
    parser.add_argument("--scale_test", type=int, default=10000)
    parser.add_argument("--scale_dim", type=int, default=9000)
    parser.add_argument("--scale_knn_queries", type=int, default=10000)
    parser.add_argument("--scale_mlp_epochs", type=int, default=1)
    parser.add_argument("--n_train", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--epochs", default="5,10,20,40,70")
    parser.add_argument("--images", type=int, default=512)
    args = parser.parse_args()
    sections = args.sections.split(",")
    unknown = set(sections) - {"probe", "scale", "solvers", "extraction"}
    if unknown:
        parser.error(f"Unknown sections {sorted(unknown)}.")
    if "probe" in sections and not (args.saved_model or os.path.exists(args.features)):
        parser.error("The probe section needs --saved_model (to extract features) or an "
                     "existing --features file.")
    result = {"command": shlex.join(["python", *sys.argv]), "setup_note": args.setup_note,
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
              "versions": package_versions()}
    if "probe" in sections:
        x, y, xt, yt, source = real_features(args)
        result["probe"] = {**probe_benchmark(x, y, xt, yt, mlp_epochs=args.mlp_epochs,
                                             sgd_epochs=args.sgd_epochs,
                                             repeats=args.repeats), "source": source}
        _progress("probe", result["probe"])
    if "scale" in sections:
        result["scale"] = scale_benchmark(args.scale_train, args.scale_test, args.scale_dim,
                                          10, args.scale_mlp_epochs, args.scale_knn_queries)
        _progress("scale", result["scale"])
    if "solvers" in sections:
        result["solvers"] = solver_benchmark(args.n_train, args.n_train // 5, args.dim,
                                             args.classes,
                                             [int(e) for e in args.epochs.split(",")], 1e-3)
        _progress("solvers", result["solvers"])
    if "extraction" in sections:
        result["extraction"] = extraction_benchmark(args.images, 96, 64)
        _progress("extraction", result["extraction"])
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, f"{args.name}.json"), "w") as f:
        json.dump(result, f, indent=2)
    text = markdown(result)
    with open(os.path.join(args.output, f"{args.name}.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
