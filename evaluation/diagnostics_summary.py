"""diagnostics.csv (the one owner of its format), the outcome-conditioned summary and the plots of diagnose.py.

Every AUC here is the Mann-Whitney statistic P(score of a failure > score of a success) + P(tie) / 2,
so 1.0 means the score alone separates failures (high) from successes (low) and 0.5 means it carries
no information; an AUC below 0.5 means successes score higher (e.g. halting confidence q).
"""
import csv
import io
import os

import numpy as np

from evaluation.intervals import mann_whitney_auc, percentile_interval, resamples as resample_rows
from evaluation.render import save_figure
from utils.errors import ConfigError
from utils.files import atomic_write


def columns(depth: int, k: int) -> list[str]:
    """The header of diagnostics.csv. lyap_i, lyap_sum (of the k computed) and lyap1_prefix are finite-time
    exponents in natural log per segment; disp_t is an L2 norm of the joint state, reldisp_t = disp_t / |x_{t-1}|."""
    per_segment = lambda name: [f"{name}_{t}" for t in range(1, depth + 1)]
    return (["puzzle", "trajectory", "solved", "givens", "to_fill", *[f"lyap_{i}" for i in range(1, k + 1)],
             "lyap_sum", "lyap1_prefix", *per_segment("disp"), *per_segment("reldisp"), *per_segment("q_halt"),
             *per_segment("solved")])


def write_csv(path: str, table: dict[str, np.ndarray]) -> None:
    """table: column -> array [rows], in columns() order; one row per (puzzle, trajectory)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(list(table))
    for row in zip(*table.values()):
        writer.writerow([int(v) if isinstance(v, (np.integer, np.bool_)) else repr(float(v)) for v in row])
    atomic_write(path, out.getvalue())


def read_csv(path: str) -> tuple[dict[str, np.ndarray], int, int]:
    """diagnostics.csv -> (table, depth, k), the header checked against columns(depth, k)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror or e})") from None
    header = rows[0] if rows else []
    depth = sum(name.startswith("disp_") for name in header)
    k = sum(name.startswith("lyap_") and name[5:].isdigit() for name in header)
    if not depth or header != columns(depth, k):
        raise ConfigError(f"{path}: not a diagnostics.csv of this version (expected the columns puzzle, trajectory, "
                          f"solved, ..., lyap_1..lyap_k, lyap_sum, lyap1_prefix, disp_1..disp_D, ...)")
    try:
        table = {name: np.array([float(r[i]) for r in rows[1:]]) for i, name in enumerate(header)}
    except (ValueError, IndexError):
        raise ConfigError(f"{path}: a row that is not {len(header)} numbers") from None
    for name in ("puzzle", "trajectory", "solved", "givens", "to_fill", *[f"solved_{t}" for t in range(1, depth + 1)]):
        table[name] = table[name].astype(np.int64)
    return table, depth, k


# ----------------------------------------------------------------------------- statistics

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


def _share(flags: np.ndarray) -> float:
    return float(flags.mean()) if len(flags) else float("nan")


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if len(values) else float("nan")


def _auc_entry(score, failed) -> dict:
    return {"auc": mann_whitney_auc(score[failed], score[~failed]), "failures": int(failed.sum()),
            "successes": int((~failed).sum())}


def tail_mobility(table: dict, measure: str, last: int, window: int) -> np.ndarray:
    """The largest `measure` (reldisp or disp) over segments last - window + 1 .. last, per row."""
    return np.stack([table[f"{measure}_{t}"] for t in range(max(1, last - window + 1), last + 1)], 1).max(1)


def threshold_grid(values: np.ndarray, per_decade: int = 8) -> np.ndarray:
    """Fixed thresholds for the sensitivity curve: whole decades spanning the positive values, `per_decade` each."""
    positive = values[values > 0]
    if not len(positive):
        return np.array([0.0])
    low, high = np.floor(np.log10(positive.min())), np.ceil(np.log10(positive.max()))
    return 10.0 ** np.linspace(low, high, int(high - low) * per_decade + 1)


