"""AUCs and bins of evaluation/diagnostics_summary.py against brute-force pair counts."""
import numpy as np
import pytest

from evaluation import diagnostics_summary as ds
from evaluation.intervals import mann_whitney_auc


def brute_auc(failures, successes) -> float:
    pairs = [(f > s) + 0.5 * (f == s) for f in failures for s in successes]
    return sum(pairs) / len(pairs)


@pytest.mark.parametrize("seed", range(6))
def test_mann_whitney_auc_equals_the_pair_count(seed):
    rng = np.random.default_rng(seed)
    failures = rng.integers(0, 6, rng.integers(1, 30)).astype(float)  # small integers: many ties
    successes = rng.integers(0, 6, rng.integers(1, 30)).astype(float)
    assert mann_whitney_auc(failures, successes) == pytest.approx(brute_auc(failures, successes), abs=1e-12)


def test_auc_ends():
    assert mann_whitney_auc([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert mann_whitney_auc([1.0], [2.0]) == 0.0
    assert mann_whitney_auc([1.0, 1.0], [1.0]) == 0.5
    assert np.isnan(mann_whitney_auc([], [1.0]))


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
    assert area == pytest.approx(mann_whitney_auc(failures, successes), abs=1e-12)


# ----------------------------------------------------------------------------- the summary's controls, brute force

def synthetic_table(seed: int, puzzles: int = 40, breadth: int = 1, depth: int = 8, k: int = 2) -> dict:
    """A diagnostics table as diagnose.py writes it (sorted by puzzle, trajectory), with random values."""
    rng = np.random.default_rng(seed)
    rows = puzzles * breadth
    table = {"puzzle": np.repeat(rng.permutation(1000)[:puzzles] * 3, breadth),
             "trajectory": np.tile(np.arange(breadth), puzzles)}
    order = np.argsort(table["puzzle"], kind="stable")
    table = {name: value[order] for name, value in table.items()}
    solved_t = np.cumsum(rng.random((rows, depth)) < 0.15, 1) > 0
    table.update({"solved": solved_t[:, -1].astype(np.int64), "givens": rng.integers(20, 30, rows),
                  "to_fill": rng.integers(51, 54, rows)})
    lyap = np.sort(rng.normal(size=(rows, k)) - 0.5 * table["solved"][:, None], 1)[:, ::-1]
    table.update({f"lyap_{i + 1}": lyap[:, i] for i in range(k)})
    table["lyap_sum"], table["lyap1_prefix"] = lyap.sum(1), rng.normal(size=rows)
    reldisp = np.round(rng.random((rows, depth)) * np.exp(-np.arange(depth) * (0.2 + 0.3 * table["solved"][:, None])), 3)
    for t in range(depth):
        table[f"disp_{t + 1}"] = reldisp[:, t] * 7
    table.update({f"reldisp_{t + 1}": reldisp[:, t] for t in range(depth)})
    table.update({f"q_halt_{t + 1}": np.round(rng.normal(size=rows) + table["solved"], 1) for t in range(depth)})
    table.update({f"solved_{t + 1}": solved_t[:, t].astype(np.int64) for t in range(depth)})
    return table


def summary_of(table, depth=8, prefix=3, threshold=None, window=3, resamples=20, **kw):
    return ds.summarise(table, depth, prefix, threshold, window, resamples=resamples, **kw)


@pytest.mark.parametrize("seed", range(3))
def test_held_out_band_and_confident_failures_match_a_loop(seed):
    table, depth, window = synthetic_table(seed), 8, 3
    s = summary_of(table, depth=depth, window=window, threshold=0.05)["settling"]
    n = len(table["solved"])
    mobility = [max(table[f"reldisp_{t}"][i] for t in range(depth - window + 1, depth + 1)) for i in range(n)]
    calibration = [i for i in range(n) if table["solved"][i] and table["puzzle"][i] % 2 == 0]
    band = np.quantile([mobility[i] for i in calibration], 0.95)
    judged = [i for i in range(n) if i not in calibration]
    failures = [i for i in judged if not table["solved"][i]]
    successes = [i for i in judged if table["solved"][i]]
    held = s["held_out"]
    assert held["band"] == band and held["judged_failures"] == len(failures) == n - sum(table["solved"])
    assert held["share_failures_settled"] == pytest.approx(np.mean([mobility[i] <= band for i in failures]))
    assert held["share_successes_settled"] == pytest.approx(np.mean([mobility[i] <= band for i in successes]))
    confident = [i for i in failures if mobility[i] <= band and table[f"q_halt_{depth}"][i] > 0]
    assert held["failures_settled_confident"] == len(confident)
    assert held["share_failures_settled_confident"] == pytest.approx(len(confident) / len(failures))
    assert s["fixed"]["share_failures_settled"] == pytest.approx(np.mean([mobility[i] <= 0.05 for i in failures]))
    for point in s["curve"]:
        all_failures = [i for i in range(n) if not table["solved"][i]]
        assert point["share_failures_settled"] == pytest.approx(
            np.mean([mobility[i] <= point["threshold"] for i in all_failures]))
    curve = [p["share_successes_settled"] for p in s["curve"]]
    assert curve == sorted(curve) and curve[-1] == 1.0  # the grid spans every value


@pytest.mark.parametrize("seed", range(3))
def test_displacement_matched_control_matches_a_loop(seed):
    table, depth = synthetic_table(seed, puzzles=80), 8
    s = summary_of(table, depth=depth, match_segment=5)
    band, matched = s["settling"]["held_out"]["band"], s["decile_matched_auc_lyap_1_unsettled"]
    moving = table["reldisp_5"]
    unsettled = [i for i in range(len(moving)) if moving[i] > band]
    edges = np.quantile(moving[unsettled], np.arange(1, 10) / 10)
    decile = {i: sum(moving[i] >= e for e in edges) for i in unsettled}
    if len(np.unique(moving[unsettled])) <= 10:  # few distinct values: one bin each
        decile = {i: int(np.searchsorted(np.unique(moving[unsettled]), moving[i])) for i in unsettled}
    pairs = [(table["lyap_1"][i] > table["lyap_1"][j]) + 0.5 * (table["lyap_1"][i] == table["lyap_1"][j])
             for i in unsettled for j in unsettled
             if not table["solved"][i] and table["solved"][j] and decile[i] == decile[j]]
    assert matched["pairs"] == len(pairs) > 0 and matched["auc"] == pytest.approx(np.mean(pairs))
    assert matched["trajectories"] == len(unsettled) and matched["segment"] == 5


def test_final_q_halt_and_sum_aucs_are_pair_counts():
    table = synthetic_table(7)
    s = summary_of(table)
    failed = table["solved"] == 0
    for key, column in (("auc_final_q_halt", "q_halt_8"), ("auc_lyap_sum", "lyap_sum")):
        assert s[key]["auc"] == pytest.approx(brute_auc(table[column][failed], table[column][~failed]))


@pytest.mark.parametrize("seed", range(3))
def test_restarts_vs_pruning_match_a_loop(seed):
    breadth, depth, prefix = 9, 8, 3
    table = synthetic_table(seed, puzzles=30, breadth=breadth, depth=depth)
    rows = [{key: np.mean(v) if isinstance(v, np.ndarray) else v for key, v in row.items()}  # per puzzle -> mean
            for row in ds.restart_and_pruning_rows(table, depth, prefix)]
    # b restarts cost b * 8 segments; pruning n of them after 3 costs 3 n + 5 <= 8 b: n = 1, 3, 6, 9 for b = 1..4
    assert [(r["restarts"], r["pruned_from"], r["nfe_pruning"]) for r in rows] == [(1, 1, 8), (2, 3, 14), (3, 6, 23), (4, 9, 32)]
    puzzles = [slice(p * breadth, (p + 1) * breadth) for p in range(30)]

    def best(column, p, n, sign):  # the lowest sign * score among the first n; ties: the first
        scores = list(sign * table[column][puzzles[p]][:n])
        return table["solved"][puzzles[p]][scores.index(min(scores))]

    for r in rows:
        b, n = r["restarts"], r["pruned_from"]
        restart_q = [best(f"q_halt_{depth}", p, b, -1) for p in range(30)]
        assert r["accuracy_restarts_q_halt"] == pytest.approx(np.mean(restart_q))
        assert r["accuracy_restarts_displacement"] == pytest.approx(np.mean([best(f"reldisp_{depth}", p, b, 1)
                                                                              for p in range(30)]))
        assert r["accuracy_restarts_any"] == pytest.approx(np.mean([table["solved"][puzzles[p]][:b].any()
                                                                     for p in range(30)]))
        for signal, column, sign in (("lyap_1", "lyap1_prefix", 1), ("reldisp", f"reldisp_{prefix}", 1),
                                     ("q_halt", f"q_halt_{prefix}", -1)):
            pruned = [best(column, p, n, sign) for p in range(30)]
            assert r[f"accuracy_pruning_{signal}"] == pytest.approx(np.mean(pruned))
            assert r[f"difference_pruning_{signal}_minus_restarts_q_halt"] == pytest.approx(
                np.mean(pruned) - np.mean(restart_q))
    assert ds.restart_and_pruning_rows(synthetic_table(0), depth, prefix) == []  # one trajectory per puzzle


def test_every_auc_and_share_has_a_seeded_interval():
    table = synthetic_table(4, puzzles=30, breadth=5)
    s = summary_of(table, resamples=50, seed=3, threshold=0.1)
    found = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key.startswith(("auc", "share_", "accuracy_", "difference_")) and not key.endswith("_ci95") \
                        and isinstance(value, float) and value == value:
                    low, high = node[f"{key}_ci95"]
                    assert low <= high and (key.startswith("difference_") or 0 <= low <= high <= 1)
                    found.append(key)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(s)
    assert {"auc", "auc_q_halt", "share_failures_settled", "share_failures_settled_confident", "accuracy_pruning_q_halt",
            "accuracy_restarts_any", "difference_pruning_reldisp_minus_restarts_q_halt"} <= set(found)
    binned = s["within_difficulty_bin_auc_lyap_1"]
    assert binned["difference_within_minus_pooled"] == pytest.approx(binned["auc"] - binned["pooled_auc"])
    assert len(s["auc_final_q_halt"]["auc_ci95"]) == len(s["settling"]["curve"][3]["share_failures_settled_ci95"]) == 2
    again = summary_of(table, resamples=50, seed=3, threshold=0.1)
    assert again == s
    other = summary_of(table, resamples=50, seed=4, threshold=0.1)
    assert other["auc_lyap_1"]["auc"] == s["auc_lyap_1"]["auc"]
    assert other["auc_lyap_1"]["auc_ci95"] != s["auc_lyap_1"]["auc_ci95"]
    assert "failures settled with q_halt > 0" in ds.format_summary(s)
