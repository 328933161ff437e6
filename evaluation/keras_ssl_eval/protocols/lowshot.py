"""Low-shot evaluation (Goyal et al. 2019): k labelled examples per class.

For each k in {1, 2, 4, 8, 16, 32, 64, 96} (k larger than the smallest class
is skipped), draw k training examples per class, 5 independent seeded draws;
train a linear SVM (one-vs-rest, squared hinge, C by 3-fold cross-validation)
on l2-normalised features, and the linear head (`keras_ssl_eval.probes.linear`);
test on the whole test set; report mean and std over the draws, and the
test count with the 95% Wilson interval at the mean (the test set's sampling
noise, shared by all draws; the draws' own spread is the std).

The ``lowshot`` protocol runs it on every layer: results per layer
``{head: {str(k): {"mean", "std", "accuracies", "num_train", "test_count",
"ci95"}}, "skipped": [k...]}``; its plot is ``lowshot.png``.
"""

from __future__ import annotations

import os

import numpy as np

from keras_ssl_eval.probes.linear import DEFAULT_L2_GRID, fit_linear_probe
from keras_ssl_eval.probes.svm import DEFAULT_COSTS, fit_svm_cv
from keras_ssl_eval.protocols.base import LayerInput, Protocol, register, result_row
from keras_ssl_eval.reporting.tables import count_note, interval_text, table, union
from keras_ssl_eval.settings import LowShotSettings
from keras_ssl_eval.statistics import accuracy_interval

__all__ = ["DEFAULT_SHOTS", "LowShotProtocol", "low_shot", "run_lowshot", "sample_per_class"]

DEFAULT_SHOTS = LowShotSettings.shots


def sample_per_class(labels, k: int, seed: int) -> np.ndarray:
    """Returns sorted indices of `k` examples of every class, drawn without replacement.

    Args:
        labels: ``[N]`` labels.
        k: Examples per class (at most the smallest class count).
        seed: Seed of the draw.

    Returns:
        int64 indices ``[k * classes]``.
    """
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(labels == c), k, replace=False)
              for c in np.unique(labels)]
    return np.sort(np.concatenate(picked))


def _l2_normalise(x):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def low_shot(train_features, train_labels, test_features, test_labels, *,
             shots=DEFAULT_SHOTS, draws: int = LowShotSettings.draws, seed: int = 0,
             costs=DEFAULT_COSTS,
             heads=("svm", "linear"), l2_grid=DEFAULT_L2_GRID) -> dict:
    """Runs the low-shot protocol on fixed features.

    Args:
        train_features, train_labels: The pool the k-shot sets are drawn from.
        test_features, test_labels: The test set.
        shots: Values of k; those above the smallest class count are skipped.
        draws: Independent draws per k (draw d uses seed ``seed + 1009 * d``).
        seed: Base seed.
        costs: SVM costs for cross-validation.
        heads: Any of ``"svm"`` and ``"linear"``.
        l2_grid: L2 grid of the linear head.

    Returns:
        ``{head: {str(k): {"mean", "std", "accuracies", "num_train", "test_count",
        "ci95"}}, "skipped": [k...]}`` with accuracies in [0, 1]; ``ci95`` is the
        Wilson interval of the mean on the ``test_count`` test examples.

    Example:
        >>> low_shot(x, y, xt, yt, shots=(1, 4))["svm"]["4"]["mean"]
        0.71
    """
    y = np.asarray(train_labels).reshape(-1)
    yt = np.asarray(test_labels).reshape(-1)
    smallest = int(np.unique(y, return_counts=True)[1].min())
    usable = [int(k) for k in shots if k <= smallest]
    results = {head: {} for head in heads}
    results["skipped"] = [int(k) for k in shots if k > smallest]
    x_svm, xt_svm = _l2_normalise(train_features), _l2_normalise(test_features)
    for k in usable:
        accuracies = {head: [] for head in heads}
        for draw in range(draws):
            idx = sample_per_class(y, k, seed + 1009 * draw)
            if "svm" in heads:
                svm = fit_svm_cv(x_svm[idx], y[idx], costs, seed=seed + draw)
                accuracies["svm"].append(float(np.mean(svm.predict(xt_svm) == yt)))
            if "linear" in heads:
                grid = l2_grid if len(idx) >= 5 else l2_grid[-1:]
                probe = fit_linear_probe(np.asarray(train_features)[idx], y[idx],
                                         test_features, yt, l2_grid=grid, seed=seed + draw)
                accuracies["linear"].append(probe.test_accuracy)
        for head in heads:
            values = np.asarray(accuracies[head])
            results[head][str(k)] = {"mean": float(values.mean()), "std": float(values.std()),
                                     "accuracies": values.tolist(), "num_train": len(idx),
                                     **accuracy_interval(float(values.mean()), len(yt))}
    return results


