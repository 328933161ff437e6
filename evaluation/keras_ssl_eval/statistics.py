"""How sure a measured accuracy is: intervals for test accuracies and for means over seeds.

An accuracy measured on ``n`` test examples is a binomial proportion: with
``n = 500`` a 95% interval is about +-4 points wide, so differences of a few
points between two runs may be noise. Every report of keras-ssl-eval gives
each test accuracy with its test count and the interval of `wilson_interval`;
keras_ssl's sweep combines it with the spread over training seeds
(`seed_summary`).

- `wilson_interval`: the Wilson score interval of a proportion (Wilson 1927).
  Unlike the normal ("Wald") interval ``p +- z sqrt(p (1 - p) / n)`` it stays
  inside [0, 1], is not empty at 0 or n successes, and keeps close to its
  nominal coverage for small n::

      centre = (p + z^2 / 2n) / (1 + z^2 / n)
      half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2)

  with ``p = successes / n`` and ``z`` the standard normal quantile of
  ``(1 + confidence) / 2`` (1.95996 for 95%).
- `accuracy_interval`: the fields every report carries, ``{"test_count": n,
  "ci95": [low, high]}``.
- `bootstrap_interval`: a percentile bootstrap of any statistic of per-example
  values (e.g. a difference of two models' correctness on the same test set).
- `seed_summary`: mean, standard deviation and count of one metric over
  training seeds, with an interval that adds the seeds' spread (Student t) and
  the test set's sampling noise (Wilson) in quadrature.
- `welch_difference`: the difference of two means over seeds (two methods or
  libraries, each trained with its own seeds), with Welch's t-test and the
  difference's interval; unlike overlapping seed intervals it says how sure
  the difference is.
- `intervals_overlap`: whether two intervals share a point. Two 95% intervals
  that do not overlap differ significantly; overlapping ones may still differ
  (the test is conservative), so an overlap means "not shown", not "equal".
"""

from __future__ import annotations

import math

import numpy as np
import scipy.special
import scipy.stats

__all__ = ["CONFIDENCE", "accuracy_interval", "bootstrap_interval", "intervals_overlap",
           "seed_summary", "welch_difference", "wilson_interval"]

CONFIDENCE = 0.95


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    return float(scipy.special.ndtri((1 + confidence) / 2))


def wilson_interval(successes: float, n: int, confidence: float = CONFIDENCE
                    ) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n``.

    Args:
        successes: Correct predictions (a count; a mean of counts, such as the
            low-shot mean over draws on one test set, is accepted too).
        n: Test examples (> 0).
        confidence: The interval's coverage, 0.95 by default.

    Returns:
        ``(low, high)``, fractions in [0, 1].

    Raises:
        ValueError: ``n < 1`` or successes outside [0, n].

    Example:
        >>> wilson_interval(50, 100)
        (0.4038..., 0.5961...)
    """
    if n is None or int(n) != n or n < 1:
        raise ValueError(f"An interval needs a positive whole test count, got n={n!r}.")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n={n}], got {successes}.")
    z = _z(confidence)
    p = successes / n
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / n + z2n / (4 * n))
    # At p = 0 or 1 one end is exactly p; rounding would put it a hair off.
    return (0.0 if successes == 0 else max(0.0, min(centre - half, p)),
            1.0 if successes == n else min(1.0, max(centre + half, p)))


def accuracy_interval(accuracy: float | None, n: int | None,
                      confidence: float = CONFIDENCE) -> dict:
    """The report fields of a test accuracy: ``{"test_count": n, "ci95": [low, high]}``.

    Args:
        accuracy: A fraction in [0, 1] measured on `n` test examples (None:
            no test set, and no interval).
        n: The test count.
        confidence: Coverage (the key stays ``ci95`` only for 0.95; other
            values give ``ci<percent>``, e.g. ``ci90``).

    Returns:
        The fields to merge into a result dict (``{}`` when `accuracy` or `n`
        is None).

    Example:
        >>> accuracy_interval(0.5, 100)
        {'test_count': 100, 'ci95': [0.4038..., 0.5961...]}
    """
    if accuracy is None or n is None:
        return {}
    low, high = wilson_interval(accuracy * n, int(n), confidence)
    return {"test_count": int(n), f"ci{round(100 * confidence):d}": [low, high]}


def bootstrap_interval(values, statistic=np.mean, *, resamples: int = 10000,
                       confidence: float = CONFIDENCE, seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap interval of ``statistic(values)``.

    Resamples the examples (rows of `values`) with replacement. For a
    comparison of two models on the same test set, pass the per-example
    difference of their correctness (``correct_a - correct_b``, in {-1, 0, 1}):
    pairing removes the noise the two share, which overlapping per-model
    intervals cannot.

    Args:
        values: ``[N, ...]`` per-example values (e.g. 0/1 correctness).
        statistic: Maps an array resampled along axis 0 to a number.
        resamples: Bootstrap resamples.
        confidence: Coverage.
        seed: Seed of the resampling.

    Returns:
        ``(low, high)``.

    Example:
        >>> bootstrap_interval(np.r_[np.ones(50), np.zeros(50)])
        (0.4..., 0.6...)
    """
    values = np.asarray(values, np.float64)
    if values.ndim == 0 or len(values) == 0:
        raise ValueError("bootstrap_interval needs a non-empty array of per-example values.")
    _z(confidence)  # Checks the range.
    rng = np.random.default_rng(seed)
    estimates = np.empty(resamples)
    for i in range(resamples):
        estimates[i] = statistic(values[rng.integers(0, len(values), len(values))])
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(estimates, [tail, 100 - tail])
    return float(low), float(high)


