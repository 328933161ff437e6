"""keras-ssl's SimCLR against LightlySSL's on Fashion-MNIST, scored by one evaluation.

Three steps (docs/results/fashion_mnist_parity.md has the commands and the results):

    # 1. the evaluation images, read by keras-ssl's reader (32 px, grey to RGB)
    python -m benchmarks.fashion_mnist_parity.parity arrays --data_dir=DATA --output=DIR/arrays.npz
    # 2. features of a keras-ssl run's exports at step 0 and at the end (the lightly
    #    side writes the same file itself: lightly_simclr.py)
    python -m benchmarks.fashion_mnist_parity.parity features --model_dir=RUN \
        --arrays=DIR/arrays.npz --output=DIR/keras_ssl_s0.npz
    # 3. kNN and linear probe on every feature file, seeds aggregated per library
    python -m benchmarks.fashion_mnist_parity.parity evaluate --features='DIR/*.npz' \
        --output=benchmarks/results/fashion_mnist_parity

and, apart, what the two libraries' views look like (`views`: brightness, clipping and
fine detail of one view per image; LightlySSL's written by `lightly_simclr.py --views`).

Both libraries' features are scored by the same code: keras-ssl-eval's kNN (k = 200,
temperature 0.1, cosine similarity) and its linear probe (L2 chosen on a hold-out of
the training features), trained on the 60,000 training images and tested on the
10,000 test images, each accuracy with its 95% Wilson interval.
"""

from __future__ import annotations

import argparse
import ast
import glob
import json
import os

import numpy as np

from keras_ssl_eval.probes.knn import knn_accuracy
from keras_ssl_eval.probes.linear import fit_linear_probe
from keras_ssl_eval.statistics import welch_difference, wilson_interval

_IMAGE_SIZE = 32
_STAGES = (("step0", "random initialisation"), ("", "trained"))


def _split_arrays(dataset, split, data_dir, image_size):
    from keras_ssl_eval.reading.data import load_images

    images, _ = load_images(dataset, split, data_dir=data_dir, image_size=image_size)
    xs, ys = [], []
    for batch in images.batch(2048).as_numpy_iterator():
        xs.append(batch["image"])
        ys.append(batch["label"])
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64)


def write_arrays(dataset, data_dir, output):
    """Writes the training and test images at 32 px and the raw training pixels."""
    train, train_labels = _split_arrays(dataset, "train", data_dir, _IMAGE_SIZE)
    test, test_labels = _split_arrays(dataset, "test", data_dir, _IMAGE_SIZE)
    raw, _ = _split_arrays(dataset, "train", data_dir, None)
    np.savez(output, train=train, test=test, train_labels=train_labels, test_labels=test_labels,
             train_raw=np.round(raw[..., 0] * 255).astype(np.uint8))
    print(f"wrote {output}: {len(train)} training and {len(test)} test images")


def write_features(model_dir, arrays_path, output):
    """Writes the pre-logits of a run's step-0 and final exports on the arrays."""
    from keras_ssl_eval.reading.savedmodel import load_representation_model

    arrays = np.load(arrays_path)
    exports = sorted(glob.glob(os.path.join(model_dir, "export", "step_*")),
                     key=lambda path: int(path.rsplit("_", 1)[1]))
    if len(exports) < 2 or not exports[0].endswith("step_0"):
        raise SystemExit(f"{model_dir}: needs export/step_0 and a final export "
                         f"(keras-ssl-export --model_dir={model_dir} --step=0); found {exports}")
    out = {}
    for suffix, path in (("_step0", exports[0]), ("", exports[-1])):
        model = load_representation_model(path)
        for split in ("train", "test"):
            out[split + suffix] = model.extract(arrays[split], ["pre_logits"],
                                                batch_size=1000)["pre_logits"]
    with open(os.path.join(model_dir, "run.json")) as f:
        run = json.load(f)
    info = dict(library="keras-ssl", steps=run["train_steps"], seed=run["seed"],
                batch_size=run["batch_size"], model_dir=model_dir,
                **_recipe(os.path.join(model_dir, "config.gin")))
    np.savez(output, **out, train_labels=arrays["train_labels"],
             test_labels=arrays["test_labels"], info=json.dumps(info))
    print(f"wrote {output}")


# The settings a parity run may change, by their gin name: (key, label, default).
_RECIPE = {
    "learning_rate_schedule.base_learning_rate": ("learning_rate", "lr", None),
    "build_optimizer.weight_decay": ("weight_decay", "wd", None),
    "resnet_v2.kernel_initializer": ("kernel_initializer", "init", "he_normal"),
    "simclr.head_output_batch_norm": ("head_output_batch_norm", "head output norm", "no_offset"),
    "simclr.views_in_one_batch": ("views_in_one_batch", "views in one batch", True),
    "simclr_cifar.crop_sampler": ("crop_sampler", "crop", "tensorflow"),
    "resnet_v2.strided_padding": ("strided_padding", "padding", "same"),
    "simclr.head_batch_norm_epsilon": ("head_batch_norm_epsilon", "head bn eps", 1e-3),
    "build_optimizer.momentum_form": ("momentum_form", "momentum", "keras"),
}