def run_lowshot(x, y, xt, yt, settings: LowShotSettings = LowShotSettings(), *,
                seed: int = 0, heads=("svm", "linear")) -> dict:
    """Low-shot SVM and linear head on one layer; see `low_shot`.

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


def _heads(layer_results: dict) -> dict:
    """``{head: {k: entry}}`` of one layer's results (without ``skipped``)."""
    return {head: by_k for head, by_k in layer_results.items() if head != "skipped"}


class LowShotProtocol(Protocol):
    """Goyal's low-shot SVMs and linear head per layer."""

    name = "lowshot"
    settings = LowShotSettings
    order = 40
    method = ("svm", "one-vs-rest squared hinge, C by 3-fold CV, l2-normalised")

    def run_layer(self, data: LayerInput, settings, evaluation) -> dict:
        return run_lowshot(data.x, data.y, data.xt, data.yt, settings, seed=evaluation.data.seed)

    def accuracy_entries(self, results):
        for layer_results in (results or {}).values():
            for by_k in _heads(layer_results).values():
                for entry in by_k.values():
                    yield entry, "mean"

    def rows(self, results):
        return [result_row(layer, f"lowshot_{head}", by_k[k]["mean"], labels=int(k),
                           source=by_k[k])
                for layer, layer_results in (results or {}).items()
                for head, by_k in _heads(layer_results).items()
                for k in sorted(by_k, key=int)]

    def markdown(self, report, models):
        results = [self.results(m) for m in models]
        note, per_cell = count_note([e for r in results for e, _ in self.accuracy_entries(r)])
        rows = []
        for layer in union(results, lambda r: r):
            for head in union(results, lambda r, l=layer: _heads(r.get(l, {}))):
                for k in union(results, lambda r, l=layer, h=head: r.get(l, {}).get(h, {})):
                    cells = []
                    for r in results:
                        entry = r.get(layer, {}).get(head, {}).get(k)
                        cells.append("-" if entry is None else
                                     f"{100 * entry['mean']:.1f} ± {100 * entry['std']:.1f}"
                                     + interval_text(entry, per_cell))
                    rows.append([layer, head, k, *cells])
        note = note.replace("95% Wilson interval", "95% Wilson interval of the mean")
        return table(f"Low-shot test accuracy (%), mean ± std over draws, on "
                     f"{report['dataset'].get('name', '')}{note}",
                     ["layer", "head", "k", *[m["name"] for m in models]], rows, 2)

    def plots(self, report, output_dir):
        """``lowshot.png``: accuracy vs. k (log x), bars the 95% intervals, band ± std."""
        from keras_ssl_eval.reporting import plots  # pylint: disable=import-outside-toplevel

        fig, ax = plots.plt.subplots(figsize=(6, 4))
        drawn, ticks = False, set()
        for index, model in enumerate(report["models"]):
            for layer_index, (layer, layer_results) in enumerate(
                    (self.results(model) or {}).items()):
                for head, by_k in _heads(layer_results).items():
                    if not by_k:
                        continue
                    ks = sorted(by_k, key=int)
                    x, means = [int(k) for k in ks], [by_k[k]["mean"] for k in ks]
                    stds = [by_k[k]["std"] for k in ks]
                    color = f"C{index % 10}"
                    # Reports from before the intervals: the std as the bars, as then.
                    yerr = (plots.interval_error(means, [by_k[k].get("ci95") for k in ks])
                            or [100 * s for s in stds])
                    ax.errorbar(x, [100 * m for m in means], yerr=yerr, capsize=3,
                                marker="o" if head == "svm" else "s", color=color,
                                linestyle=plots.line_style(layer_index),
                                label=f"{model['name']} {layer} {head}")
                    ax.fill_between(x, [100 * (m - s) for m, s in zip(means, stds)],
                                    [100 * (m + s) for m, s in zip(means, stds)], color=color,
                                    alpha=0.15, linewidth=0)
                    ticks.update(int(k) for k in ks)
                    drawn = True
        if not drawn:
            plots.plt.close(fig)
            return []
        ax.set_xscale("log")
        ax.set_xticks(sorted(ticks), [str(k) for k in sorted(ticks)])
        ax.minorticks_off()
        ax.set_xlabel("labelled examples per class k")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("Low-shot accuracy: mean over draws, bars 95% intervals, band ± std")
        return [plots.save_figure(fig, ax, os.path.join(output_dir, "lowshot.png"))]


LOWSHOT = register(LowShotProtocol())
