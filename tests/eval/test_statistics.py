"""Tests of keras_ssl_eval.statistics: Wilson intervals, bootstrap, seed summaries."""

import doctest
import math

import numpy as np
import pytest

from keras_ssl_eval import statistics
from keras_ssl_eval.reporting import plots, report

Z95 = 1.959963984540054


def wilson_reference(successes, n, z=Z95):
    """Wilson (1927) written out as in the textbooks, with numpy: the roots in p of
    ``(p_hat - p)^2 = z^2 p (1 - p) / n``."""
    p_hat = successes / n
    # (1 + z^2/n) p^2 - (2 p_hat + z^2/n) p + p_hat^2 = 0
    roots = np.roots([1 + z * z / n, -(2 * p_hat + z * z / n), p_hat * p_hat])
    low, high = sorted(np.real(roots))
    return max(low, 0.0), min(high, 1.0)


@pytest.mark.parametrize("successes,n", [(50, 100), (0, 10), (10, 10), (1, 29), (254, 500),
                                         (7132, 10000), (3, 7)])
def test_wilson_matches_the_quadratic_formula(successes, n):
    assert statistics.wilson_interval(successes, n) == pytest.approx(
        wilson_reference(successes, n), abs=1e-9)


def test_wilson_known_values():
    # Newcombe (1998), Statistics in Medicine 17, Table I, method 3 (no continuity correction).
    for (successes, n), expected in [((81, 263), (0.2553, 0.3662)), ((15, 148), (0.0624, 0.1605)),
                                     ((0, 20), (0.0, 0.1611)), ((1, 29), (0.0061, 0.1718))]:
        assert statistics.wilson_interval(successes, n) == pytest.approx(expected, abs=5e-5)
    assert statistics.wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=5e-5)
    # 0 and n successes: not empty (the Wald interval would be [0, 0] and [1, 1]).
    assert statistics.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-5)
    assert statistics.wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=5e-5)
    # The figure: about +-4 points on 500 test images.
    low, high = statistics.wilson_interval(254, 500)
    assert 0.085 < high - low < 0.09
    # Other confidences: 90% is narrower, 99% wider.
    assert (statistics.wilson_interval(50, 100, 0.9)[1] < 0.5962
            < statistics.wilson_interval(50, 100, 0.99)[1])


def test_wilson_refuses_bad_counts():
    with pytest.raises(ValueError, match="positive whole test count"):
        statistics.wilson_interval(0, 0)
    with pytest.raises(ValueError, match=r"in \[0, n=10\]"):
        statistics.wilson_interval(11, 10)
    with pytest.raises(ValueError, match="confidence"):
        statistics.wilson_interval(1, 10, confidence=95)


def test_accuracy_interval_fields():
    assert statistics.accuracy_interval(0.5, 100) == {
        "test_count": 100, "ci95": pytest.approx([0.4038, 0.5962], abs=5e-5)}
    assert statistics.accuracy_interval(None, 100) == {}
    assert set(statistics.accuracy_interval(0.5, 100, confidence=0.9)) == {"test_count", "ci90"}


def test_bootstrap_agrees_with_wilson_on_a_large_sample():
    correct = np.r_[np.ones(600), np.zeros(400)]
    low, high = statistics.bootstrap_interval(correct, resamples=4000, seed=1)
    wilson = statistics.wilson_interval(600, 1000)
    assert low == pytest.approx(wilson[0], abs=0.006) and high == pytest.approx(wilson[1],
                                                                               abs=0.006)
    # Paired differences: two models that agree on every example differ by exactly 0.
    assert statistics.bootstrap_interval(correct - correct, resamples=200) == (0.0, 0.0)
    with pytest.raises(ValueError, match="non-empty"):
        statistics.bootstrap_interval([])


def test_seed_summary_combines_seeds_and_test_noise():
    values = [0.50, 0.54]
    summary = statistics.seed_summary(values, test_count=1000)
    std = np.std(values, ddof=1)
    assert summary["mean"] == pytest.approx(0.52) and summary["std"] == pytest.approx(std)
    assert summary["n"] == 2 and summary["test_count"] == 1000
    # The seed half-width: Student t with 1 degree of freedom (12.706) x std / sqrt(2);
    # the test half-width: Wilson at 52% on 1000; added in quadrature.
    seed_half = 12.7062047 * std / math.sqrt(2)
    low, high = wilson_reference(520, 1000)
    assert summary["ci95"][0] == pytest.approx(0.52 - math.hypot(0.52 - low, seed_half))
    assert summary["ci95"][1] == pytest.approx(min(1.0, 0.52 + math.hypot(high - 0.52,
                                                                           seed_half)))
    # One seed: the Wilson interval alone, and no std.
    one = statistics.seed_summary([0.5], test_count=100)
    assert one["std"] is None and one["ci95"] == pytest.approx([0.4038, 0.5962], abs=5e-5)
    # A metric without a test count (U(n)): the seeds alone; one seed gives none.
    utility = statistics.seed_summary([1.0, 2.0, 3.0])
    assert utility["ci95"] == pytest.approx([2 - 4.30265 / math.sqrt(3), 2 + 4.30265 /
                                             math.sqrt(3)], abs=1e-4)
    assert statistics.seed_summary([1.0])["ci95"] is None


