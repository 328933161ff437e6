"""`python -m benchmarks`: every throughput figure of the project, each a ratio measured in one run.

Sections (``--sections``, comma-separated, default all):

- ``methods``: each method's training step against the bare backbone's
  forward + backward on the same images, the compute limit of that method
  (`benchmarks/methods_throughput.py`);
- ``augmentation``: views/s of every registered stack against the same ops
  written plainly with tf.image (`benchmarks/augmentation.py`), and against
  what the model consumes (the bare backbone's training images/s);
- ``probe``: on real features (``--layer`` of a SavedModel, trained here for
  ``--train_steps`` Rotation steps unless ``--saved_model`` is given), the
  linear probe against the SGD linear head and scikit-learn's lbfgs (an
  optional dependency: skipped with a note when absent)
  (`benchmarks/eval_solvers.py`);
- ``extraction``: all end-points in one pass against one pass per end-point
  (`keras_ssl_eval`), on that SavedModel;
- ``export``: the time to export a checkpoint and the SavedModel's size;
- ``vit``: a ViT-S/16 training step at 224 px against the same network built
  from Keras' own layers (`benchmarks/vit_speed.py`);
- ``mae``: MAE's training step on ViT-S/16 at 224 px with 75% of the patches
  masked against the same step at mask ratio 0, and the encoder alone on the
  visible patches against all of them (`benchmarks/mae_speed.py`);
- ``export_formats``: the quickstart's network exported as SavedModel,
  `.keras`, ONNX and LiteRT: each file's size and CPU latency at batch 1 and
  32 against the SavedModel's (`benchmarks/export_formats.py`).

Writes ``summary.json`` and ``summary.md`` to ``--output`` (default
``benchmarks/results``); the markdown records the command. ``--quick`` sizes
everything to finish in a few minutes on 2 CPU cores::

    CUDA_VISIBLE_DEVICES=-1 python -m benchmarks --quick
    CUDA_VISIBLE_DEVICES=-1 python -m benchmarks --sections=augmentation,probe --saved_model=DIR

The scripts it draws on stay runnable on their own
(``python benchmarks/methods_throughput.py``, ``python -m benchmarks.augmentation``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time

SECTIONS = ("methods", "augmentation", "probe", "extraction", "export", "vit", "mae",
            "export_formats")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _log(message):
    print(f"[benchmarks] {message}", file=sys.stderr, flush=True)


def methods_section(args, workdir):
    """Runs methods_throughput.py; returns its rows."""
    from benchmarks import methods_throughput

    out = os.path.join(workdir, "methods")
    methods_throughput.main([
        f"--methods={args.methods}", f"--batch_size={args.batch_size}",
        f"--steps={args.steps}", f"--repeats={args.repeats}", f"--output_dir={out}",
    ])
    with open(os.path.join(out, "methods_throughput.json")) as f:
        return json.load(f)


def vit_section(args, workdir):
    """Runs vit_speed.py (ViT-S/16 at 224 px against plain Keras); returns its result."""
    from benchmarks import vit_speed

    out = os.path.join(workdir, "vit")
    vit_speed.main([f"--batch_size={4 if args.quick else 8}", f"--steps={args.steps}",
                    f"--repeats={args.repeats}", f"--output_dir={out}"])
    with open(os.path.join(out, "vit_speed.json")) as f:
        return json.load(f)


def mae_section(args, workdir):
    """Runs mae_speed.py (ViT-S/16 at 224 px, 75% masked against none); returns its result."""
    from benchmarks import mae_speed

    out = os.path.join(workdir, "mae")
    mae_speed.main([f"--batch_size={4 if args.quick else 8}", f"--steps={args.steps}",
                    f"--repeats={args.repeats}", f"--output_dir={out}",
                    *(["--decoders=4x256"] if args.quick else [])])
    with open(os.path.join(out, "mae_speed.json")) as f:
        return json.load(f)


def export_formats_section(args, workdir):
    """Runs export_formats.py (sizes and latency of every export format); returns its result."""
    from benchmarks import export_formats

    out = os.path.join(workdir, "export_formats")
    export_formats.main([f"--rounds={args.repeats if args.quick else 7}",
                         f"--calls={16 if args.quick else 64}", f"--output_dir={out}"])
    with open(os.path.join(out, "export_formats.json")) as f:
        return json.load(f)


def augmentation_section(args):
    from benchmarks import augmentation

    return augmentation.measure(
        [s for s in args.stacks.split(",") if s], image_size=32, images=args.augment_images,
        rounds=args.repeats, batch_size=256,
    )


def trained_model(args, workdir):
    """A Rotation run of `--train_steps` steps on synthetic_shapes/TCV- (the quickstart's config)."""
    model_dir = os.path.join(workdir, "run")
    command = [
        sys.executable, "-m", "keras_ssl.cli.train", "--gin_file=gin_configs/quickstart.gin",
        f"--model_dir={model_dir}", f"--gin_bindings=keras_ssl.train.train_steps = {args.train_steps}",
        f"--gin_bindings=keras_ssl.train.steps_per_loop = {min(50, args.train_steps)}",
        f"--gin_bindings=keras_ssl.learning_rate_schedule.warmup_steps = {max(1, args.train_steps // 10)}",
    ]
    _log(f"training the model for the probe: {shlex.join(command)}")
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return model_dir


def _size_bytes(path):
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(path) for name in names)