# The settings lightly_simclr.py records beside its flags' values: (key, label, default).
_LIGHTLY_RECIPE = (("train_images", "views cut from", "raw"),)


# Per library, what a run that does not record a setting used (it predates the setting).
_RECIPE_DEFAULTS = {
    "keras-ssl": {key: default for key, _, default in _RECIPE.values() if default is not None},
    "lightly": {key: default for key, _, default in _LIGHTLY_RECIPE},
}


def _with_recipe_defaults(run):
    """A run with the defaults of the settings it predates filled in (the same rows)."""
    return {**_RECIPE_DEFAULTS.get(run["library"], {}), **run}


def _recipe(config_path):
    """The settings of `_RECIPE` a run used, read from its operative gin config."""
    recipe = dict(_RECIPE_DEFAULTS["keras-ssl"])
    with open(config_path) as f:
        for line in f:
            name, _, value = line.partition(" = ")
            if name.strip() in _RECIPE:
                recipe[_RECIPE[name.strip()][0]] = ast.literal_eval(value.strip())
    return recipe


def _library(run):
    """The row label: the library, and the recipe's settings where the run records them."""
    settings = [f"{label} {run[key]:g}" if isinstance(run.get(key), float) else
                f"{label} {run[key]}" for key, label, _ in (*_RECIPE.values(), *_LIGHTLY_RECIPE)
                if key in run]
    return f"{run['library']} ({', '.join(settings)})" if settings else run["library"]


def _scored(accuracy, n):
    low, high = wilson_interval(round(accuracy * n), n)
    return {"accuracy": 100 * accuracy, "ci95": [100 * low, 100 * high], "test_count": n}


def view_statistics(views):
    """What sets views `[N, H, W, C]` in [0, 1] apart: brightness, contrast, clipping, detail.

    On the first channel (the views are grey). `neighbour_msd` is the mean squared
    difference of horizontally and vertically neighbouring pixels: the detail left at
    the finest scale, which each bilinear resampling of an enlarged crop smooths away.
    """
    grey = np.asarray(views, np.float64)[..., 0]
    per_image = (np.mean(np.diff(grey, axis=1) ** 2, axis=(1, 2))
                 + np.mean(np.diff(grey, axis=2) ** 2, axis=(1, 2))) / 2
    half = 1.96 * per_image.std(ddof=1) / np.sqrt(len(grey))  # the mean's 95% interval
    return {"count": len(grey), "mean": float(grey.mean()),
            "image_std": float(grey.std(axis=(1, 2)).mean()),
            "black": float(np.mean(grey <= 1 / 255)), "white": float(np.mean(grey >= 254 / 255)),
            "neighbour_msd": float(per_image.mean()),
            "neighbour_msd_ci95": [float(per_image.mean() - half), float(per_image.mean() + half)]}


def keras_ssl_views(images, crop_sampler):
    """One `simclr_cifar` view of each image (the parity config's stack), image i seeded by i."""
    import tensorflow as tf

    from keras_ssl import random
    from keras_ssl.augment import simclr_cifar_augment

    def view(image, index):
        with random.seeded(tf.stack([index, 0])):
            return simclr_cifar_augment(image, crop_sampler=crop_sampler)

    indices = tf.range(len(images), dtype=tf.int32)
    dataset = tf.data.Dataset.from_tensor_slices((images, indices)).map(view).batch(500)
    return np.concatenate(list(dataset.as_numpy_iterator()))


