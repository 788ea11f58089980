"""Statistical intervals for the project's measured claims, and the verdict a claim gets from one.

Every interval is two-sided at `level` (0.95 by default) and returned as (low, high).

- Bootstrap (percentile) intervals resample the independent units, puzzles, with replacement: every
  row (trajectory) of a drawn puzzle comes along, so B trajectories of one puzzle count as one draw.
  The statistic is recomputed on each of `count` resamples and the interval is the (1 - level) / 2
  and (1 + level) / 2 quantiles of those values. Seeded: the same inputs and seed give the same interval.
- Wilson's score interval for a proportion k / n (no resampling; sensible at k = 0 or k = n).
- A paired bootstrap interval for the difference of two accuracies measured on the same puzzles:
  both are recomputed on the same resample, so their correlation (shared easy and hard puzzles) is kept.
- Newcombe's interval for the difference of two accuracies known only by their counts (unpaired).

A verdict compares an interval with the value a claim is about (e.g. "difference > 0", "AUC > 0.5"):
wholly on the claimed side: reproduces; wholly on the other side: does not reproduce; spanning it: inconclusive.
"""
from statistics import NormalDist

import numpy as np


def mann_whitney_auc(failures, successes) -> float:
    """P(failure > success) + P(tie) / 2 from average ranks; NaN when either side is empty."""
    failures, successes = np.asarray(failures, float), np.asarray(successes, float)
    if not len(failures) or not len(successes):
        return float("nan")
    values = np.concatenate([failures, successes])
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2  # ranks 1..n, ties share their mean rank
    rank_sum = average_rank[inverse[:len(failures)]].sum()
    u = rank_sum - len(failures) * (len(failures) + 1) / 2
    return float(u / (len(failures) * len(successes)))


def resamples(groups, count: int, seed: int):
    """Yield `count` bootstrap resamples as row-index arrays: as many units (distinct values of `groups`)
    as there are, drawn with replacement, each bringing all of its rows in their original order."""
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(inverse == u) for u in range(inverse.max() + 1)] if len(inverse) else []
    rng = np.random.default_rng(seed)
    for _ in range(count):
        picks = rng.integers(0, len(members), len(members))
        yield np.concatenate([members[u] for u in picks]) if len(members) else np.zeros(0, dtype=int)


def percentile_interval(draws, level: float = 0.95) -> tuple[float, float]:
    """The central `level` quantiles of bootstrap draws; draws that are NaN (e.g. a resample with no
    failure, where an AUC is undefined) are left out; (NaN, NaN) when none is finite."""
    draws = np.asarray(draws, float)
    draws = draws[np.isfinite(draws)]
    if not len(draws):
        return float("nan"), float("nan")
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def bootstrap_interval(statistic, groups, count: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """statistic(row indices) -> float, recomputed on `count` resamples of the units in `groups`."""
    return percentile_interval([statistic(rows) for rows in resamples(groups, count, seed)], level)


def auc_interval(scores, failed, groups=None, count: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float, float]:
    """(AUC of failures vs successes, low, high); groups: each row's puzzle (default: rows are independent)."""
    scores, failed = np.asarray(scores, float), np.asarray(failed, bool)
    auc = lambda rows: mann_whitney_auc(scores[rows][failed[rows]], scores[rows][~failed[rows]])
    groups = np.arange(len(scores)) if groups is None else groups
    return (auc(np.arange(len(scores))), *bootstrap_interval(auc, groups, count, seed, level))


def share_interval(flags, groups=None, count: int = 1000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float, float]:
    """(share of True among the rows, low, high), resampling puzzles (default: every row its own)."""
    flags = np.asarray(flags, float)
    share = lambda rows: float(flags[rows].mean()) if len(rows) else float("nan")
    groups = np.arange(len(flags)) if groups is None else groups
    return (share(np.arange(len(flags))), *bootstrap_interval(share, groups, count, seed, level))


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval for a proportion successes / n; (NaN, NaN) when n = 0."""
    if n == 0:
        return float("nan"), float("nan")
    z = NormalDist().inv_cdf((1 + level) / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def difference_interval(successes_a: int, n_a: int, successes_b: int, n_b: int,
                        level: float = 0.95) -> tuple[float, float, float]:
    """(a / n_a - b / n_b, low, high) for two independent proportions known only by their counts: Newcombe's
    hybrid score interval (his method 10), built from the two Wilson intervals. Measured on the same puzzles
    the two are positively correlated, so this is wider than the paired interval would be."""
    if not n_a or not n_b:
        return float("nan"), float("nan"), float("nan")
    p_a, p_b = successes_a / n_a, successes_b / n_b
    (low_a, high_a), (low_b, high_b) = wilson_interval(successes_a, n_a, level), wilson_interval(successes_b, n_b, level)
    difference = p_a - p_b
    return (difference, difference - float(np.hypot(p_a - low_a, high_b - p_b)),
            difference + float(np.hypot(high_a - p_a, p_b - low_b)))


def paired_difference_interval(correct_a, correct_b, groups=None, count: int = 1000, seed: int = 0,
                               level: float = 0.95) -> tuple[float, float, float]:
    """(accuracy of a - accuracy of b, low, high), a and b scored on the same rows (puzzles)."""
    difference = np.asarray(correct_a, float) - np.asarray(correct_b, float)
    return share_interval(difference, groups, count, seed, level)  # the mean of per-row differences


def verdict(low: float, high: float, null: float = 0.0, claimed: str = "above", margin: float | None = None) -> str:
    """What an interval says of a claim about a quantity, relative to `null`.

    claimed "above" (the claim: quantity > null) or "below": reproduces when the whole interval is on the
    claimed side, does not reproduce when it is wholly on the other, inconclusive when it spans null.
    claimed "equal" (the claim: quantity = null, e.g. "AUC about 0.5"): reproduces when the interval lies
    within null +- margin, does not reproduce when it excludes null, inconclusive otherwise (too wide).
    """
    if not (np.isfinite(low) and np.isfinite(high)):
        return "inconclusive"
    if claimed == "equal":
        if margin is None:
            raise ValueError("verdict: claimed='equal' needs a margin")
        if null - margin <= low and high <= null + margin:
            return "reproduces"
        return "does not reproduce" if low > null or high < null else "inconclusive"
    if claimed not in ("above", "below"):
        raise ValueError(f"verdict: claimed must be above, below or equal, got {claimed!r}")
    above, below = low > null, high < null
    if not (above or below):
        return "inconclusive"
    return "reproduces" if above == (claimed == "above") else "does not reproduce"
