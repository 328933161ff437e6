"""The protocols that run on frozen features of one layer: one function each.

Each takes train/test features and labels of one layer and returns a
JSON-ready dict; `keras_ssl_eval.protocols.evaluate` calls them for every model and layer.

- `run_linear`: the linear probe (`keras_ssl_eval.probes.linear`).
- `run_grid`: Kolesnikov's heads, ``linear`` (solver ``fast`` = Newton-CG or ``sgd``
  = the paper's schedule) and ``mlp`` (`keras_ssl_eval.probes.heads`).
- `run_knn`: weighted kNN (`keras_ssl_eval.probes.knn`).
- `run_lowshot`: Goyal's low-shot SVMs and linear head (`keras_ssl_eval.protocols.lowshot`).
"""

from __future__ import annotations

import time

from keras_ssl_eval.probes.heads import train_head
from keras_ssl_eval.probes.knn import knn_accuracy
from keras_ssl_eval.probes.linear import DEFAULT_L2_GRID, fit_linear_probe
from keras_ssl_eval.protocols.lowshot import DEFAULT_SHOTS, low_shot

__all__ = ["HEADS", "SOLVERS", "run_linear", "run_grid", "run_knn", "run_lowshot"]

HEADS = ("linear", "mlp")
SOLVERS = ("fast", "sgd")


def run_linear(x, y, xt, yt, *, l2_grid=DEFAULT_L2_GRID, seed: int = 0) -> dict:
    """The linear probe on one layer.

    Args:
        x, y: Training features ``[N, D]`` and labels.
        xt, yt: Test features and labels.
        l2_grid: L2 strengths to choose from.
        seed: Seed of the hold-out split.

    Returns:
        `LinearProbeResult.to_dict` plus ``fit_seconds``.
    """
    start = time.perf_counter()
    result = fit_linear_probe(x, y, xt, yt, l2_grid=l2_grid, seed=seed)
    return {**result.to_dict(), "fit_seconds": round(time.perf_counter() - start, 3)}


def run_grid(x, y, xt, yt, *, heads=HEADS, solver: str = "fast", epochs: int = 70,
             batch_size: int = 256, l2_grid=DEFAULT_L2_GRID, hidden: int = 1000,
             seed: int = 0) -> dict:
    """Kolesnikov's heads on one layer.

    Args:
        x, y, xt, yt: Train and test features and labels.
        heads: Any of ``"linear"`` and ``"mlp"``.
        solver: For the linear head: ``"fast"`` (Newton-CG to the regularised
            optimum) or ``"sgd"`` (momentum 0.9, lr 0.1 per 256, x0.1 at 30/70
            and 50/70 of `epochs`). The MLP always uses the SGD schedule.
        epochs: Epochs of the SGD schedule.
        batch_size: SGD batch size.
        l2_grid: L2 grid of the ``fast`` solver.
        hidden: MLP hidden width.
        seed: Seed.

    Returns:
        ``{head: {"test_accuracy", "train_accuracy", "solver", "convergence": {...},
        "fit_seconds"}}``. ``convergence`` holds ``grad_norm`` (largest entry of
        the full-batch gradient at the end) for every head, plus
        ``iterations``/``converged`` (fast) or ``final_loss``/``loss_history`` (SGD).
    """
    unknown = [h for h in heads if h not in HEADS]
    if unknown or solver not in SOLVERS:
        raise ValueError(f"heads must be in {HEADS} and solver in {SOLVERS}, got {heads}, "
                         f"{solver!r}.")
    results = {}
    for head in heads:
        start = time.perf_counter()
        if head == "linear" and solver == "fast":
            probe = fit_linear_probe(x, y, xt, yt, l2_grid=l2_grid, seed=seed)
            entry = {"test_accuracy": probe.test_accuracy,
                     "train_accuracy": probe.train_accuracy, "solver": "fast",
                     "l2": probe.l2,
                     "convergence": {"iterations": probe.iterations,
                                     "converged": probe.converged,
                                     "grad_norm": probe.grad_norm}}
        else:
            result = train_head(x, y, xt, yt, head=head, epochs=epochs, batch_size=batch_size,
                                hidden=hidden, seed=seed)
            entry = {"test_accuracy": result.test_accuracy,
                     "train_accuracy": result.train_accuracy, "solver": "sgd",
                     "convergence": {"epochs": result.epochs, "final_loss": result.final_loss,
                                     "grad_norm": result.grad_norm,
                                     "spectral_scale": result.spectral_scale,
                                     "loss_history": result.loss_history}}
        entry["fit_seconds"] = round(time.perf_counter() - start, 3)
        results[head] = entry
    return results


def run_knn(x, y, xt, yt, *, k: int = 200, temperature: float = 0.1) -> dict:
    """Weighted kNN on one layer; see `keras_ssl_eval.probes.knn.knn_accuracy`.

    Args:
        x, y, xt, yt: Train and test features and labels.
        k: Neighbours (capped at the training set size).
        temperature: Vote temperature.

    Returns:
        ``{"test_accuracy", "k", "temperature"}``.
    """
    return knn_accuracy(x, y, xt, yt, k=k, temperature=temperature)


def run_lowshot(x, y, xt, yt, *, shots=DEFAULT_SHOTS, draws: int = 5, seed: int = 0,
                heads=("svm", "linear")) -> dict:
    """Low-shot SVM and linear head on one layer; see `keras_ssl_eval.protocols.lowshot.low_shot`.

    Args:
        x, y, xt, yt: Train pool and test features and labels.
        shots: Examples per class.
        draws: Seeded draws per k.
        seed: Base seed.
        heads: ``"svm"`` and/or ``"linear"``.

    Returns:
        ``{head: {str(k): {"mean", "std", "accuracies", "num_train"}}, "skipped": [...]}``.
    """
    return low_shot(x, y, xt, yt, shots=shots, draws=draws, seed=seed, heads=heads)
