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
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["labels_needed", "utility_curve"]


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