def welch_reference(a, b):
    """Welch's t-test written out with numpy: t, Welch-Satterthwaite dof, two-sided p."""
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(a) - np.mean(b)) / np.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    # p = P(|T| > |t|) = I_{dof / (dof + t^2)}(dof / 2, 1 / 2), the regularized beta.
    from scipy.special import betainc
    return t, dof, betainc(dof / 2, 0.5, dof / (dof + t * t))


@pytest.mark.parametrize("a,b", [
    ([74.1, 75.0, 73.2, 74.4], [75.9, 76.3, 75.2, 76.0]),
    ([76.28, 74.07, 72.82, 75.03, 74.45], [75.08, 76.75, 75.72, 75.55, 74.72]),
    ([0.5, 0.52], [0.61, 0.40, 0.55]),
])
def test_welch_difference_matches_the_formula(a, b):
    result = statistics.welch_difference(a, b)
    t, dof, p = welch_reference(a, b)
    assert result["difference"] == pytest.approx(np.mean(a) - np.mean(b))
    assert result["t"] == pytest.approx(t) and result["dof"] == pytest.approx(dof)
    assert result["p"] == pytest.approx(p) and result["n"] == [len(a), len(b)]
    # The interval and the test agree: 0 lies outside the 95% interval exactly when p < 0.05.
    low, high = result["ci95"]
    assert low < result["difference"] < high
    assert (low > 0 or high < 0) == (result["p"] < 0.05)
    half = (high - low) / 2
    se = abs(result["difference"] / result["t"])
    assert statistics.welch_difference(a, b, confidence=0.5)["ci50"][1] - result["difference"] \
        < half and half / se > 1.96  # A t quantile at finite dof exceeds the normal one.


def test_welch_difference_without_spread_or_runs():
    same = statistics.welch_difference([1.0, 1.0], [1.0, 1.0])
    assert same["t"] == 0 and same["p"] == 1 and same["ci95"] == [0.0, 0.0]
    apart = statistics.welch_difference([2.0, 2.0], [1.0, 1.0, 1.0])
    assert apart["t"] == math.inf and apart["p"] == 0 and apart["ci95"] == [1.0, 1.0]
    with pytest.raises(ValueError, match="at least 2 runs in each set, got 1 and 3"):
        statistics.welch_difference([1.0], [1.0, 2.0, 3.0])


def test_docstring_examples_hold():
    failures, attempted = doctest.testmod(statistics, optionflags=doctest.ELLIPSIS)
    assert attempted > 5 and failures == 0


def test_intervals_overlap():
    assert statistics.intervals_overlap([0.4, 0.5], [0.5, 0.6])
    assert not statistics.intervals_overlap([0.1, 0.2], [0.3, 0.4])
    assert statistics.intervals_overlap([0.1, 0.9], [0.3, 0.4])


def test_layers_plot_draws_the_intervals(tmp_path, monkeypatch):
    drawn = []
    real = plots.plt.Axes.errorbar

    def recording(self, x, y, yerr=None, **kwargs):
        drawn.append(yerr)
        return real(self, x, y, yerr=yerr, **kwargs)

    monkeypatch.setattr(plots.plt.Axes, "errorbar", recording)
    entry = {"test_accuracy": 0.5, **statistics.accuracy_interval(0.5, 100)}
    fake = {"dataset": {"name": "d"}, "models": [
        {"name": "m", "layers": {"block3": entry, "pre_logits": {"test_accuracy": 0.6}}}]}
    written = plots.write_plots(fake, str(tmp_path))
    assert [p.rsplit("/", 1)[-1] for p in written] == ["layers.png"]
    assert (tmp_path / "layers.png").stat().st_size > 0
    # block3's bar spans its interval (in %); pre_logits (an older entry) has none.
    np.testing.assert_allclose(drawn[0], [[100 * (0.5 - 0.40383), 0.0],
                                          [100 * (0.59617 - 0.5), 0.0]], atol=1e-3)
    assert report.format_accuracy(entry) == "50.0 [40.4, 59.6]"
    assert report.format_accuracy(entry, with_count=True) == "50.0 [40.4, 59.6] n=100"
