"""AUCs and bins of evaluation/diagnostics_summary.py against brute-force pair counts."""
import numpy as np
import pytest

from evaluation import diagnostics_summary as ds


def brute_auc(failures, successes) -> float:
    pairs = [(f > s) + 0.5 * (f == s) for f in failures for s in successes]
    return sum(pairs) / len(pairs)


@pytest.mark.parametrize("seed", range(6))
def test_mann_whitney_auc_equals_the_pair_count(seed):
    rng = np.random.default_rng(seed)
    failures = rng.integers(0, 6, rng.integers(1, 30)).astype(float)  # small integers: many ties
    successes = rng.integers(0, 6, rng.integers(1, 30)).astype(float)
    assert ds.mann_whitney_auc(failures, successes) == pytest.approx(brute_auc(failures, successes), abs=1e-12)


def test_auc_ends():
    assert ds.mann_whitney_auc([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert ds.mann_whitney_auc([1.0], [2.0]) == 0.0
    assert ds.mann_whitney_auc([1.0, 1.0], [1.0]) == 0.5
    assert np.isnan(ds.mann_whitney_auc([], [1.0]))


@pytest.mark.parametrize("seed", range(4))
def test_stratified_auc_counts_pairs_within_a_stratum_only(seed):
    rng = np.random.default_rng(seed)
    n = 60
    score, failed, strata = rng.integers(0, 8, n).astype(float), rng.random(n) < 0.4, rng.integers(0, 4, n)
    pairs = [(score[i] > score[j]) + 0.5 * (score[i] == score[j])
             for i in range(n) for j in range(n) if failed[i] and not failed[j] and strata[i] == strata[j]]
    auc, count = ds.stratified_auc(score, failed, strata)
    assert count == len(pairs) and auc == pytest.approx(sum(pairs) / len(pairs), abs=1e-12)


def test_quantile_bins():
    assert ds.quantile_bins(np.array([40, 38, 40, 41]), 10).tolist() == [1, 0, 1, 2]  # few values: one bin each
    bins = ds.quantile_bins(np.arange(100.0), 10)
    assert np.bincount(bins).tolist() == [10] * 10 and (np.diff(bins) >= 0).all()


def test_roc_points_trace_the_auc():
    rng = np.random.default_rng(0)
    failures, successes = rng.normal(1, 1, 40), rng.normal(0, 1, 50)
    fpr, tpr = ds.roc_points(failures, successes)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(ds.mann_whitney_auc(failures, successes), abs=1e-12)
