"""Runs every registered method's training step the ways the scale-out promise needs.

    python registry_steps.py replicas METHOD...   # 2 mirrored CPUs against one device
    python registry_steps.py xla METHOD...        # the replica step lowered to XLA
    python registry_steps.py all METHOD...        # both, in one TensorFlow start-up

Prints one JSON line `{method: report}` (with `all`, `{method: {mode: report}}`).
Runs in its own process: logical
devices must be configured before TensorFlow starts. Each method is built on
the tiny ResNet of `tiny.py` with synchronized batch norm and the method's
tiny settings there; its inputs are seeded per example (`Method.make_dataset`),
so both runs see the same views.
"""

import json
import os
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import orbit  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny import build_tiny_method, tiny_backbone, tiny_examples  # noqa: E402

from keras_ssl.training import MethodTrainer  # noqa: E402

BATCH = 8  # the tiny split has 8 examples: one global batch, 4 rows per replica
STEPS = int(os.environ.get("REGISTRY_STEPS", 2))
# One instance of each for the whole process: collectives of a second
# MirroredStrategy clash with those of the first.
ONE_DEVICE = tf.distribute.OneDeviceStrategy("/cpu:0")
MIRRORED = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


# Per-method settings a test adds to the tiny ones (JSON `{method: {arg: value}}`).
OVERRIDES = json.loads(os.environ.get("KERAS_SSL_TEST_OVERRIDES", "{}"))


def _build(name, strategy, weights):
    """The method built under `strategy` (with `weights`, if given), compiled, not yet trained."""
    examples = tiny_examples(name, BATCH)
    with strategy.scope():
        method = build_tiny_method(
            name, backbone=tiny_backbone(synchronized_bn=True), **OVERRIDES.get(name, {})
        )
        method.adapt(examples)
        batches = method.make_dataset(examples, BATCH).repeat()
        _, metrics = method.compute_pretext_loss(next(iter(batches)), training=False)
        if weights is not None:
            method.set_weights(weights)
        method.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
        method.optimizer.build(method.trainable_variables)
        step = orbit.utils.create_global_step()
    return method, (strategy, batches, metrics, step)


def _steps(method, setup, steps, jit_compile=False):
    """Runs `steps` Orbit steps of a `_build` method; returns the trainer's outputs."""
    strategy, batches, metrics, step = setup
    trainer = MethodTrainer(
        method, batches, strategy, step, ["loss", "regularization_loss", *metrics], BATCH, steps,
        jit_compile=jit_compile, verbose=False,
    )
    return trainer.train(tf.constant(steps))


def _train(name, strategy, weights, steps, jit_compile=False):
    method, setup = _build(name, strategy, weights)
    return method, _steps(method, setup, steps, jit_compile) if steps else {}


def _state(method):
    """`{position: (path, value)}` of every variable of the method and its optimizer."""
    variables = method.variables + method.optimizer.variables
    return {i: (v.path, np.asarray(v.numpy())) for i, v in enumerate(variables)}


def _max_difference(a, b):
    """`(largest absolute difference, the variable it is in)` over two `_state`s."""
    # Relative to the variable's size where that exceeds 1 (NPID's Z is ~1e6).
    differences = [
        (float(np.max(np.abs(x.astype(np.float64) - b[k][1])) / max(1.0, np.max(np.abs(x)))), path)
        for k, (path, x) in a.items() if x.size
    ]
    return max(differences, default=(0.0, None))


def _backbone_state(method):
    return {i: (v.path, np.array(v.numpy())) for i, v in enumerate(method.backbone.variables)}


def replicas(name, built=None):
    """Two steps on 2 mirrored CPUs against one device, from the same initial weights.

    Args:
      name: The registered method.
      built: Optional `_build(name, ONE_DEVICE, None)` output to train as the
        one-device run (built under seed 0).
    """
    if built is None:
        keras.utils.set_random_seed(0)
        built = _build(name, ONE_DEVICE, None)
    # The one-device run trains the method whose initial weights both runs start from.
    single, setup = built
    weights, initial_backbone = single.get_weights(), _backbone_state(single)
    single_out = _steps(single, setup, STEPS)
    mirrored, mirrored_out = _train(name, MIRRORED, weights, STEPS)
    single_state, mirrored_state = _state(single), _state(mirrored)
    return {
        "replicas": MIRRORED.num_replicas_in_sync,
        "variables": len(single_state),
        "same_structure": [x.shape for _, x in single_state.values()]
        == [x.shape for _, x in mirrored_state.values()],
        "backbone_change": _max_difference(initial_backbone, _backbone_state(single))[0],
        "max_state_difference": _max_difference(single_state, mirrored_state),
        "max_metric_difference": max(
            abs(single_out[k] - mirrored_out[k]) for k in single_out if k != "images_per_second"
        ),
    }


def xla(name, built=None):
    """Lowers the replica step to XLA HLO, where a TPU's compilation fails if it will.

    Unsupported ops and dynamic shapes fail here; LLVM code generation for
    the CPU, the slow part of `jit_compile`, is skipped. Rotation's step also
    runs jit-compiled, end to end through the trainer.

    Args:
      name: The registered method.
      built: Optional `_build` output (any strategy's) to lower instead of a new build.
    """
    if built is None:
        keras.utils.set_random_seed(0)
        built = _build(name, ONE_DEVICE, None)
    method, (_, batches, _, _) = built
    batch = next(iter(batches))
    hlo = tf.function(method.train_step, jit_compile=True).experimental_get_compiler_ir(batch)(
        stage="hlo")
    report = {"hlo_bytes": len(hlo)}
    if name == "rotation":
        _, outputs = _train(name, tf.distribute.get_strategy(), None, 1, jit_compile=True)
        report["jit_loss_finite"] = bool(np.isfinite(outputs["loss"]))
    return report


if __name__ == "__main__":
    mode, names = sys.argv[1], sys.argv[2:]
    modes = {"replicas": replicas, "xla": xla}
    runs = modes if mode == "all" else {mode: modes[mode]}
    reports = {}
    for name in names:
        built = None
        for run_mode, run in runs.items():
            try:
                if built is None:
                    # One build serves both checks: lowering to HLO needs the
                    # variables, not their values, so the trained one-device
                    # method lowers as well as a fresh one.
                    keras.utils.set_random_seed(0)
                    built = _build(name, ONE_DEVICE, None)
                report = run(name, built)
            except Exception as e:  # reported per method, so one failure does not hide the rest
                report = {"error": f"{type(e).__name__}: {str(e)[:2000]}"}
            reports.setdefault(name, {})[run_mode] = report
    print(json.dumps(reports if mode == "all" else {n: r[mode] for n, r in reports.items()}))
