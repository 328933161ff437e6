"""The scale-out checks: 2 mirrored CPU replicas train like one device; the step lowers to XLA.

`check_replicas(method, **settings)` runs both for one method and raises
`AssertionError` on a failure; `replica_reports` runs them for many methods
in a few processes and returns the measurements. Each process is this
module run as a program, because logical devices must be configured before
TensorFlow starts:

    python -m keras_ssl.testing.replicas MODE SETTINGS_FILE FAMILY METHOD...

MODE is `replicas`, `xla`, `jit`, a comma-separated list of them, or `all`
(`replicas,xla`); METHOD a registered name or
`module:Class`; SETTINGS_FILE a pickle of `{METHOD: constructor arguments}`
over the tiny ones; FAMILY the tiny backbone's family (`-`: the method's
`required_backbone`, else `resnet_v2`). It prints one JSON
line `{METHOD: {mode: report}}`.

The method is built on the tiny ResNet with synchronized batch norm (or the
tiny backbone of another family, synchronized where it has batch norm); its
inputs are seeded per example (`Method.make_dataset`), so both runs see the
same views. Its ReLUs (backbone and heads) compute GELU in this check: a
sum split over replicas rounds differently in the last bit, and where a
pre-activation lies within that rounding of zero, a ReLU passes the
gradient on one run and blocks it on the other. One such element moved a
tiny PIRL's weights 4e-4 from one device in two steps, on 4 of 6 seeds;
with a smooth activation all 6 agree to 6e-7. The check is about what the
replicas compute together (gathers, sums, banks, queues, EMA copies), which
the activation does not touch.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import pickle
import subprocess
import sys
import tempfile

__all__ = ["BATCH", "REPLICA_TOLERANCE", "assert_replica_report", "assert_xla_report", "build_on",
           "check_replicas", "max_difference", "replica_reports", "state", "strategies",
           "use_two_cpus"]

# The tiny split has 8 examples: one global batch, 4 rows per replica.
BATCH = 8
STEPS = 2
# Two replicas agree with one device to this after `STEPS` steps (docs/scaling.md):
# a sum split over replicas rounds differently, and the rounding grows each step.
REPLICA_TOLERANCE = 1e-5
# A process traces methods one after another; 1200 s covered half the registry.
_TIMEOUT_SECONDS = 2400


def use_two_cpus() -> None:
    """Splits the CPU into 2 logical devices; call before TensorFlow creates any."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


@functools.cache
def strategies():
    """`(one device, 2 mirrored CPUs)`, one instance each per process.

    A second MirroredStrategy's collectives clash with those of the first.
    """
    import tensorflow as tf

    return (tf.distribute.OneDeviceStrategy("/cpu:0"),
            tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))


def _method(spec: str):
    """A registered name as it is; `module:Class` imported."""
    if ":" not in spec:
        return spec
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def _backbone(method, family: str | None):
    """The method's tiny backbone (`tiny_backbone_for`), its batch norm synchronized where it can be."""
    import inspect

    from keras_ssl.registry import BACKBONES
    from keras_ssl.testing.tiny import tiny_backbone, tiny_family

    family, required = tiny_family(method, family)
    if "synchronized_bn" in inspect.signature(BACKBONES.get(family)).parameters:
        required["synchronized_bn"] = True
    return tiny_backbone(family, **required)


def build_on(method, strategy, weights=None, family: str | None = None, **settings):
    """The tiny method built under `strategy` (with `weights`, if given), compiled, not trained.

    Returns:
      `(method, (strategy, batches, metric names, global step))`.
    """
    import keras
    import orbit

    from keras_ssl.testing.tiny import build_tiny_method, tiny_examples

    examples = tiny_examples(method, BATCH, **settings)
    with strategy.scope():
        instance = build_tiny_method(method, backbone=_backbone(method, family), **settings)
        _smooth_relus(instance)
        instance.adapt(examples)
        batches = instance.make_dataset(examples, BATCH).repeat()
        _, metrics = instance.compute_pretext_loss(next(iter(batches)), training=False)
        if weights is not None:
            instance.set_weights(weights)
        instance.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
        instance.optimizer.build(instance.trainable_variables)
        step = orbit.utils.create_global_step()
    return instance, (strategy, batches, metrics, step)