def restart_and_pruning_rows(table: dict, depth: int, prefix: int) -> list[dict]:
    """Per-puzzle 0/1 accuracy of B restarts and of pruning after `prefix` segments, at (about) the same NFE.

    NFE counts segments per puzzle. Restarts: b trajectories run to `depth` (b * depth), one answer picked by
    the highest final q_halt, by the least final relative displacement, or any right (pass@b, an oracle).
    Pruning: n trajectories run `prefix` segments, the best by one early signal (lowest lambda_1 over them,
    lowest relative displacement at `prefix`, highest q_halt at `prefix`) runs on to `depth`:
    n * prefix + depth - prefix, with n the most that fits in b * depth. Rows must be sorted by
    (puzzle, trajectory), every puzzle with the same B trajectories (as diagnose.py writes them).
    """
    breadth = int(table["trajectory"].max()) + 1 if len(table["trajectory"]) else 0
    if breadth < 2 or depth <= prefix or len(table["trajectory"]) % breadth:
        return []
    per_puzzle = lambda name: np.asarray(table[name]).reshape(-1, breadth)
    solved = per_puzzle("solved").astype(bool)
    early = {"lyap_1": per_puzzle("lyap1_prefix"), "reldisp": per_puzzle(f"reldisp_{prefix}"),
             "q_halt": -per_puzzle(f"q_halt_{prefix}")}  # lower = more promising, for each
    final_q, final_move = -per_puzzle(f"q_halt_{depth}"), per_puzzle(f"reldisp_{depth}")
    pick = lambda score, n: np.take_along_axis(solved[:, :n], np.argmin(score[:, :n], 1)[:, None], 1)[:, 0]
    rows = []
    for b in range(1, breadth + 1):  # b = 1: one trajectory, the baseline both spend more on
        n = (b * depth - (depth - prefix)) // prefix
        if n > breadth:
            break
        row = {"restarts": b, "nfe_restarts": b * depth, "pruned_from": n, "nfe_pruning": n * prefix + depth - prefix,
               "accuracy_restarts_q_halt": pick(final_q, b), "accuracy_restarts_displacement": pick(final_move, b),
               "accuracy_restarts_any": solved[:, :b].any(1)}
        for signal, score in early.items():
            row[f"accuracy_pruning_{signal}"] = pick(score, n)
            row[f"difference_pruning_{signal}_minus_restarts_q_halt"] = (pick(score, n).astype(float)
                                                                          - row["accuracy_restarts_q_halt"])
        rows.append(row)
    return rows


