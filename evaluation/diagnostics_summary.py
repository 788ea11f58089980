"""diagnostics.csv (the one owner of its format), the outcome-conditioned summary and the plots of diagnose.py.

Every AUC here is the Mann-Whitney statistic P(score of a failure > score of a success) + P(tie) / 2,
so 1.0 means the score alone separates failures (high) from successes (low) and 0.5 means it carries
no information; an AUC below 0.5 means successes score higher (e.g. halting confidence q).
"""
import csv
import io
import os

import numpy as np

from evaluation.render import save_figure
from utils.files import atomic_write


def columns(depth: int, k: int) -> list[str]:
    per_segment = lambda name: [f"{name}_{t}" for t in range(1, depth + 1)]
    return (["puzzle", "trajectory", "solved", "givens", "to_fill", *[f"lyap_{i}" for i in range(1, k + 1)],
             "lyap1_prefix", *per_segment("disp"), *per_segment("reldisp"), *per_segment("q_halt"),
             *per_segment("solved")])


def write_csv(path: str, table: dict[str, np.ndarray]) -> None:
    """table: column -> array [rows], in columns() order; one row per (puzzle, trajectory)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(list(table))
    for row in zip(*table.values()):
        writer.writerow([int(v) if isinstance(v, (np.integer, np.bool_)) else repr(float(v)) for v in row])
    atomic_write(path, out.getvalue())


def read_csv(path: str) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return {name: np.array([float(r[i]) for r in rows[1:]]) for i, name in enumerate(rows[0])}


# ----------------------------------------------------------------------------- statistics

def mann_whitney_auc(failures: np.ndarray, successes: np.ndarray) -> float:
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


def stratified_auc(score: np.ndarray, failed: np.ndarray, strata: np.ndarray) -> tuple[float, int]:
    """AUC over (failure, success) pairs in the same stratum only -> (AUC, number of such pairs)."""
    concordant, pairs = 0.0, 0
    for s in np.unique(strata):
        inside = strata == s
        f, ok = score[inside & failed], score[inside & ~failed]
        if len(f) and len(ok):
            concordant += mann_whitney_auc(f, ok) * len(f) * len(ok)
            pairs += len(f) * len(ok)
    return (concordant / pairs if pairs else float("nan")), pairs


def quantile_bins(values: np.ndarray, bins: int) -> np.ndarray:
    """Bin index per value: the distinct values themselves when there are at most `bins`, else quantile bins."""
    distinct = np.unique(values)
    if len(distinct) <= bins:
        return np.searchsorted(distinct, values)
    edges = np.quantile(values, np.arange(1, bins) / bins)
    return np.searchsorted(edges, values, side="right")


def _auc_entry(score, failed) -> dict:
    return {"auc": mann_whitney_auc(score[failed], score[~failed]), "failures": int(failed.sum()),
            "successes": int((~failed).sum())}


def summarise(table: dict[str, np.ndarray], depth: int, prefix: int, settle_threshold: float | None,
              settle_window: int, difficulty_bins: int = 10) -> dict:
    """The outcome-conditioned measures of docs/diagnostics.md, each with the counts it rests on."""
    failed = table["solved"] == 0
    lyap1 = table["lyap_1"]
    final = table[f"reldisp_{depth}"]
    window = np.stack([table[f"reldisp_{t}"] for t in range(max(1, depth - settle_window + 1), depth + 1)], 1)
    mobility = window.max(1)  # the largest relative displacement over the last segments
    if settle_threshold is None:  # the band 95% of the successes end in
        settle_threshold = float(np.quantile(mobility[~failed], 0.95)) if (~failed).any() else float("nan")
    settled = mobility <= settle_threshold
    unsettled = ~settled
    summary = {
        "trajectories": len(failed), "puzzles": len(np.unique(table["puzzle"])),
        "failures": int(failed.sum()), "successes": int((~failed).sum()), "depth": depth,
        "median_lyap_1": {"failures": float(np.median(lyap1[failed])) if failed.any() else None,
                          "successes": float(np.median(lyap1[~failed])) if (~failed).any() else None},
        "median_final_reldisp": {"failures": float(np.median(final[failed])) if failed.any() else None,
                                 "successes": float(np.median(final[~failed])) if (~failed).any() else None},
        "auc_lyap_1": _auc_entry(lyap1, failed),
        "auc_final_reldisp": _auc_entry(final, failed),
        "settling": {
            "rule": f"relative displacement <= {settle_threshold:.6g} in each of the last {window.shape[1]} segments",
            "threshold": settle_threshold, "window": int(window.shape[1]),
            "failures_settled": float(settled[failed].mean()) if failed.any() else None,
            "successes_settled": float(settled[~failed].mean()) if (~failed).any() else None,
            "successes_slower_than_least_mobile_failure": (float((final[~failed] < final[failed].min()).mean())
                                                           if failed.any() and (~failed).any() else None),
        },
    }
    deciles = np.zeros(len(failed), dtype=int)
    deciles[unsettled] = quantile_bins(final[unsettled], 10) if unsettled.any() else []
    auc, pairs = stratified_auc(lyap1[unsettled], failed[unsettled], deciles[unsettled])
    summary["decile_matched_auc_lyap_1_unsettled"] = {
        "auc": auc, "pairs": pairs, "trajectories": int(unsettled.sum()),
        "failures": int((failed & unsettled).sum()), "successes": int((~failed & unsettled).sum()),
        "rule": "unsettled trajectories, binned by deciles of final relative displacement; pairs within a bin"}
    bins = quantile_bins(table["to_fill"], difficulty_bins)
    auc, pairs = stratified_auc(lyap1, failed, bins)
    summary["within_difficulty_bin_auc_lyap_1"] = {
        "auc": auc, "pooled_auc": summary["auc_lyap_1"]["auc"], "pairs": pairs, "bins": int(len(np.unique(bins))),
        "rule": f"bins of to_fill (cells to fill: Sudoku blanks, maze path cells), distinct values or {difficulty_bins} "
                f"quantile bins; pairs within a bin"}
    if depth > prefix:
        unsolved = table[f"solved_{prefix}"] == 0
        f = failed[unsolved]
        summary["prefix"] = {
            "segments": prefix, "trajectories": int(unsolved.sum()), "failures": int(f.sum()),
            "successes": int((~f).sum()),
            "auc_lyap_1": mann_whitney_auc(table["lyap1_prefix"][unsolved][f], table["lyap1_prefix"][unsolved][~f]),
            "auc_reldisp": mann_whitney_auc(table[f"reldisp_{prefix}"][unsolved][f],
                                            table[f"reldisp_{prefix}"][unsolved][~f]),
            "auc_q_halt": mann_whitney_auc(table[f"q_halt_{prefix}"][unsolved][f], table[f"q_halt_{prefix}"][unsolved][~f]),
            "rule": f"trajectories not solved after {prefix} segments; scores from those segments; outcome at {depth}"}
    return summary


def format_summary(s: dict) -> str:
    """The headline measures, one per line, for the terminal."""
    number = lambda v: "-" if v is None or v != v else f"{v:.3f}"
    settle, matched, binned = s["settling"], s["decile_matched_auc_lyap_1_unsettled"], s["within_difficulty_bin_auc_lyap_1"]
    lines = [f"{s['trajectories']} trajectories ({s['puzzles']} puzzles): {s['successes']} solved, {s['failures']} failed "
             f"at segment {s['depth']}",
             f"median lambda_1: failures {number(s['median_lyap_1']['failures'])}, "
             f"successes {number(s['median_lyap_1']['successes'])}; AUC {number(s['auc_lyap_1']['auc'])}",
             f"final relative displacement: AUC {number(s['auc_final_reldisp']['auc'])}",
             f"settled ({settle['rule']}): failures {number(settle['failures_settled'])}, "
             f"successes {number(settle['successes_settled'])}",
             f"decile-matched AUC of lambda_1 among the unsettled: {number(matched['auc'])} ({matched['pairs']} pairs)",
             f"within-difficulty-bin AUC of lambda_1: {number(binned['auc'])} vs pooled {number(binned['pooled_auc'])}"]
    if "prefix" in s:
        p = s["prefix"]
        lines.append(f"unsolved after {p['segments']} segments ({p['trajectories']}): AUC lambda_1 {number(p['auc_lyap_1'])}, "
                     f"displacement {number(p['auc_reldisp'])}, q_halt {number(p['auc_q_halt'])}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots

def roc_points(failures: np.ndarray, successes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) as the threshold falls; failures are the positives."""
    thresholds = np.unique(np.concatenate([failures, successes]))[::-1]
    tpr = [0.0] + [float((failures >= t).mean()) for t in thresholds]
    fpr = [0.0] + [float((successes >= t).mean()) for t in thresholds]
    return np.array(fpr), np.array(tpr)