def _smooth_relus(method) -> None:
    """Makes every ReLU of `method` (layers and activations of its layers) compute GELU.

    See the module's docstring: a ReLU's kink turns a last-bit difference into
    a different gradient.
    """
    import keras

    for layer in method._flatten_layers():
        if isinstance(layer, keras.layers.ReLU):
            layer.call = keras.activations.gelu
        elif getattr(layer, "activation", None) is keras.activations.relu:
            layer.activation = keras.activations.gelu


def _steps(instance, setup, steps, jit_compile=False):
    """Runs `steps` Orbit steps of a `build_on` method; returns the trainer's outputs."""
    import tensorflow as tf

    from keras_ssl.training import MethodTrainer

    strategy, batches, metrics, step = setup
    trainer = MethodTrainer(
        instance, batches, strategy, step, ["loss", "regularization_loss", *metrics], BATCH, steps,
        jit_compile=jit_compile, verbose=False,
    )
    return trainer.train(tf.constant(steps))


def state(instance):
    """`{position: (path, value)}` of every variable of the method and its optimizer."""
    import numpy as np

    variables = instance.variables + instance.optimizer.variables
    return {i: (v.path, np.asarray(v.numpy())) for i, v in enumerate(variables)}


def max_difference(a, b):
    """`(largest absolute difference, the variable it is in)` over two `_state`s.

    Relative to the variable's size where that exceeds 1 (NPID's Z is ~1e6).
    """
    import numpy as np

    differences = [
        (float(np.max(np.abs(x.astype(np.float64) - b[k][1])) / max(1.0, np.max(np.abs(x)))), path)
        for k, (path, x) in a.items() if x.size
    ]
    return max(differences, default=(0.0, None))


def _backbone_state(instance):
    import numpy as np

    return {i: (v.path, np.array(v.numpy())) for i, v in enumerate(instance.backbone.variables)}


def _replicas(method, built, settings, family):
    """`STEPS` steps on 2 mirrored CPUs against the one-device `built`, from its initial weights."""
    single, setup = built
    weights, initial_backbone = single.get_weights(), _backbone_state(single)
    single_out = _steps(single, setup, STEPS)
    mirrored, mirrored_setup = build_on(method, strategies()[1], weights, family, **settings)
    mirrored_out = _steps(mirrored, mirrored_setup, STEPS)
    single_state, mirrored_state = state(single), state(mirrored)
    return {
        "replicas": mirrored_setup[0].num_replicas_in_sync,
        "variables": len(single_state),
        "same_structure": [x.shape for _, x in single_state.values()]
        == [x.shape for _, x in mirrored_state.values()],
        "backbone_change": max_difference(initial_backbone, _backbone_state(single))[0],
        "max_state_difference": max_difference(single_state, mirrored_state),
        "max_metric_difference": max(
            abs(single_out[k] - mirrored_out[k]) for k in single_out if k != "images_per_second"
        ),
    }


def _xla(method, built, settings, family):
    """Lowers the replica step to XLA HLO, where a TPU's compilation fails if it will.

    Unsupported ops and dynamic shapes fail here; LLVM code generation for
    the CPU, the slow part of `jit_compile`, is skipped.
    """
    import tensorflow as tf

    del family
    instance, (_, batches, _, _) = built
    batch = next(iter(batches))
    hlo = tf.function(instance.train_step, jit_compile=True).experimental_get_compiler_ir(batch)(
        stage="hlo")
    return {"hlo_bytes": len(hlo)}


def _jit(method, built, settings, family):
    """One step jit-compiled end to end through the trainer (CPU code generation: slow)."""
    import numpy as np

    del built
    instance, setup = build_on(method, strategies()[0], family=family, **settings)
    outputs = _steps(instance, setup, 1, jit_compile=True)
    return {"jit_loss_finite": bool(np.isfinite(outputs["loss"]))}


_MODES = {"replicas": _replicas, "xla": _xla, "jit": _jit}
# What `all` runs: the jit run compiles for the CPU, too slow to run for every method.
_ALL = ("replicas", "xla")