def measures(table: dict, depth: int, prefix: int, settle_threshold: float | None, settle_window: int,
             settle_measure: str, match_segment: int, thresholds: np.ndarray, difficulty_bins: int) -> dict:
    """Every measure of docs/diagnostics.md on one table (the data, or one bootstrap resample of it)."""
    failed = table["solved"] == 0
    lyap1 = table["lyap_1"]
    final = table[f"{settle_measure}_{depth}"]
    mobility = tail_mobility(table, settle_measure, depth, settle_window)
    window = min(settle_window, depth)
    # The band: 95% of the successes of the even-numbered puzzles end in it; it is judged on every other
    # trajectory, so that the successes' share inside it is not 95% by construction.
    calibration = ~failed & (table["puzzle"] % 2 == 0)
    band = float(np.quantile(mobility[calibration], 0.95)) if calibration.any() else float("nan")
    settled, judged = mobility <= band, ~calibration
    in_band = lambda flags: _share(flags) if band == band else float("nan")  # no calibration successes: no band
    final_q = table[f"q_halt_{depth}"]
    summary = {
        "trajectories": len(failed), "puzzles": len(np.unique(table["puzzle"])),
        "failures": int(failed.sum()), "successes": int((~failed).sum()), "depth": depth,
        "median_lyap_1": {"failures": _median(lyap1[failed]), "successes": _median(lyap1[~failed])},
        "median_lyap_sum": {"failures": _median(table["lyap_sum"][failed]),
                            "successes": _median(table["lyap_sum"][~failed])},
        "median_final_reldisp": {"failures": _median(table[f"reldisp_{depth}"][failed]),
                                 "successes": _median(table[f"reldisp_{depth}"][~failed])},
        "auc_lyap_1": _auc_entry(lyap1, failed),
        "auc_lyap_sum": _auc_entry(table["lyap_sum"], failed),
        "auc_final_reldisp": _auc_entry(table[f"reldisp_{depth}"], failed),
        "auc_final_q_halt": _auc_entry(final_q, failed),
    }
    summary["settling"] = {
        "measure": settle_measure, "tail_segments": window,
        "held_out": {
            "rule": f"{settle_measure} <= the band in each of the last {window} segments; band: the 95th percentile of "
                    f"that largest value over the successes of even-numbered puzzles; judged on all other trajectories",
            "band": band, "calibration_successes": int(calibration.sum()),
            "judged_failures": int((judged & failed).sum()), "judged_successes": int((judged & ~failed).sum()),
            "share_failures_settled": in_band(settled[judged & failed]),
            "share_successes_settled": in_band(settled[judged & ~failed]),
            "failures_settled_confident": int((settled & failed & (final_q > 0)).sum()),
            "share_failures_settled_confident": in_band((settled & (final_q > 0))[failed]),
        },
        "curve": [{"threshold": float(t), "share_failures_settled": _share(mobility[failed] <= t),
                   "share_successes_settled": _share(mobility[~failed] <= t)} for t in thresholds],
        "share_successes_slower_than_least_mobile_failure": (_share(final[~failed] < final[failed].min())
                                                             if failed.any() else float("nan")),
    }
    if settle_threshold is not None:
        fixed = mobility <= settle_threshold
        summary["settling"]["fixed"] = {
            "threshold": settle_threshold, "share_failures_settled": _share(fixed[failed]),
            "share_successes_settled": _share(fixed[~failed]),
            "failures_settled_confident": int((fixed & failed & (final_q > 0)).sum()),
            "share_failures_settled_confident": _share((fixed & (final_q > 0))[failed])}

    moving = table[f"{settle_measure}_{match_segment}"]
    unsettled = moving > band  # still outside the band at match_segment; outcome at depth
    deciles = np.zeros(len(failed), dtype=int)
    deciles[unsettled] = quantile_bins(moving[unsettled], 10) if unsettled.any() else []
    auc, pairs = stratified_auc(lyap1[unsettled], failed[unsettled], deciles[unsettled])
    summary["decile_matched_auc_lyap_1_unsettled"] = {
        "auc": auc, "pairs": pairs, "segment": match_segment, "trajectories": int(unsettled.sum()),
        "failures": int((failed & unsettled).sum()), "successes": int((~failed & unsettled).sum()),
        "rule": f"trajectories with {settle_measure} above the held-out band at segment {match_segment}; eventual "
                f"failures vs successes (segment {depth}) paired within deciles of {settle_measure} at {match_segment}"}
    bins = quantile_bins(table["to_fill"], difficulty_bins)
    auc, pairs = stratified_auc(lyap1, failed, bins)
    summary["within_difficulty_bin_auc_lyap_1"] = {
        "auc": auc, "pooled_auc": summary["auc_lyap_1"]["auc"],
        "difference_within_minus_pooled": auc - summary["auc_lyap_1"]["auc"], "pairs": pairs, "bins": int(len(np.unique(bins))),
        "rule": f"bins of to_fill (cells to fill: Sudoku blanks, maze path cells), distinct values or {difficulty_bins} "
                f"quantile bins; pairs within a bin"}
    if depth > prefix:
        unsolved = table[f"solved_{prefix}"] == 0
        f = failed[unsolved]
        early = lambda name: mann_whitney_auc(table[name][unsolved][f], table[name][unsolved][~f])
        summary["prefix"] = {
            "segments": prefix, "trajectories": int(unsolved.sum()), "failures": int(f.sum()),
            "successes": int((~f).sum()), "auc_lyap_1": early("lyap1_prefix"), "auc_reldisp": early(f"reldisp_{prefix}"),
            "auc_q_halt": early(f"q_halt_{prefix}"),
            "rule": f"trajectories not solved after {prefix} segments; scores from those segments; outcome at {depth}"}
    rows = restart_and_pruning_rows(table, depth, prefix)
    if rows:
        summary["restarts_vs_pruning"] = [{k: (_share(v) if isinstance(v, np.ndarray) else v) for k, v in row.items()}
                                          for row in rows]
    return summary


INTERVAL_KEYS = ("auc", "share_", "accuracy_", "difference_")  # the measures that get a bootstrap interval


def with_intervals(point, draws: list, level: float = 0.95):
    """`point` with `<key>_ci95` = [low, high] beside every AUC, share, accuracy and difference, from the
    same measure in each of `draws` (the summaries of the bootstrap resamples)."""
    if isinstance(point, dict):
        out = {}
        for key, value in point.items():
            out[key] = with_intervals(value, [d[key] for d in draws], level)
            if key.startswith(INTERVAL_KEYS) and isinstance(value, float):  # undefined here: no interval either
                out[f"{key}_ci95"] = list(percentile_interval([d[key] for d in draws] if value == value else [], level))
        return out
    if isinstance(point, list):
        return [with_intervals(v, [d[i] for d in draws], level) for i, v in enumerate(point)]
    return point