def write_views_report(arrays_path, lightly_paths, count, crop_sampler, output, command):
    """`view_statistics` of keras-ssl's views, LightlySSL's (written by lightly_simclr.py
    --views) and the 32-px images themselves, as JSON and markdown."""
    images = np.load(arrays_path)["train"][:count]
    sources = {f"keras-ssl simclr_cifar (crop {crop_sampler})": keras_ssl_views(images,
                                                                                crop_sampler)}
    for path in lightly_paths:
        sources[f"LightlySSL ({os.path.basename(path)})"] = np.load(path)[:count]
    sources["the 32-px training images (no view)"] = images
    rows = {name: view_statistics(views) for name, views in sources.items()}
    with open(output + ".json", "w") as f:
        json.dump({"command": command, "views": rows}, f, indent=1)
    lines = ["| views of the first training images | count | mean | per-image std | "
             "pixels <= 1/255 | pixels >= 254/255 | neighbour MSD [95% CI] |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {name} | {r['count']} | {r['mean']:.3f} | {r['image_std']:.3f} | "
              f"{r['black']:.3f} | {r['white']:.3f} | {r['neighbour_msd']:.4f} "
              f"[{r['neighbour_msd_ci95'][0]:.4f}, {r['neighbour_msd_ci95'][1]:.4f}] |"
              for name, r in rows.items()]
    lines += ["", f"Command: `{command}`"]
    with open(output + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def write_pixels(arrays_path, output):
    """Writes the raw pixels (one channel of the 32-px images) as a feature file."""
    arrays = np.load(arrays_path)
    flat = {split: arrays[split][..., 0].reshape(len(arrays[split]), -1)
            for split in ("train", "test")}
    np.savez(output, **flat, train_labels=arrays["train_labels"],
             test_labels=arrays["test_labels"],
             info=json.dumps(dict(library="raw pixels", steps=0, seed=0)))
    print(f"wrote {output}")


def score(path):
    """kNN and linear-probe accuracies of one feature file, at step 0 and trained.

    The scores are kept beside the file (`.scores.json`) and reused while the file is
    unchanged, so adding a seed scores only the new file.
    """
    cached = path + ".scores.json"
    if os.path.exists(cached) and os.path.getmtime(cached) >= os.path.getmtime(path):
        with open(cached) as f:
            return json.load(f)
    data = np.load(path)
    info = json.loads(str(data["info"]))
    result = dict(info, file=os.path.basename(path))
    for stage, _ in _STAGES:
        suffix = f"_{stage}" if stage else ""
        if "train" + suffix not in data:
            continue
        train, test = data["train" + suffix], data["test" + suffix]
        yt, ye = data["train_labels"], data["test_labels"]
        knn = knn_accuracy(train, yt, test, ye, k=200, temperature=0.1)
        linear = fit_linear_probe(train, yt, test, ye)
        result[stage or "trained"] = {
            "knn": _scored(knn["test_accuracy"], len(ye)),
            "linear": {**_scored(linear.test_accuracy, len(ye)), "l2": linear.l2},
        }
        print(f"{result['file']} {stage or 'trained'}: kNN {100 * knn['test_accuracy']:.2f} "
              f"linear {100 * linear.test_accuracy:.2f}", flush=True)
    with open(cached, "w") as f:
        json.dump(result, f)
    return result


def _summary(values):
    values = np.asarray(values, float)
    std = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
    return {"mean": float(values.mean()), "std": std, "n": len(values),
            "min": float(values.min()), "max": float(values.max())}


def _groups(results):
    """The runs per row, `(library label, steps)`, ordered by steps then label."""
    groups = {}
    for r in results:
        groups.setdefault((_library(r), r["steps"]), []).append(r)
    return sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0]))


def aggregate(results):
    """Mean, std (ddof 1), min and max over seeds per (library, steps, stage, protocol)."""
    rows = []
    for (library, steps), runs in _groups(results):
        for stage, label in _STAGES:
            key = stage or "trained"
            if key not in runs[0]:
                continue
            rows.append(dict(
                library=library, steps=steps, stage="-" if library == "raw pixels" else label,
                seeds=sorted(r["seed"] for r in runs),
                **{p: _summary([r[key][p]["accuracy"] for r in runs]) for p in ("knn", "linear")},
            ))
    return rows


def compare(results):
    """Each keras-ssl recipe against LightlySSL at the same steps: Welch's test per protocol.

    Only trained runs, and only rows with at least 2 seeds on both sides.
    """
    groups = _groups(results)
    comparisons = []
    for (reference, steps), reference_runs in groups:
        if reference_runs[0]["library"] != "lightly" or len(reference_runs) < 2:
            continue
        for (library, other_steps), runs in groups:
            if runs[0]["library"] == "keras-ssl" and other_steps == steps and len(runs) > 1:
                comparisons.append(dict(
                    library=library, reference=reference, steps=steps,
                    seeds=[sorted(r["seed"] for r in runs),
                           sorted(r["seed"] for r in reference_runs)],
                    **{p: welch_difference([r["trained"][p]["accuracy"] for r in runs],
                                           [r["trained"][p]["accuracy"] for r in reference_runs])
                       for p in ("knn", "linear")},
                ))
    return comparisons


def _difference_cell(d):
    low, high = d["ci95"]
    return f"{d['difference']:+.1f} [{low:+.1f}, {high:+.1f}] (t = {d['t']:.2f}, p = {d['p']:.2g})"


def _cell(s):
    spread = f" ± {s['std']:.1f}" if s["n"] > 1 else ""
    return f"{s['mean']:.1f}{spread} ({s['min']:.1f}-{s['max']:.1f})"


