"""evaluation/intervals.py: known cases, exact enumeration, and coverage at about the nominal rate in simulation."""
import math
from statistics import NormalDist

import numpy as np
import pytest

from evaluation import intervals as iv


def test_wilson_known_cases():
    # textbook values at 95%: 5/10 -> (0.2366, 0.7634); 0/10 -> (0, 0.2775); 10/10 -> (0.7225, 1)
    assert iv.wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    assert iv.wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert iv.wilson_interval(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-5)
    assert all(math.isnan(v) for v in iv.wilson_interval(0, 0))


def test_wilson_exact_coverage_by_enumeration():
    # exact coverage: the binomial probability of the counts whose interval holds p
    for p, n in ((0.3, 50), (0.05, 200), (0.5, 30), (0.9, 100)):
        coverage = sum(math.comb(n, k) * p ** k * (1 - p) ** (n - k)
                       for k in range(n + 1) if iv.wilson_interval(k, n)[0] <= p <= iv.wilson_interval(k, n)[1])
        assert 0.92 <= coverage <= 0.98, (p, n, coverage)


def test_resamples_draw_whole_puzzles_and_are_seeded():
    groups = np.array([7, 7, 7, 3, 3, 9])  # three puzzles with 3, 2 and 1 trajectories
    draws = list(iv.resamples(groups, 200, seed=5))
    for rows in draws:
        drawn = groups[rows]  # every drawn puzzle comes with all of its rows, in order
        assert all(np.array_equal(rows[i:i + 3], [0, 1, 2]) for i in np.flatnonzero(rows == 0))
        counts = {g: int((drawn == g).sum()) for g in np.unique(drawn)}
        assert all(c % {7: 3, 3: 2, 9: 1}[g] == 0 for g, c in counts.items())
        assert sum(c // {7: 3, 3: 2, 9: 1}[g] for g, c in counts.items()) == 3  # three units per resample
    assert all(np.array_equal(a, b) for a, b in zip(draws, iv.resamples(groups, 200, seed=5)))
    assert not all(np.array_equal(a, b) for a, b in zip(draws, iv.resamples(groups, 200, seed=6)))


def test_bootstrap_of_a_share_has_the_ideal_bootstrap_variance():
    # the ideal bootstrap of a mean of n 0/1 values has variance p (1 - p) / n; 20,000 draws come close
    flags = np.array([1] * 12 + [0] * 28, float)
    draws = np.array([flags[rows].mean() for rows in iv.resamples(np.arange(40), 20000, seed=0)])
    assert draws.mean() == pytest.approx(0.3, abs=0.003)
    assert draws.var() == pytest.approx(0.3 * 0.7 / 40, rel=0.05)


def test_percentile_interval_skips_undefined_draws():
    assert iv.percentile_interval([np.nan] + list(range(101)), 0.9) == pytest.approx((5.0, 95.0))
    assert all(math.isnan(v) for v in iv.percentile_interval([np.nan, np.nan]))


def test_paired_difference_of_identical_accuracies_is_zero_and_pairing_narrows():
    rng = np.random.default_rng(0)
    a = rng.random(200) < 0.6
    assert iv.paired_difference_interval(a, a, count=200) == (0.0, 0.0, 0.0)
    b = a.copy()
    b[:10] = ~b[:10]  # b differs from a on 10 puzzles only: the paired interval is far narrower
    difference, low, high = iv.paired_difference_interval(a, b, count=500)
    assert difference == pytest.approx(a.mean() - b.mean()) and low <= difference <= high
    unpaired = np.quantile([a[rng.integers(0, 200, 200)].mean() - b[rng.integers(0, 200, 200)].mean()
                            for _ in range(500)], [0.025, 0.975])
    assert high - low < 0.5 * (unpaired[1] - unpaired[0])


def test_share_interval_covers_at_the_nominal_rate():
    def interval(flags):
        return iv.share_interval(flags, count=200, seed=1)
    rate = np.mean([lo <= 0.3 <= hi for lo, hi in
                    (interval(np.random.default_rng(r).random(80) < 0.3)[1:] for r in range(300))])
    assert 0.90 <= rate <= 0.98, rate


def test_auc_interval_covers_at_the_nominal_rate():
    # failures ~ N(1, 1), successes ~ N(0, 1): the true AUC is Phi(1 / sqrt 2) = 0.760
    truth = NormalDist().cdf(1 / math.sqrt(2))
    hits = []
    for r in range(200):
        rng = np.random.default_rng(r)
        failed = np.r_[np.ones(40, bool), np.zeros(40, bool)]
        scores = np.where(failed, 1.0, 0.0) + rng.normal(size=80)
        auc, low, high = iv.auc_interval(scores, failed, count=200, seed=r)
        assert low <= auc <= high
        hits.append(low <= truth <= high)
    assert 0.89 <= np.mean(hits) <= 0.99, np.mean(hits)


def test_paired_difference_covers_at_the_nominal_rate():
    # two selection rules on the same puzzles, right with p 0.55 and 0.45, b right only where a is
    hits = []
    for r in range(200):
        u = np.random.default_rng(r).random(120)
        a, b = u < 0.55, u < 0.45
        difference, low, high = iv.paired_difference_interval(a, b, count=200, seed=r)
        hits.append(low <= 0.10 <= high)
    assert 0.89 <= np.mean(hits) <= 0.99, np.mean(hits)


def test_auc_interval_groups_trajectories_of_a_puzzle():
    # 20 puzzles x 5 identical trajectories: resampling rows would pretend to 100 independent draws
    rng = np.random.default_rng(3)
    scores, failed = rng.normal(size=20), rng.random(20) < 0.5
    scores[failed] += 0.5
    rows = lambda x: np.repeat(x, 5)
    _, low_g, high_g = iv.auc_interval(rows(scores), rows(failed), groups=rows(np.arange(20)), count=400)
    _, low_r, high_r = iv.auc_interval(rows(scores), rows(failed), count=400)
    assert high_g - low_g > 1.6 * (high_r - low_r)  # about sqrt(5) wider


@pytest.mark.parametrize("low,high,claimed,expected", [
    (0.02, 0.10, "above", "reproduces"), (-0.10, -0.02, "above", "does not reproduce"),
    (-0.02, 0.10, "above", "inconclusive"), (-0.10, -0.02, "below", "reproduces"),
    (0.02, 0.10, "below", "does not reproduce"), (float("nan"), 0.1, "above", "inconclusive")])
def test_verdict_on_a_sign(low, high, claimed, expected):
    assert iv.verdict(low, high, 0.0, claimed) == expected


def test_verdict_on_an_equality_needs_a_margin():
    assert iv.verdict(0.45, 0.58, 0.5, "equal", margin=0.1) == "reproduces"
    assert iv.verdict(0.55, 0.70, 0.5, "equal", margin=0.1) == "does not reproduce"
    assert iv.verdict(0.30, 0.62, 0.5, "equal", margin=0.1) == "inconclusive"
    assert iv.verdict(0.75, 0.80, 0.5, "above") == "reproduces"  # an AUC claimed to separate
    with pytest.raises(ValueError):
        iv.verdict(0.4, 0.6, 0.5, "equal")


def test_difference_interval_known_case_and_exact_coverage():
    # Newcombe (1998), Statistics in Medicine 17:873, method 10: 56/70 - 48/80 = 0.2000, 95% (0.0524, 0.3339)
    assert iv.difference_interval(56, 70, 48, 80) == pytest.approx((0.2, 0.0524, 0.3339), abs=1e-4)
    assert all(math.isnan(v) for v in iv.difference_interval(1, 0, 1, 5))
    binomial = lambda k, n, p: math.comb(n, k) * p ** k * (1 - p) ** (n - k)
    for p_a, p_b, n_a, n_b in ((0.3, 0.3, 30, 30), (0.6, 0.2, 25, 40), (0.05, 0.1, 60, 60)):
        coverage = sum(binomial(a, n_a, p_a) * binomial(b, n_b, p_b)
                       for a in range(n_a + 1) for b in range(n_b + 1)
                       if iv.difference_interval(a, n_a, b, n_b)[1] <= p_a - p_b <= iv.difference_interval(a, n_a, b, n_b)[2])
        assert 0.93 <= coverage <= 0.98, (p_a, p_b, coverage)