def summarise(table: dict[str, np.ndarray], depth: int, prefix: int, settle_threshold: float | None,
              settle_window: int, settle_measure: str = "reldisp", match_segment: int | None = None,
              difficulty_bins: int = 10, resamples: int = 1000, seed: int = 0) -> dict:
    """The outcome-conditioned measures of docs/diagnostics.md, each with the counts it rests on and a 95%
    percentile-bootstrap interval (`resamples` resamples of the puzzles, seeded)."""
    match_segment = match_segment or max(1, depth // 2)
    thresholds = threshold_grid(tail_mobility(table, settle_measure, depth, settle_window))
    args = (depth, prefix, settle_threshold, settle_window, settle_measure, match_segment, thresholds, difficulty_bins)
    point = measures(table, *args)
    draws = [measures({name: column[rows] for name, column in table.items()}, *args)
             for rows in resample_rows(table["puzzle"], resamples, seed)]
    return {**with_intervals(point, draws), "bootstrap": {"resamples": resamples, "seed": seed, "level": 0.95,
                                                          "unit": "puzzle (all its trajectories together)"}}


def format_summary(s: dict) -> str:
    """The headline measures, one per line, for the terminal; [low, high]: the 95% bootstrap interval."""
    number = lambda v: "-" if v is None or v != v else f"{v:.3f}"
    with_ci = lambda d, key: (f"{number(d[key])} [{number(d[key + '_ci95'][0])}, {number(d[key + '_ci95'][1])}]"
                              if key + "_ci95" in d else number(d[key]))
    settle, matched, binned = s["settling"], s["decile_matched_auc_lyap_1_unsettled"], s["within_difficulty_bin_auc_lyap_1"]
    held = settle["held_out"]
    lines = [f"{s['trajectories']} trajectories ({s['puzzles']} puzzles): {s['successes']} solved, {s['failures']} failed "
             f"at segment {s['depth']}; [low, high]: 95% bootstrap intervals over puzzles",
             f"median lambda_1: failures {number(s['median_lyap_1']['failures'])}, "
             f"successes {number(s['median_lyap_1']['successes'])}; AUC {with_ci(s['auc_lyap_1'], 'auc')}",
             f"sum of the exponents: AUC {with_ci(s['auc_lyap_sum'], 'auc')}",
             f"final relative displacement: AUC {with_ci(s['auc_final_reldisp'], 'auc')}",
             f"final q_halt: AUC {with_ci(s['auc_final_q_halt'], 'auc')}",
             f"settled (held-out band {settle['measure']} <= {number(held['band'])} over the last "
             f"{settle['tail_segments']} segments): failures {with_ci(held, 'share_failures_settled')}, "
             f"successes {with_ci(held, 'share_successes_settled')}; failures settled with q_halt > 0: "
             f"{held['failures_settled_confident']} ({with_ci(held, 'share_failures_settled_confident')})"]
    if "fixed" in settle:
        fixed = settle["fixed"]
        lines.append(f"settled (fixed {settle['measure']} <= {fixed['threshold']:.3g}): failures "
                     f"{with_ci(fixed, 'share_failures_settled')}, successes {with_ci(fixed, 'share_successes_settled')}")
    lines += [f"decile-matched AUC of lambda_1 among the unsettled at segment {matched['segment']}: "
              f"{with_ci(matched, 'auc')} ({matched['pairs']} pairs, {matched['failures']} failures, "
              f"{matched['successes']} successes)",
              f"within-difficulty-bin AUC of lambda_1: {with_ci(binned, 'auc')} vs pooled {number(binned['pooled_auc'])} "
              f"({binned['bins']} bins)"]
    if "prefix" in s:
        p = s["prefix"]
        lines.append(f"unsolved after {p['segments']} segments ({p['trajectories']}): AUC lambda_1 {with_ci(p, 'auc_lyap_1')}, "
                     f"displacement {with_ci(p, 'auc_reldisp')}, q_halt {with_ci(p, 'auc_q_halt')}")
    for r in s.get("restarts_vs_pruning", []):
        lines.append(f"NFE {r['nfe_restarts']}: {r['restarts']} restarts (pick by q_halt) "
                     f"{with_ci(r, 'accuracy_restarts_q_halt')}; pruning {r['pruned_from']} after "
                     f"{s['prefix']['segments']} (NFE {r['nfe_pruning']}) by lambda_1 {with_ci(r, 'accuracy_pruning_lyap_1')}, "
                     f"displacement {with_ci(r, 'accuracy_pruning_reldisp')}, q_halt {with_ci(r, 'accuracy_pruning_q_halt')}")
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
        if ax.get_legend_handles_labels()[0]:  # a plot with no solved (or no failed) trajectory may have none
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