def export_section(model_dir, workdir):
    """Times `export_checkpoint` of the run's last step (model building included)."""
    from keras_ssl.export import export_checkpoint
    from keras_ssl.run_dir import available_steps

    step = max(available_steps(model_dir))
    destination = os.path.join(workdir, "export_timed")
    start = time.perf_counter()
    export_checkpoint(model_dir, step, destination)
    seconds = time.perf_counter() - start
    variables = _size_bytes(os.path.join(destination, "variables"))
    return {"step": step, "seconds": seconds, "saved_model_bytes": _size_bytes(destination),
            "variables_bytes": variables, "path": destination}


def probe_section(args, saved_model):
    from benchmarks import eval_solvers

    features = argparse.Namespace(
        features="", saved_model=saved_model, dataset=args.dataset, layer=args.layer,
        max_train_examples=args.max_train_examples, max_test_examples=args.max_test_examples,
    )
    x, y, xt, yt, description = eval_solvers.real_features(features)
    result = eval_solvers.probe_benchmark(
        x, y, xt, yt, mlp_epochs=args.mlp_epochs, sgd_epochs=args.sgd_epochs, repeats=args.repeats)
    result["features"] = description
    return result


def extraction_section(args, saved_model):
    """One pass for every end-point against one pass per end-point, on the real model."""
    import numpy as np

    from keras_ssl_eval.reading.savedmodel import load_representation_model

    model = load_representation_model(saved_model)
    size = int(model.input_size[0]) if getattr(model, "input_size", None) else 32
    images = np.random.default_rng(0).uniform(
        size=[args.extract_images, size, size, 3]).astype(np.float32)
    layers = list(model.endpoint_names)
    model.extract(images[:64], layers, batch_size=64)  # warm-up: tracing
    one, per = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        model.extract(images, layers, batch_size=64)
        one.append(time.perf_counter() - start)
        start = time.perf_counter()
        for layer in layers:
            model.extract(images, [layer], batch_size=64)
        per.append(time.perf_counter() - start)
    return {"layers": layers, "num_images": len(images), "one_pass_seconds": min(one),
            "per_layer_seconds": min(per), "speedup": min(per) / min(one)}


