"""The utility of pretraining (Newell & Deng 2020), as a pure function.

Given accuracies of a fine-tuned pretrained model ``a_ft(n)`` and of a model
trained from scratch ``a_scratch(n)`` at label budgets ``n``, ``n_hat(n)`` is
the number of labels the scratch model needs to match ``a_ft(n)`` (both curves
made monotone: running maximum over increasing n), read off the scratch curve,
interpolated linearly in accuracy against ``log n`` (where the curve is flat
at exactly ``a_ft(n)``, the tied budget closest to n counts). The utility is
``U(n) = n_hat / n - 1``: 0 when pretraining is worth nothing, 1 when it is
worth as many labels again as were given, negative when it hurts.

Outside the scratch curve ``n_hat`` is clipped and flagged: ``"above_scratch"``
when ``a_ft(n)`` exceeds the best scratch accuracy (``n_hat`` is the largest
scratch budget, so U is a lower bound), ``"below_scratch"`` when it is under
the scratch accuracy at the smallest budget (``n_hat`` is that budget, an
upper bound).

The ``utility`` protocol fine-tunes each model and the scratch model
(``UtilitySettings.scratch_model``) at every label budget and reports U(n):
results per model ``{"scratch_model", "budgets", "task", "metric",
"skipped_budgets", "finetuned_accuracy", "scratch_accuracy", "curve"}`` plus,
for classification, ``test_count``, ``finetuned_ci95`` and ``scratch_ci95``
(segmentation: ``layer`` and ``num_classes``); its plot is ``utility.png``.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from keras_ssl_eval.contract import METADATA_PATH
from keras_ssl_eval.probes.finetune import (default_dense_layer, finetune_curve,
                                            layer_decay_scales, load_arrays, segmentation_curve)
from keras_ssl_eval.protocols.base import ModelInput, Protocol, register, result_row
from keras_ssl_eval.reading.adapters import ModelSource
from keras_ssl_eval.reading.savedmodel import read_metadata
from keras_ssl_eval.reporting.tables import count_note, format_accuracy, table, union
from keras_ssl_eval.settings import UtilitySettings
from keras_ssl_eval.statistics import accuracy_interval

__all__ = ["UtilityProtocol", "labels_needed", "utility_curve"]

# A clipped n_hat as a bound on U(n), for the sweep's table.
_BOUNDS = {"above_scratch": "lower", "below_scratch": "upper"}


def labels_needed(target: float, scratch_budgets, scratch_accuracies, n: float | None = None):
    """Returns ``(n_hat, flag)``: labels the scratch model needs to reach `target`.

    Args:
        target: An accuracy.
        scratch_budgets: Label budgets of the scratch curve (positive).
        scratch_accuracies: Scratch accuracies at those budgets.
        n: The fine-tuned model's budget, used only to break ties: when
            several scratch budgets have exactly `target` (a flat stretch,
            common with small test sets), the one closest to `n` in log scale
            counts, so a curve identical to the scratch curve has utility 0.

    Returns:
        ``n_hat`` (float) and None, ``"above_scratch"`` or ``"below_scratch"``.

    Example:
        >>> labels_needed(0.6, [10, 100], [0.5, 0.7])   # halfway in log n
        (31.62..., None)
    """
    n_ref = n
    n = np.asarray(scratch_budgets, np.float64)
    acc = np.asarray(scratch_accuracies, np.float64)
    if n.ndim != 1 or len(n) != len(acc) or len(n) == 0 or (n <= 0).any():
        raise ValueError("The scratch curve needs matching, non-empty budgets (> 0) and "
                         "accuracies.")
    order = np.argsort(n)
    n, acc = n[order], np.maximum.accumulate(acc[order])
    if target > acc[-1]:
        return float(n[-1]), "above_scratch"
    if target < acc[0]:
        return float(n[0]), "below_scratch"
    i = int(np.argmax(acc >= target))  # First budget reaching the target.
    if acc[i] == target:
        tied = n[acc == target]
        if n_ref is None:
            return float(tied[0]), None
        return float(tied[np.argmin(np.abs(np.log(tied) - math.log(n_ref)))]), None
    if i == 0:
        return float(n[i]), None
    fraction = (target - acc[i - 1]) / (acc[i] - acc[i - 1])
    log_n = math.log(n[i - 1]) + fraction * (math.log(n[i]) - math.log(n[i - 1]))
    return float(math.exp(log_n)), None


def utility_curve(budgets, finetuned_accuracies, scratch_budgets,
                  scratch_accuracies) -> list[dict]:
    """Returns U(n) for every budget of the fine-tuned curve.

    Both curves are made monotone the same way (running maximum over
    increasing n: more labels can always do at least as well as fewer), and
    ``n_hat`` is read for the fine-tuned envelope's value at n. Applying the
    envelope to both is what makes the utility of a model identical to scratch
    exactly 0 even where the measured curve dips (a dip at n would otherwise
    be matched by a smaller scratch budget and give U < 0).

    Args:
        budgets: Label budgets n of the fine-tuned model.
        finetuned_accuracies: ``a_ft(n)``.
        scratch_budgets: Budgets of the scratch curve (often the same).
        scratch_accuracies: ``a_scratch`` at those budgets.

    Returns:
        One dict per budget, in the order given: ``{"n", "finetuned_accuracy"
        (as measured), "envelope_accuracy" (the running maximum used),
        "n_hat", "utility", "flag"}``.

    Example:
        >>> utility_curve([10, 100], [0.5, 0.7], [10, 100], [0.5, 0.7])[1]["utility"]
        0.0
    """
    if len(budgets) != len(finetuned_accuracies):
        raise ValueError("budgets and finetuned_accuracies must have the same length.")
    order = np.argsort(np.asarray(budgets, np.float64), kind="stable")
    envelope = np.empty(len(budgets))
    envelope[order] = np.maximum.accumulate(np.asarray(finetuned_accuracies, np.float64)[order])
    rows = []
    for n, accuracy, target in zip(budgets, finetuned_accuracies, envelope):
        n_hat, flag = labels_needed(float(target), scratch_budgets, scratch_accuracies, n)
        rows.append({"n": int(n), "finetuned_accuracy": float(accuracy),
                     "envelope_accuracy": float(target), "n_hat": n_hat,
                     "utility": n_hat / float(n) - 1.0, "flag": flag})
    return rows


def _endpoint_shapes(model, images) -> dict:
    """Per-image end-point shapes in network order (signature outputs have none)."""
    outputs = model.endpoints(images)
    return {name: list(outputs[name].shape[1:]) for name in model.endpoint_names}


def _scratch_source(scratch: str, model):
    """What the scratch model is opened from: a contract SavedModel as a path; beside a model
    read through an adapter, another Keras or non-contract model is read with the same
    end-points, signature and safety switch (the same architecture at initialisation)."""
    source = getattr(model, "source", None)
    if not isinstance(source, ModelSource) or os.path.exists(os.path.join(scratch,
                                                                          METADATA_PATH)):
        return scratch
    return dataclasses.replace(source, path=scratch)


class UtilityProtocol(Protocol):
    """Newell & Deng's utility of pretraining, per model, against a scratch model."""

    name = "utility"
    settings = UtilitySettings
    order = 50
    per_layer = False

    def check(self, settings):
        if not settings.scratch_model:
            raise ValueError("The utility protocol needs scratch_model (--scratch_model): the "
                             "step-0 export of the same architecture, trained from scratch.")

    def in_all(self, settings):
        return bool(settings.scratch_model)

    def run_model(self, data: ModelInput, settings, evaluation) -> dict:
        model, path, common = data.model, data.path, evaluation.data
        if model.patch_spec is not None:
            raise ValueError(f"The utility protocol fine-tunes image models; {path!r} is "
                             f"patch-based.")
        dense = settings.task == "segmentation"
        if settings.finetune_layer_decay != 1.0:  # refused before the data is read
            for metadata, where in ((model.metadata, path),
                                    (read_metadata(settings.scratch_model), settings.scratch_model)):
                layer_decay_scales(metadata, where, settings.finetune_layer_decay,
                                   settings.layer or "pre_logits")
        limits = {common.train_split: common.max_train_examples,
                  common.test_split: common.max_test_examples}
        arrays = [load_arrays(data.dataset, split, model.input_size, data_dir=common.data_dir,
                              limit=limits[split], seed=common.seed, segmentation=dense)
                  for split in (common.train_split, common.test_split)]
        usable = [int(n) for n in settings.budgets if n <= len(arrays[0][1])]
        tune = dict(steps=settings.finetune_steps, batch_size=settings.finetune_batch_size,
                    learning_rate=settings.finetune_learning_rate,
                    layer_decay=settings.finetune_layer_decay, seed=common.seed)
        if dense:
            (images, labels, maps), (test_images, _, test_maps) = arrays
            layer = settings.layer or default_dense_layer(
                _endpoint_shapes(model, images[:1]), images.shape[1])
            tune.update(layer=layer, num_classes=int(max(maps.max(), test_maps.max())) + 1)

            def curve(model_path):
                return segmentation_curve(model_path, images, labels, maps, test_images,
                                          test_maps, usable, **tune)
        else:
            def curve(model_path):
                return finetune_curve(model_path, *arrays[0], *arrays[1], usable, **tune)
        # The scratch curve is the same for every model of the evaluation.
        if "scratch_curve" not in data.shared:
            data.shared["scratch_curve"] = curve(_scratch_source(settings.scratch_model, model))
        scratch_curve = data.shared["scratch_curve"]
        finetuned = curve(getattr(model, "source", path))
        result = {
            "scratch_model": settings.scratch_model, "budgets": usable, "task": settings.task,
            "metric": "mean_iou" if dense else "accuracy",
            "skipped_budgets": [int(n) for n in settings.budgets if n > len(arrays[0][1])],
            "finetuned_accuracy": finetuned, "scratch_accuracy": scratch_curve,
            "curve": utility_curve(usable, finetuned, usable, scratch_curve)}
        if dense:
            result.update(layer=tune["layer"], num_classes=tune["num_classes"])
        else:  # Pixels of one image are not independent: no binomial interval for IoU.
            test_count = len(arrays[1][1])
            result.update(
                test_count=test_count,
                finetuned_ci95=[accuracy_interval(a, test_count)["ci95"] for a in finetuned],
                scratch_ci95=[accuracy_interval(a, test_count)["ci95"] for a in scratch_curve])
        return result

    def accuracy_entries(self, results):
        return iter(())  # Its intervals are lists beside the accuracies (``*_ci95``).

    def rows(self, results):
        if not results:
            return []
        layer = results.get("layer") or "pre_logits"
        count = {"test_count": results.get("test_count")}
        finetuned_ci = results.get("finetuned_ci95") or [None] * len(results["budgets"])
        by_budget = dict(zip(results["budgets"], finetuned_ci))
        rows = []
        for row in results["curve"]:
            rows.append(result_row(layer, self.name, row["utility"], labels=row["n"],
                                   metric="utility", bound=_BOUNDS.get(row.get("flag"), "")))
            rows.append(result_row(layer, self.name, row["finetuned_accuracy"], labels=row["n"],
                                   metric="finetuned_accuracy", source=count,
                                   ci=by_budget.get(row["n"])))
        scratch_ci = results.get("scratch_ci95") or [None] * len(results["budgets"])
        for n, accuracy, ci in zip(results["budgets"], results["scratch_accuracy"], scratch_ci):
            rows.append(result_row(layer, self.name, accuracy, labels=n,
                                   metric="scratch_accuracy", source=count, ci=ci))
        return rows

    def markdown(self, report, models):
        results = [self.results(m) for m in models]
        rows = []
        for n in union(results, lambda r: r["budgets"]):
            cells = []
            for r in results:
                row = next((c for c in r["curve"] if c["n"] == n), None)
                cells.append("-" if row is None else f"{row['utility']:.2f}"
                             + (f" ({row['flag']})" if row["flag"] else ""))
            rows.append([str(n), *cells])
        task = results[0].get("task", "classification") if results else "classification"
        metric = results[0].get("metric", "accuracy") if results else "accuracy"
        tables = [table(f"Utility U(n) = n_hat / n - 1 of fine-tuning vs. training from "
                        f"scratch ({task}, {metric})",
                        ["labels n", *[m["name"] for m in models]], rows)]
        with_counts = [(m, r) for m, r in zip(models, results) if r.get("test_count")]
        if with_counts:
            tables.append(_accuracy_table(with_counts))
        return "\n".join(tables)

    def plots(self, report, output_dir):
        """``utility.png``: U(n) vs. label budget n (log x), per model; clipped points marked x."""
        models = [(m, self.results(m)) for m in report["models"]]
        models = [(m, r) for m, r in models if r and r.get("curve")]
        if not models:
            return []
        from keras_ssl_eval.reporting import plots  # pylint: disable=import-outside-toplevel

        fig, ax = plots.plt.subplots(figsize=(6, 4))
        for model, results in models:
            curve = results["curve"]
            ax.plot([r["n"] for r in curve], [r["utility"] for r in curve], marker="o",
                    label=model["name"])
            flagged = [r for r in curve if r["flag"]]
            ax.scatter([r["n"] for r in flagged], [r["utility"] for r in flagged], marker="x",
                       color="k", zorder=3)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        budgets = sorted({r["n"] for _, results in models for r in results["curve"]})
        ax.set_xticks(budgets, [str(n) for n in budgets])
        ax.minorticks_off()
        ax.set_xlabel("labels n")
        ax.set_ylabel("utility U(n) = n_hat / n - 1")
        task = models[0][1].get("task", "classification")
        ax.set_title(f"Utility of pretraining, {task} (x: clipped at the scratch curve)")
        return [plots.save_figure(fig, ax, os.path.join(output_dir, "utility.png"))]


def _accuracy_table(models):
    """The accuracies behind U(n): fine-tuned and from scratch, with their intervals."""
    def entries(u, which):
        return {n: {"test_accuracy": a, "ci95": ci, "test_count": u["test_count"]}
                for n, a, ci in zip(u["budgets"], u[f"{which}_accuracy"], u[f"{which}_ci95"])}
    columns = [(m, r, which) for m, r in models for which in ("finetuned", "scratch")]
    by_column = [entries(r, which) for _, r, which in columns]
    note, per_cell = count_note([e for c in by_column for e in c.values()])
    rows = [[str(n), *[format_accuracy(c.get(n), with_count=per_cell) for c in by_column]]
            for n in union([r for _, r in models], lambda r: r["budgets"])]
    return table(f"Test accuracy (%) behind U(n): fine-tuned and from scratch{note}",
                 ["labels n", *[f"{m['name']} {which}" for m, _, which in columns]], rows)


UTILITY = register(UtilityProtocol())