def write_report(results, output, command):
    rows, comparisons = aggregate(results), compare(results)
    with open(output + ".json", "w") as f:
        json.dump({"command": command, "runs": results, "summary": rows,
                   "comparisons": comparisons}, f, indent=1)
    lines = [
        "| library | steps | model | seeds | kNN (k=200) | linear probe |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(f"| {row['library']} | {row['steps']} | {row['stage']} | {row['seeds']} | "
                     f"{_cell(row['knn'])} | {_cell(row['linear'])} |")
    lines += ["", "Each cell: mean ± std over seeds (min-max), test accuracy in % on the 10,000 "
              "test images. One run's 95% Wilson interval is about ±0.9 points at 75%.", ""]
    if comparisons:
        lines += ["keras-ssl minus LightlySSL, trained, at the same steps: the difference of "
                  "the means over seeds, its 95% interval, Welch's t and two-sided p:", "",
                  "| keras-ssl | LightlySSL | steps | seeds (keras-ssl; LightlySSL) | kNN | "
                  "linear probe |", "| --- | --- | ---: | --- | ---: | ---: |"]
        lines += [f"| {c['library']} | {c['reference']} | {c['steps']} | "
                  f"{c['seeds'][0]}; {c['seeds'][1]} | "
                  f"{_difference_cell(c['knn'])} | {_difference_cell(c['linear'])} |"
                  for c in comparisons]
        lines += [""]
    lines += ["Per run:", "", "| file | stage | kNN [95% CI] | linear [95% CI] |",
              "| --- | --- | ---: | ---: |"]
    for r in results:
        for stage in ("step0", "trained"):
            if stage not in r:
                continue
            s = r[stage]
            lines.append(f"| {r['file']} | {stage} | "
                         + " | ".join(f"{s[p]['accuracy']:.2f} [{s[p]['ci95'][0]:.1f}, "
                                      f"{s[p]['ci95'][1]:.1f}]" for p in ("knn", "linear"))
                         + " |")
    lines += ["", f"Command: `{command}`"]
    with open(output + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    arrays = sub.add_parser("arrays", help="write the evaluation images")
    arrays.add_argument("--dataset", default="fashion_mnist")
    arrays.add_argument("--data_dir")
    arrays.add_argument("--output", required=True)
    features = sub.add_parser("features", help="features of a keras-ssl run")
    features.add_argument("--model_dir", required=True)
    features.add_argument("--arrays", required=True)
    features.add_argument("--output", required=True)
    pixels = sub.add_parser("pixels", help="the raw-pixel baseline as a feature file")
    pixels.add_argument("--arrays", required=True)
    pixels.add_argument("--output", required=True)
    views = sub.add_parser("views", help="statistics of both libraries' views")
    views.add_argument("--arrays", required=True)
    views.add_argument("--lightly", default="", help="comma-separated .npy files written by "
                       "lightly_simclr.py --views")
    views.add_argument("--count", type=int, default=2000)
    views.add_argument("--crop_sampler", default="torchvision")
    views.add_argument("--output", required=True, help="path prefix of the .json and .md")
    evaluate = sub.add_parser("evaluate", help="score feature files, aggregate seeds")
    evaluate.add_argument("--features", required=True, help="a glob of .npz feature files")
    evaluate.add_argument("--output", required=True, help="path prefix of the .json and .md")
    evaluate.add_argument("--keep_runs", help="an earlier report's .json whose scored runs "
                          "join these (their feature files need not exist any more)")
    args = parser.parse_args(argv)
    if args.command == "arrays":
        write_arrays(args.dataset, args.data_dir, args.output)
    elif args.command == "features":
        write_features(args.model_dir, args.arrays, args.output)
    elif args.command == "pixels":
        write_pixels(args.arrays, args.output)
    elif args.command == "views":
        command = ("python -m benchmarks.fashion_mnist_parity.parity views "
                   f"--arrays={args.arrays} --lightly={args.lightly} --count={args.count} "
                   f"--crop_sampler={args.crop_sampler} --output={args.output}")
        write_views_report(args.arrays, [p for p in args.lightly.split(",") if p], args.count,
                           args.crop_sampler, args.output, command)
    else:
        paths = sorted(glob.glob(args.features))
        if not paths:
            raise SystemExit(f"no feature files match {args.features!r}")
        command = ("python -m benchmarks.fashion_mnist_parity.parity evaluate "
                   f"--features='{args.features}' --output={args.output}")
        results = [score(p) for p in paths]
        if args.keep_runs:
            with open(args.keep_runs) as f:
                kept = json.load(f)["runs"]
            scored = {r["file"] for r in results}
            results = [r for r in kept if r["file"] not in scored] + results
            command += f" --keep_runs={args.keep_runs}"
        write_report([_with_recipe_defaults(r) for r in results], args.output, command)


if __name__ == "__main__":
    main()
