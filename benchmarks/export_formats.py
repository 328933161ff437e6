"""Size on disk and CPU latency of each export format, against the SavedModel of the same export.

The quickstart's network (gin_configs/quickstart.gin: Rotation on ResNet-10 v2,
k = 1, small-image stem, 32-px images) at its random initialisation (0
training steps: the weights' values do not change the sizes or the
arithmetic timed here) is exported once with every format
(`keras_ssl.export.export_backbone(formats=saved_model,keras,onnx,litert)`);
each artifact is then run as its users run it, on the same images:

- `saved_model`: `tf.saved_model.load(...).signatures["representation"]`;
- `keras (tf.function)`: `keras.saving.load_model(safe_mode=True)` called in a
  `tf.function` (what `model.predict` compiles); `keras (eager)`: the model
  called directly;
- `onnx`: an onnxruntime `InferenceSession` (CPU provider, default threads);
- `litert`: ai-edge-litert's `Interpreter` (`num_threads` = the CPUs) through
  its `representation` signature runner.

Every runtime computes all end-points. Latency is the time of one call at
batch 1 and at batch 32: `--calls` calls per round, `--rounds` rounds with the
formats in turn, so drift hits all of them alike; the ratio to the SavedModel
is taken within each round, then the median and range over rounds are
reported. Sizes: the SavedModel's own files (`saved_model.pb`, `variables/`,
`assets/`, `fingerprint.pb`), and each artifact file.

    python benchmarks/export_formats.py --output_dir=benchmarks/results
    python -m benchmarks --sections=export_formats

Writes `export_formats.json` and `export_formats.md` to --output_dir and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "gin_configs", "quickstart.gin")
IMAGE_SIZE = 32
BATCHES = (1, 32)
# What the SavedModel's size counts: the contract's own files, not the other formats.
_SAVED_MODEL_PARTS = ("saved_model.pb", "variables", "assets", "fingerprint.pb")


def _size_bytes(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(path) for name in names)


def quickstart_backbone():
    """The quickstart's backbone at random initialisation, built from its gin config."""
    from keras_ssl import config
    from keras_ssl.building import TRAINING_CONFIGURABLES, build_method

    # The training loop's bindings (steps, optimizer) are not needed to build the model.
    skip = [name for full in TRAINING_CONFIGURABLES for name in (full, full.rsplit(".", 1)[-1])]
    config.parse_gin([QUICKSTART], skip_unknown=skip)
    try:
        return build_method().backbone
    finally:
        config.parse_gin()