def _run(mode: str, specs: list[str], settings: dict, family: str | None = None) -> dict:
    """`{spec: {mode: report}}` in this (2-CPU) process; a failure is reported, not raised."""
    import keras

    modes = {name: _MODES[name] for name in (_ALL if mode == "all" else mode.split(","))}
    reports = {}
    for spec in specs:
        method, method_settings = _method(spec), settings.get(spec, {})
        built = None
        for name, run in modes.items():
            try:
                if built is None:
                    # One build serves both checks: lowering to HLO needs the
                    # variables, not their values, so the trained one-device
                    # method lowers as well as a fresh one.
                    keras.utils.set_random_seed(0)
                    built = build_on(method, strategies()[0], family=family, **method_settings)
                report = run(method, built, method_settings, family)
            except Exception as e:  # reported per method, so one failure does not hide the rest
                report = {"error": f"{type(e).__name__}: {str(e)[:2000]}"}
            reports.setdefault(spec, {})[name] = report
    return reports


def _spec(method) -> str:
    """A registered name as it is; a class as `module:Class` for the child process."""
    return method if isinstance(method, str) else f"{method.__module__}:{method.__qualname__}"


def replica_reports(methods, mode: str = "all", processes: int = 2, settings=None,
                    family: str | None = None) -> dict:
    """Runs the checks of `mode` for each method, spread over `processes` child processes.

    Args:
      methods: Registered names or `keras_ssl.Method` subclasses importable by
        their module path.
      mode: `replicas`, `xla`, `jit`, a comma-separated list, or `all`.
      processes: Child processes run at once (tracing is single-threaded).
      settings: `{method: constructor arguments over its tiny settings}`.
      family: The tiny backbone's family (`tiny_backbone_for`; None: each
        method's `required_backbone`, else `resnet_v2`).

    Returns:
      `{method spec: {mode: report}}`: each report the measurements, or
      `{"error": ...}` where the check could not run.
    """
    specs = [_spec(m) for m in methods]
    by_spec = {_spec(m): dict(s) for m, s in (settings or {}).items()}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1")
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "settings.pickle")
        with open(path, "wb") as f:
            pickle.dump(by_spec, f)
        children = [
            subprocess.Popen([sys.executable, "-m", __name__, mode, path, family or "-", *part],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for part in (specs[i::processes] for i in range(processes)) if part
        ]
        reports = {}
        try:
            for child in children:
                out, err = child.communicate(timeout=_TIMEOUT_SECONDS)
                if child.returncode != 0:
                    raise AssertionError(f"the replica check's process failed:\n{out}{err}")
                reports.update(json.loads(out.strip().splitlines()[-1]))
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
    return reports


def assert_replica_report(name: str, report: dict) -> None:
    """Fails unless two replicas trained like one device (a `replicas` report)."""
    assert "error" not in report, f"{name}: {report.get('error')}"
    assert report["replicas"] == 2 and report["same_structure"], f"{name}: {report}"
    assert report["backbone_change"] > 1e-3, f"{name}: the steps did not train the backbone"
    difference, variable = report["max_state_difference"]
    assert difference < REPLICA_TOLERANCE, (
        f"{name}: {variable} differs by {difference} between 2 replicas and one device")
    assert report["max_metric_difference"] < REPLICA_TOLERANCE, f"{name}: {report}"


def assert_xla_report(name: str, report: dict) -> None:
    """Fails unless the step lowered to XLA (an `xla` report)."""
    assert "error" not in report, f"{name}: the step does not lower to XLA: {report.get('error')}"
    assert report["hlo_bytes"] > 0, f"{name}: {report}"


def check_replicas(method, *, family: str | None = None, **settings) -> None:
    """2 mirrored CPU replicas train `method` like one device, and its step lowers to XLA.

    Two steps from the same weights: every variable of the method and its
    optimizer (weights, queues, banks, EMA copies) and every metric agree to
    `REPLICA_TOLERANCE`. Runs in a child process (about a minute).

    Args:
      method: A registered name or a `keras_ssl.Method` subclass importable
        by its module path.
      family: The tiny backbone's family (None: see `tiny_backbone_for`).
      **settings: Constructor arguments over the method's tiny settings.
    """
    spec = _spec(method)
    report = replica_reports([method], "all", 1, {method: settings}, family)[spec]
    assert_replica_report(spec, report["replicas"])
    assert_xla_report(spec, report["xla"])


def main(argv) -> None:
    use_two_cpus()
    mode, path, family, specs = argv[1], argv[2], argv[3], argv[4:]
    with open(path, "rb") as f:
        settings = pickle.load(f)
    print(json.dumps(_run(mode, specs, settings, None if family == "-" else family)))


if __name__ == "__main__":
    main(sys.argv)
