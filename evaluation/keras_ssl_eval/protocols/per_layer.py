"""The protocols that run on frozen features of one layer: one function each.

Each takes train/test features and labels of one layer and its protocol's
settings (`keras_ssl_eval.settings`), and returns a JSON-ready dict;
`keras_ssl_eval.protocols.evaluate` calls them for every model and layer. Every
test accuracy comes with its test count and 95% Wilson interval
(``test_count``, ``ci95``: `keras_ssl_eval.statistics.accuracy_interval`).

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
from keras_ssl_eval.probes.linear import fit_linear_probe
from keras_ssl_eval.protocols.lowshot import low_shot
from keras_ssl_eval.settings import GridSettings, KnnSettings, LinearSettings, LowShotSettings
from keras_ssl_eval.statistics import accuracy_interval

__all__ = ["run_linear", "run_grid", "run_knn", "run_lowshot"]


def run_linear(x, y, xt, yt, settings: LinearSettings = LinearSettings(), *,
               seed: int = 0) -> dict:
    """The linear probe on one layer.

    Args:
        x, y: Training features ``[N, D]`` and labels.
        xt, yt: Test features and labels.
        settings: The L2 grid and the hold-out fraction.
        seed: Seed of the hold-out split.

    Returns:
        `LinearProbeResult.to_dict` plus ``test_count``, ``ci95`` and ``fit_seconds``.
    """
    start = time.perf_counter()
    result = fit_linear_probe(x, y, xt, yt, l2_grid=settings.l2_grid,
                              validation_fraction=settings.validation_fraction, seed=seed)
    return {**result.to_dict(), **accuracy_interval(result.test_accuracy, len(yt)),
            "fit_seconds": round(time.perf_counter() - start, 3)}


def run_grid(x, y, xt, yt, settings: GridSettings = GridSettings(), *,
             linear: LinearSettings = LinearSettings(), seed: int = 0) -> dict:
    """Kolesnikov's heads on one layer.

    Args:
        x, y, xt, yt: Train and test features and labels.
        settings: The heads, the linear head's solver (``"fast"``: Newton-CG
            to the regularised optimum; ``"sgd"``: momentum 0.9, lr 0.1 per
            256, x0.1 at 30/70 and 50/70 of the epochs; the MLP always uses
            the SGD schedule), epochs, SGD batch size and MLP width.
        linear: The L2 grid of the ``fast`` solver.
        seed: Seed.

    Returns:
        ``{head: {"test_accuracy", "test_count", "ci95", "train_accuracy", "solver",
        "convergence": {...}, "fit_seconds"}}``. ``convergence`` holds ``grad_norm`` (largest entry of
        the full-batch gradient at the end) for every head, plus
        ``iterations``/``converged`` (fast) or ``final_loss``/``loss_history`` (SGD).
    """
    results = {}
    for head in settings.heads:
        start = time.perf_counter()
        if head == "linear" and settings.solver == "fast":
            probe = fit_linear_probe(x, y, xt, yt, l2_grid=linear.l2_grid,
                                     validation_fraction=linear.validation_fraction, seed=seed)
            entry = {"test_accuracy": probe.test_accuracy,
                     "train_accuracy": probe.train_accuracy, "solver": "fast",
                     "l2": probe.l2,
                     "convergence": {"iterations": probe.iterations,
                                     "converged": probe.converged,
                                     "grad_norm": probe.grad_norm}}
        else:
            result = train_head(x, y, xt, yt, head=head, epochs=settings.epochs,
                                batch_size=settings.sgd_batch_size, hidden=settings.mlp_hidden,
                                seed=seed)
            entry = {"test_accuracy": result.test_accuracy,
                     "train_accuracy": result.train_accuracy, "solver": "sgd",
                     "convergence": {"epochs": result.epochs, "final_loss": result.final_loss,
                                     "grad_norm": result.grad_norm,
                                     "spectral_scale": result.spectral_scale,
                                     "loss_history": result.loss_history}}
        entry.update(accuracy_interval(entry["test_accuracy"], len(yt)))
        entry["fit_seconds"] = round(time.perf_counter() - start, 3)
        results[head] = entry
    return results


def run_knn(x, y, xt, yt, settings: KnnSettings = KnnSettings()) -> dict:
    """Weighted kNN on one layer; see `keras_ssl_eval.probes.knn.knn_accuracy`.

    Args:
        x, y, xt, yt: Train and test features and labels.
        settings: Neighbours (capped at the training set size) and vote temperature.

    Returns:
        ``{"test_accuracy", "test_count", "ci95", "k", "temperature"}``.
    """
    result = knn_accuracy(x, y, xt, yt, k=settings.k, temperature=settings.temperature)
    return {"test_accuracy": result["test_accuracy"],
            **accuracy_interval(result["test_accuracy"], len(yt)),
            **{k: v for k, v in result.items() if k != "test_accuracy"}}


def run_lowshot(x, y, xt, yt, settings: LowShotSettings = LowShotSettings(), *,
                seed: int = 0, heads=("svm", "linear")) -> dict:
    """Low-shot SVM and linear head on one layer; see `keras_ssl_eval.protocols.lowshot.low_shot`.

    Args:
        x, y, xt, yt: Train pool and test features and labels.
        settings: Examples per class and seeded draws per k.
        seed: Base seed.
        heads: ``"svm"`` and/or ``"linear"``.

    Returns:
        ``{head: {str(k): {"mean", "std", "accuracies", "num_train", "test_count",
        "ci95"}}, "skipped": [...]}``.
    """
    return low_shot(x, y, xt, yt, shots=settings.shots, draws=settings.draws, seed=seed,
                    heads=heads)