def runners(path):
    """`{format: fn(images) -> outputs}` for the artifacts of the export at `path`."""
    import keras
    import numpy as np
    import onnxruntime
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    saved_model = tf.saved_model.load(path).signatures["representation"]
    model = keras.saving.load_model(os.path.join(path, "backbone.keras"), safe_mode=True,
                                    compile=False)
    compiled = tf.function(lambda images: model(images, training=False))
    session = onnxruntime.InferenceSession(os.path.join(path, "backbone.onnx"),
                                           providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    interpreter = Interpreter(model_path=os.path.join(path, "backbone.tflite"),
                              num_threads=os.cpu_count())
    litert = interpreter.get_signature_runner("representation")

    def numpy_of(outputs):  # every runtime's work has finished before the clock stops
        return {k: np.asarray(v) for k, v in outputs.items()}

    return {
        "saved_model": lambda x: numpy_of(saved_model(images=tf.constant(x))),
        "keras (tf.function)": lambda x: numpy_of(compiled(tf.constant(x))),
        "keras (eager)": lambda x: numpy_of(model(x, training=False)),
        "onnx": lambda x: dict(zip([o.name for o in session.get_outputs()],
                                   session.run(None, {input_name: x}))),
        "litert": lambda x: litert(images=x),
    }


def measure(path, *, rounds, calls, warmup=3) -> dict:
    """Per batch size and format: seconds per call per round, and ratios to the SavedModel."""
    import numpy as np

    result = {}
    for batch_size in BATCHES:
        images = np.random.default_rng(0).uniform(
            size=[batch_size, IMAGE_SIZE, IMAGE_SIZE, 3]).astype(np.float32)
        run = runners(path)
        reference = run["saved_model"](images)
        differences = {}
        for name, fn in run.items():
            for _ in range(warmup):
                outputs = fn(images)
            differences[name] = max(float(np.abs(np.asarray(outputs[k]) - reference[k]).max())
                                    for k in reference)
        count = max(1, calls // batch_size) if batch_size > 1 else calls
        seconds = {name: [] for name in run}
        for round_index in range(rounds):
            # Rotate the order each round: no format always runs first (or last).
            order = list(run)[round_index % len(run):] + list(run)[:round_index % len(run)]
            for name in order:
                start = time.perf_counter()
                for _ in range(count):
                    run[name](images)
                seconds[name].append((time.perf_counter() - start) / count)
        rows = {}
        for name, values in seconds.items():
            ratios = np.array(values) / np.array(seconds["saved_model"])
            rows[name] = dict(
                seconds_median=float(np.median(values)), seconds_min=float(np.min(values)),
                seconds_max=float(np.max(values)), ratio_median=float(np.median(ratios)),
                ratio_min=float(ratios.min()), ratio_max=float(ratios.max()),
                max_abs_difference=differences[name], seconds=values)
        result[str(batch_size)] = dict(calls_per_round=count, rows=rows)
    return result


def sizes(path) -> dict:
    saved_model = sum(_size_bytes(os.path.join(path, part)) for part in _SAVED_MODEL_PARTS
                      if os.path.exists(os.path.join(path, part)))
    found = {"saved_model": saved_model}
    for name, file in (("keras", "backbone.keras"), ("onnx", "backbone.onnx"),
                       ("litert", "backbone.tflite")):
        found[name] = _size_bytes(os.path.join(path, file))
    return found


def markdown(result) -> str:
    """The setting, the size table and the latency table, as `export_formats.md` holds them."""
    lines = [
        f"{result['model']}; {result['machine']} ({result['cpus']} logical CPUs), TensorFlow "
        f"{result['tensorflow']}, Keras {result['keras']}, onnxruntime {result['onnxruntime']}, "
        f"ai-edge-litert {result['litert']}, tf2onnx {result['tf2onnx']} (opset "
        f"{result['opset']}). Latency: milliseconds per call (median over {result['rounds']} rounds, "
        f"min-max), every end-point computed; ratio to the SavedModel taken within each round "
        f"(median, min-max); below 1 is faster. Export with all four formats: "
        f"{result['export_seconds']:.1f} s.",
        "",
        "| format | size (KiB) | x SavedModel size |",
        "| --- | ---: | ---: |",
    ]
    base = result["sizes"]["saved_model"]
    for name, size in result["sizes"].items():
        lines.append(f"| {name} | {size / 1024:.0f} | {size / base:.2f} |")
    lines += ["", "| format | batch | ms per call (median, min-max) | x SavedModel (median, "
              "min-max) | max abs difference from the SavedModel |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for batch_size, entry in result["latency"].items():
        for name, row in entry["rows"].items():
            lines.append(
                f"| {name} | {batch_size} | {1e3 * row['seconds_median']:.2f} "
                f"({1e3 * row['seconds_min']:.2f}-{1e3 * row['seconds_max']:.2f}) | "
                f"{row['ratio_median']:.2f} ({row['ratio_min']:.2f}-{row['ratio_max']:.2f}) | "
                f"{row['max_abs_difference']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=64,
                        help="calls per round at batch 1 (batch 32: calls / 32, at least 1)")
    parser.add_argument("--output_dir", default=".")
    args = parser.parse_args(argv)

    import ai_edge_litert
    import keras
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    from keras_ssl import export, export_formats

    keras.utils.set_random_seed(0)
    backbone = quickstart_backbone()
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        path = export.export_backbone(backbone, os.path.join(workdir, "quickstart"),
                                      {"name": "quickstart@0", "steps": 0}, IMAGE_SIZE,
                                      formats=list(export_formats.FORMATS))
        export_seconds = time.perf_counter() - start
        found_sizes = sizes(path)
        latency = measure(path, rounds=args.rounds, calls=args.calls)
    result = dict(
        model=("The quickstart's ResNet-10 v2 (k = 1, small-image stem, 32 px, 128-d pre-logits; "
               "gin_configs/quickstart.gin) at random initialisation (0 training steps)"),
        machine=platform.processor() or platform.machine(), cpus=os.cpu_count(),
        tensorflow=tf.__version__, keras=keras.__version__, onnxruntime=onnxruntime.__version__,
        litert=getattr(ai_edge_litert, "__version__", "?"), tf2onnx=tf2onnx.__version__,
        opset=export_formats.ONNX_OPSET, rounds=args.rounds, calls=args.calls,
        export_seconds=export_seconds, sizes=found_sizes, latency=latency,
    )
    table = markdown(result)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "export_formats.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(args.output_dir, "export_formats.md"), "w") as f:
        f.write(table)
    print(table)
    return result


if __name__ == "__main__":
    main()