def seed_summary(values, test_count: int | None = None,
                 confidence: float = CONFIDENCE) -> dict:
    """Mean, spread and interval of one metric measured once per training seed.

    The interval of the mean covers two sources of noise, added in
    quadrature on each side of the mean:

    - the seeds: ``t * std / sqrt(k)``, with ``t`` the Student t quantile at
      ``k - 1`` degrees of freedom (12.7 for 2 seeds, 4.3 for 3: two seeds say
      little about the spread);
    - the test set (only with `test_count`): the distance from the mean to the
      ends of `wilson_interval` at the mean accuracy. Every seed is tested on
      the same images, so the seeds' spread does not contain this noise.

    With one seed the interval is the Wilson interval alone (the seeds' spread
    is unknown; ``std`` is None).

    Args:
        values: The metric per seed (accuracies as fractions).
        test_count: Test examples behind each accuracy (None for a metric
            that is not a test accuracy, e.g. U(n): then only the seeds count,
            and one seed gives no interval).
        confidence: Coverage.

    Returns:
        ``{"mean", "std" (sample std, ddof 1; None for one seed), "n" (seeds),
        "test_count", "ci95": [low, high] or None}``.

    Example:
        >>> seed_summary([0.50, 0.52], test_count=1000)["ci95"]
        [0.379..., 0.640...]
    """
    values = np.asarray([float(v) for v in values], np.float64)
    if len(values) == 0:
        raise ValueError("seed_summary needs at least one value.")
    k = len(values)
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if k > 1 else None
    seed_half = 0.0
    if k > 1:
        seed_half = float(scipy.stats.t.ppf((1 + confidence) / 2, k - 1)) * std / math.sqrt(k)
    key = f"ci{round(100 * confidence):d}"
    summary = {"mean": mean, "std": std, "n": k, "test_count": test_count, key: None}
    if test_count:
        low, high = wilson_interval(min(max(mean, 0.0), 1.0) * test_count, int(test_count),
                                    confidence)
        low, high = mean - low, high - mean
    elif k > 1:
        low = high = 0.0
    else:
        return summary
    summary[key] = [mean - math.hypot(low, seed_half), mean + math.hypot(high, seed_half)]
    if test_count:  # An accuracy stays a fraction.
        summary[key] = [max(0.0, summary[key][0]), min(1.0, summary[key][1])]
    return summary


def welch_difference(a, b, confidence: float = CONFIDENCE) -> dict:
    """``mean(a) - mean(b)`` for two independent sets of runs, with Welch's t-test.

    Welch's test does not assume the two spreads are equal (two libraries'
    seeds need not vary alike)::

        se  = sqrt(s_a^2 / n_a + s_b^2 / n_b)          (s: sample std, ddof 1)
        t   = (mean(a) - mean(b)) / se
        dof = se^4 / ((s_a^2 / n_a)^2 / (n_a - 1) + (s_b^2 / n_b)^2 / (n_b - 1))

    with the two-sided p-value of ``t`` under Student's t at ``dof`` degrees
    of freedom, and the interval ``difference +- t_q se`` (``t_q`` its
    ``(1 + confidence) / 2`` quantile). A large p says the runs cannot tell
    the difference from none, not that it is zero: read the interval.

    Args:
        a: One metric per run of the first set (at least 2 runs).
        b: The same metric per run of the second set (at least 2 runs).
        confidence: The interval's coverage.

    Returns:
        ``{"difference", "ci95": [low, high], "t", "dof", "p", "n": [n_a, n_b]}``;
        where both sets have no spread at all, ``t`` is 0 (equal means) or
        infinite, with p 1 or 0 and the interval the difference itself.

    Raises:
        ValueError: A set has fewer than 2 runs (no spread to test against).

    Example:
        >>> result = welch_difference([74.1, 75.0, 73.2, 74.4], [75.9, 76.3, 75.2, 76.0])
        >>> round(result["difference"], 2), result["p"] < 0.05
        (-1.67, True)
    """
    a = np.asarray([float(v) for v in a], np.float64)
    b = np.asarray([float(v) for v in b], np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"welch_difference needs at least 2 runs in each set, got "
                         f"{len(a)} and {len(b)}.")
    _z(confidence)  # Checks the range.
    difference = float(a.mean() - b.mean())
    var_a, var_b = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(var_a + var_b)
    key = f"ci{round(100 * confidence):d}"
    if se == 0:
        return {"difference": difference, key: [difference, difference],
                "t": 0.0 if difference == 0 else math.copysign(math.inf, difference),
                "dof": float(len(a) + len(b) - 2), "p": 1.0 if difference == 0 else 0.0,
                "n": [len(a), len(b)]}
    dof = (var_a + var_b) ** 2 / (var_a**2 / (len(a) - 1) + var_b**2 / (len(b) - 1))
    t = difference / se
    half = float(scipy.stats.t.ppf((1 + confidence) / 2, dof)) * se
    return {"difference": difference, key: [difference - half, difference + half],
            "t": float(t), "dof": float(dof), "p": float(2 * scipy.stats.t.sf(abs(t), dof)),
            "n": [len(a), len(b)]}


def intervals_overlap(a, b) -> bool:
    """Whether intervals `a` and `b` (``[low, high]`` each) share at least one point.

    Example:
        >>> intervals_overlap([0.40, 0.50], [0.48, 0.60]), intervals_overlap([0.1, 0.2], [0.3, 0.4])
        (True, False)
    """
    return bool(a[0] <= b[1] and b[0] <= a[1])