def write_plots(output_dir: str, table: dict[str, np.ndarray], depth: int, prefix: int) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    failed = table["solved"] == 0
    outcomes = [(~failed, "solved", "tab:blue"), (failed, "failed", "tab:red")]
    written = []

    def finish(name, xlabel, ylabel, title) -> str:  # label, save and close the current figure
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=7)
        path = os.path.join(output_dir, name)
        save_figure(fig, path)
        plt.close(fig)
        return path

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    segments = np.arange(1, depth + 1)
    reldisp = np.stack([table[f"reldisp_{t}"] for t in segments], 1)
    for rows, label, colour in outcomes:
        if rows.any():
            q1, median, q3 = np.quantile(reldisp[rows], [0.25, 0.5, 0.75], axis=0)
            ax.plot(segments, median, color=colour, label=f"{label} ({rows.sum()}), median")
            ax.fill_between(segments, q1, q3, color=colour, alpha=0.25)
    ax.set_yscale("log")
    written.append(finish("displacement_by_outcome.png", "segment (supervision step)",
                          "relative displacement of (z_H, z_L)", "displacement per segment by outcome (median, quartiles)"))

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for rows, label, colour in outcomes:
        ax.scatter(table[f"reldisp_{depth}"][rows], table["lyap_1"][rows], s=8, color=colour, label=label, alpha=0.6)
    ax.set_xscale("log")
    written.append(finish("lyap1_vs_displacement.png", f"final relative displacement (segment {depth})",
                          "finite-time lambda_1 (per segment)", "leading exponent vs final displacement"))

    fig, ax = plt.subplots(figsize=(5, 5))
    scores = [("lambda_1", table["lyap_1"], np.ones_like(failed)),
              ("final displacement", table[f"reldisp_{depth}"], np.ones_like(failed))]
    if depth > prefix:
        unsolved = table[f"solved_{prefix}"] == 0
        scores += [(f"lambda_1, first {prefix} (unsolved at {prefix})", table["lyap1_prefix"], unsolved),
                   (f"displacement at {prefix} (unsolved at {prefix})", table[f"reldisp_{prefix}"], unsolved)]
    for name, score, rows in scores:
        f, ok = score[rows & failed], score[rows & ~failed]
        if len(f) and len(ok):
            ax.plot(*roc_points(f, ok), label=f"{name}: AUC {mann_whitney_auc(f, ok):.3f}")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    written.append(finish("roc.png", "successes flagged (false positive rate)", "failures flagged (true positive rate)",
                          "predicting failure"))
    return written