# ------------------------------------------------------------------ report
def markdown(result) -> str:
    lines = ["# Benchmarks", "", f"Command: `{result['command']}`", "",
             f"Machine: {result['machine']}. Every figure is a ratio of two timings taken in "
             f"this one run (medians over alternating rounds where stated), so load from other "
             f"processes moves the ratios far less than the absolute numbers.", ""]
    sections = result["sections"]
    if "methods" in sections:
        m = sections["methods"]
        lines += ["## Training step against the bare backbone (the compute limit)", "",
                  m["setting"], "",
                  "| method | images/s | x bare backbone forward + backward (median, min-max) |",
                  "| --- | ---: | ---: |"]
        for r in m["results"]:
            spread = (f" ({r['relative_min']:.2f}-{r['relative_max']:.2f})"
                      if "relative_min" in r else "")
            lines.append(f"| {r['method']} | {r['images_per_second']:.1f} | "
                         f"{r['relative']:.2f}{spread} |")
        lines.append("")
    if "augmentation" in sections:
        consumed = None
        if "methods" in sections:
            consumed = sections["methods"]["results"][0]["images_per_second"]
        lines += ["## Augmentation: views/s per stack", "",
                  "synthetic_shapes 32 px, two views per image, batches of 256. `plain`: the same "
                  "transforms written as a tf.data user would (tf.image ops, stateful draws, "
                  "`tf.cond`), unseeded. `consumed`: the bare backbone's training images/s above, "
                  "what the model can take.", "",
                  "| stack | keras_ssl views/s | plain views/s | x plain (median, min-max) |"
                  " x consumed |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for name, e in sections["augmentation"].items():
            versus = f"{e['keras_ssl'] / consumed:.1f}" if consumed else "-"
            lines.append(f"| {name} | {e['keras_ssl']:.0f} | {e['plain']:.0f} | {e['ratio']:.2f} "
                         f"({min(e['ratios']):.2f}-{max(e['ratios']):.2f}) | {versus} |")
        lines.append("")
    if "probe" in sections:
        p = sections["probe"]
        rows, ratios = p["rows"], p["ratios"]
        lines += ["## Linear probe against SGD and scikit-learn", "",
                  f"Features: {p['features']}; {p['setup']['n_train']} train x "
                  f"{p['setup']['dim']} features, {p['setup']['n_test']} test, "
                  f"{p['setup']['classes']} classes.", "",
                  "| solver | seconds | test accuracy (%) |", "| --- | ---: | ---: |"]
        names = {"probe_grid": "probe, whole l2 grid", "probe_chosen_l2": "probe, chosen l2",
                 "sklearn_lbfgs": "scikit-learn lbfgs, chosen l2",
                 "sgd_linear": "SGD linear head", "sgd_mlp": "SGD MLP head", "knn": "kNN"}
        for key, label in names.items():
            row = rows.get(key)
            if row is None:
                lines.append(f"| {label} | - | not installed (optional dependency) |")
            else:
                lines.append(f"| {label} | {row['seconds']:.2f} | {100 * row['test_accuracy']:.1f} |")
            if key == "sgd_linear":
                lines += [f"| SGD linear head, {longer['epochs']} epochs (to match the probe) | "
                          f"{longer['seconds']:.2f} | {100 * longer['test_accuracy']:.1f} |"
                          for longer in rows.get("sgd_longer", [])]
        lines += ["", "Probe and SGD linear head: fastest of alternating rounds; "
                  "sgd_seconds_per_probe_grid_second is the median of the per-round ratios. "
                  "The longer SGD schedules stop once within 0.5 points of the probe.", "",
                  "Ratios: " + ", ".join(f"{k} = {v:.2f}" for k, v in ratios.items()), ""]
    if "extraction" in sections:
        e = sections["extraction"]
        lines += ["## Feature extraction", "",
                  f"{e['num_images']} images, end-points {', '.join(e['layers'])}: one pass "
                  f"{e['one_pass_seconds']:.2f} s, one pass per end-point "
                  f"{e['per_layer_seconds']:.2f} s: one pass is {e['speedup']:.1f}x faster.", ""]
    if "export" in sections:
        e = sections["export"]
        lines += ["## Export", "",
                  f"Exporting the checkpoint of step {e['step']} (model rebuilt from its gin "
                  f"config, SavedModel with both signatures): {e['seconds']:.1f} s; SavedModel "
                  f"{e['saved_model_bytes'] / 2**20:.2f} MiB, of which variables "
                  f"{e['variables_bytes'] / 2**20:.2f} MiB.", ""]
    if "vit" in sections:
        from benchmarks import vit_speed

        lines += ["## ViT-S/16 training step against the same network in plain Keras", "",
                  vit_speed.markdown(sections["vit"])]
    if "mae" in sections:
        from benchmarks import mae_speed

        lines += ["## MAE: the step with 75% of the patches masked against none", "",
                  mae_speed.markdown(sections["mae"])]
    if "export_formats" in sections:
        from benchmarks import export_formats

        lines += ["## Export formats: size and CPU latency against the SavedModel", "",
                  export_formats.markdown(sections["export_formats"])]
    for note in result.get("notes", []):
        lines.append(f"Note: {note}")
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--quick", action="store_true",
                        help="sizes for a few minutes on 2 CPU cores (fewer rounds, steps, images)")
    parser.add_argument("--output", default=os.path.join("benchmarks", "results"))
    parser.add_argument("--methods", default="rotation,simclr,moco,npid")
    parser.add_argument("--stacks", default="none,flip,crop_flip,simclr_imagenet,simclr_cifar,moco_v2,randaugment")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round")
    parser.add_argument("--repeats", type=int, default=None, help="alternating rounds")
    parser.add_argument("--augment_images", type=int, default=None)
    parser.add_argument("--saved_model", default="", help="default: train one here")
    parser.add_argument("--train_steps", type=int, default=None)
    parser.add_argument("--dataset", default="synthetic_shapes/TCV-")
    parser.add_argument("--layer", default="block2")
    parser.add_argument("--max_train_examples", type=int, default=None)
    parser.add_argument("--max_test_examples", type=int, default=None)
    parser.add_argument("--sgd_epochs", type=int, default=70)
    parser.add_argument("--mlp_epochs", type=int, default=None)
    parser.add_argument("--extract_images", type=int, default=None)
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = dict(steps=(3, 5), repeats=(3, 5), augment_images=(1024, 4096),
                    train_steps=(100, 1000), max_train_examples=(500, 2000),
                    max_test_examples=(300, 1000), mlp_epochs=(10, 70), extract_images=(256, 1024))
    for name, (small, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")

    import tensorflow as tf

    result = {
        "command": "python -m benchmarks " + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": (f"{'GPU' if tf.config.list_physical_devices('GPU') else 'CPU'} "
                    f"({os.cpu_count()} logical cores visible, {platform.machine()}), "
                    f"TensorFlow {tf.__version__}"),
        "settings": vars(args), "sections": {}, "notes": [],
    }
    with tempfile.TemporaryDirectory() as workdir:
        started = time.perf_counter()
        saved_model = args.saved_model
        needs_model = {"probe", "extraction", "export"} & set(sections)
        if needs_model and (not saved_model or "export" in sections):
            model_dir = trained_model(args, workdir)
            export = export_section(model_dir, workdir)
            if "export" in sections:
                result["sections"]["export"] = {k: v for k, v in export.items() if k != "path"}
            saved_model = saved_model or export["path"]
        if "probe" in sections:
            _log("probe")
            probe = probe_section(args, saved_model)
            if probe["rows"].get("sklearn_lbfgs") is None:
                result["notes"].append("scikit-learn is not installed: its row is skipped.")
            result["sections"]["probe"] = probe
        if "extraction" in sections:
            _log("extraction")
            result["sections"]["extraction"] = extraction_section(args, saved_model)
        # After the export: the randaugment stack imports Model Garden, whose gin
        # configurables (build_optimizer) would make the run's config ambiguous.
        if "methods" in sections:
            _log("methods")
            result["sections"]["methods"] = methods_section(args, workdir)
        if "augmentation" in sections:
            _log("augmentation")
            result["sections"]["augmentation"] = augmentation_section(args)
        if "vit" in sections:
            _log("vit")
            result["sections"]["vit"] = vit_section(args, workdir)
        if "mae" in sections:
            _log("mae")
            result["sections"]["mae"] = mae_section(args, workdir)
        if "export_formats" in sections:
            _log("export_formats")
            result["sections"]["export_formats"] = export_formats_section(args, workdir)
        result["seconds"] = time.perf_counter() - started
    text = markdown(result)
    if args.output:
        os.makedirs(args.output, exist_ok=True)
        with open(os.path.join(args.output, "summary.json"), "w") as f:
            json.dump(result, f, indent=2, default=str)
        with open(os.path.join(args.output, "summary.md"), "w") as f:
            f.write(text)
    print(text)
    return result


if __name__ == "__main__":
    main()
