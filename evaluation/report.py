"""results.json, results.csv, the printed table and the PNG plots of a finished sweep: the one writer and reader of
results.json. Every file is written to a temporary name in the output folder and renamed into place.

results.json (format "eqr-eval/1", strict JSON: NaN is null) holds the headline cell (metric, depth, breadth, rule,
accuracy, correct, total), the checkpoint (uri, source, sha256, format, step, ema), the data (path, split, puzzles),
the evaluation config, the grid, its rules and halting rules, the pass's identity and fingerprint (the partial files'
ones, evaluation/sweep.py), times (wall_time_s, puzzles_per_s, time_to_depth_s, cpu_time_s), the elastic pool's
counts, the name of the predictions file (or null), one row per (depth, breadth, rule) as results.csv has them, and
the integer counts they come from (cells and pass@k histograms).
"""
import csv
import io
import json
import math
import os

from evaluation import predictions, render, residuals, selection
from evaluation.grid import FIELDS, GridSpec, base_rule
from evaluation.sweep import fingerprint
from utils.errors import RunError
from utils.files import atomic_write

RESULTS_FORMAT = "eqr-eval/1"
RESULTS_FILE = "results.json"
NOTES = ("B>1 figures count real puzzles only (the reference also counts the padding rows of the last test batch as "
         "solved); token accuracy is pooled over labelled tokens.")

RULE_TEXT = {
    "traj1": "trajectory 1 (B=1 answer)",
    "all_traj": "mean over all N x B trajectories (the reference's plain exact_accuracy at B>1)",
    "majority": "majority vote over the B answers (tie: the answer seen first)",
    "conv_top1": "top-1 by convergence (the paper's B>1 metric)",
}
CSV_COLUMNS = ["depth", "breadth", "rule", "halting", "halt_rule", "correct", "total", "accuracy", "token_correct", "token_total",
               "token_accuracy", "nfe_per_puzzle", "nfe_saving_at_equal_accuracy", "time_to_depth_s",
               "pass_wall_time_s", "checkpoint_sha256", "config_fingerprint"]


def rule_text(spec: GridSpec, rule: str) -> str:
    """What a rule name means, for tables and results.json."""
    base, suffix = base_rule(rule), rule[len(base_rule(rule)):]
    text = RULE_TEXT.get(base, base)
    if suffix:
        text += f", each trajectory halting by {dict(zip(spec.halt_suffixes, spec.halting_rules))[suffix].label}"
    return text


def halting_rule_at(breadth: int) -> str:
    """The answer of a halting rule's puzzle: trajectory 1 at B = 1, the vote of the halted answers at B > 1."""
    return "traj1" if breadth == 1 else "majority"


def _ratio(a, b):
    return a / b if b else float("nan")


def build_rows(spec: GridSpec, cells, hist, depth_seconds: list[float] | None = None) -> list[dict]:
    """One row per (D, B, rule) that means something there; pass@k rows come from the histograms."""
    rows = []
    for d, depth in enumerate(spec.depths):
        for b, breadth in enumerate(spec.breadths):
            for r, rule in enumerate(spec.rules):
                if not spec.reported(depth, breadth, rule):
                    continue
                c = dict(zip(FIELDS, (int(x) for x in cells[d, b, r].tolist())))
                rows.append({"depth": depth, "breadth": breadth, "rule": rule, "halting": "+" in rule,
                             **{k: c[k] for k in ("correct", "total", "token_correct", "token_total")},
                             "accuracy": _ratio(c["correct"], c["total"]),
                             "token_accuracy": _ratio(c["token_correct"], c["token_total"]),
                             "nfe_per_puzzle": _ratio(c["nfe"], cells[d, b, 0, FIELDS.index("total")].item())})
            for h, suffix in enumerate(spec.hist_suffixes):
                histogram = [int(x) for x in hist[d, b, h].tolist()]
                puzzles = sum(histogram)
                spent = _ratio(cells[d, b, spec.rules.index("all_traj" + suffix), FIELDS.index("nfe")].item(), puzzles)
                for k in selection.pass_ks(breadth):
                    value = selection.pass_at_k_from_histogram(histogram, breadth, k)
                    rows.append({"depth": depth, "breadth": breadth, "rule": f"pass@{k}{suffix}",
                                 "halting": bool(suffix), "correct": round(value * puzzles, 6), "total": puzzles,
                                 "token_correct": None, "token_total": None, "accuracy": value, "token_accuracy": None,
                                 "nfe_per_puzzle": spent})
    labels = dict(zip(spec.halt_suffixes, spec.halting_rules))
    for row in rows:
        row["time_to_depth_s"] = depth_seconds[spec.depths.index(row["depth"])] if depth_seconds else None
        rule = labels.get(row["rule"][len(base_rule(row["rule"])):])
        row["halt_rule"] = rule.label if rule else None
    add_nfe_savings(rows)
    return rows


def add_nfe_savings(rows: list[dict]) -> None:
    """For each halting row: NFE of the cheapest non-halting depth (same rule and breadth) reaching at
    least its accuracy, divided by its own NFE. None when no depth of the grid reaches it."""
    for row in rows:
        row["nfe_saving_at_equal_accuracy"] = None
        if not row["halting"] or not row["nfe_per_puzzle"]:
            continue
        rule = base_rule(row["rule"])
        reach = [r["nfe_per_puzzle"] for r in rows if r["rule"] == rule and r["breadth"] == row["breadth"]
                 and r["accuracy"] >= row["accuracy"]]
        if reach:
            row["nfe_saving_at_equal_accuracy"] = min(reach) / row["nfe_per_puzzle"]


def find(rows: list[dict], depth: int, breadth: int, rule: str) -> dict | None:
    return next((r for r in rows if (r["depth"], r["breadth"], r["rule"]) == (depth, breadth, rule)), None)


# ----------------------------------------------------------------------------- files

def _clean(value):
    """NaN -> None, so results.json is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def write_json(path: str, results: dict) -> None:
    atomic_write(path, (json.dumps(_clean(results), indent=2, default=str) + "\n").encode())


def read_results(path: str) -> dict:
    """A results.json written by write_outputs."""
    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, ValueError) as e:
        raise RunError(f"{path}: not a readable results file ({e})") from None
    if not isinstance(results, dict) or results.get("format") != RESULTS_FORMAT:
        raise RunError(f"{path}: not an {RESULTS_FORMAT} results file")
    return results


def write_outputs(output_dir: str, name: str, config: dict, spec: GridSpec, counts, info: dict, identity: dict,
                  wall: float, depth_seconds: list[float], device_name: str, shown: dict, pool: dict) -> dict:
    """results.csv, the plots and drawn examples (config["plots"]; titled with the checkpoint's `name`), then
    results.json; prints the table -> the results."""
    cells, hist = spec.split(counts)
    rows = build_rows(spec, cells, hist, depth_seconds)
    res_parts = spec.residual_parts(counts)
    res_rows = residuals.rows(spec, *res_parts) if res_parts else None
    puzzles = int(cells[0, 0, 0, 1])
    d, b = spec.max_depth, spec.max_breadth
    rule = spec.headline_rule(d, b)
    head = find(rows, d, b, rule)
    results = {
        "format": RESULTS_FORMAT,
        "headline": {"metric": "exact_accuracy", "depth": d, "breadth": b, "rule": rule,
                     "description": rule_text(spec, rule), "accuracy": head["accuracy"],
                     "correct": head["correct"], "total": head["total"]},
        "checkpoint": {k: info[k] for k in ("uri", "source", "sha256", "format", "step", "ema")},
        "data": {"path": identity["data_path"], "split": identity["split"], "puzzles": puzzles},
        "config": config,
        "grid": spec.to_dict(),
        "rules": spec.rules,
        "halt_rules": [dict(r.to_dict(), suffix=suffix, label=r.label) for r, suffix in zip(spec.halting_rules, spec.halt_suffixes)],
        "cpu_time_s": pool.pop("cpu_time_s"),  # rank 0's CPU time in the loop (all threads), since a resume
        "elastic": pool if spec.elastic else None,  # rank 0's pool: steps, slot_steps (rows run), busy_steps (rows with work)
        "config_fingerprint": fingerprint(identity),
        "identity": identity,
        "world_size": identity["world_size"],
        "device": device_name,
        "wall_time_s": wall,
        "puzzles_per_s": puzzles / wall if wall > 0 else None,
        "time_to_depth_s": dict(zip(map(str, spec.depths), depth_seconds)),
        "predictions": predictions.FILE_NAME if config["save_outputs"] else None,
        "notes": NOTES,
        "rows": rows,
        "residuals": res_rows,  # per (depth, breadth, group): docs/evaluation.md, "Fixed-point residuals"
        "counts": {"fields": list(FIELDS), "cells": cells.tolist(), "pass_histograms": hist.tolist()},
    }
    if res_parts:
        results["counts"].update(residual_fields=list(residuals.FIELDS), residual_scale=residuals.SCALE,
                                 residual_sums=res_parts[0].tolist(),
                                 residual_histograms=residuals.sparse_histograms(res_parts[1]))
    extra = {"checkpoint_sha256": info["sha256"], "config_fingerprint": results["config_fingerprint"],
             "pass_wall_time_s": wall}
    os.makedirs(output_dir, exist_ok=True)
    write_csv(os.path.join(output_dir, "results.csv"), rows, extra)
    if config["plots"]:
        write_plots(output_dir, spec, rows, name, puzzles)
        cell = f"{name}: D={spec.max_depth} B={spec.max_breadth}, {rule_text(spec, rule)}"
        for outcome in ("solved", "failed"):
            if shown[outcome]:
                render.save_examples_png(os.path.join(output_dir, f"examples_{outcome}.png"), shown["task"],
                                         shown[outcome], f"{cell}: {outcome} puzzles")
    # Last: results.json marks the folder finished, so a write that fails before it leaves a resumable sweep.
    write_json(os.path.join(output_dir, RESULTS_FILE), results)
    print(format_table(spec, rows, puzzles))
    if res_rows:
        print("\n" + residuals.format_table(spec, res_rows))
    print(f"\n{puzzles} puzzles in {wall:.1f} s ({results['puzzles_per_s'] or 0:.2f} puzzles/s) on "
          f"{identity['world_size']} process(es); results in {output_dir}/")
    return results


def write_csv(path: str, rows: list[dict], extra: dict) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(_clean({**row, **extra}))
    atomic_write(path, out.getvalue().encode())


# ----------------------------------------------------------------------------- printed table

def _pct(row) -> str:
    return "    -" if row is None or row["accuracy"] is None or math.isnan(row["accuracy"]) else f"{100 * row['accuracy']:5.1f}"


def format_table(spec: GridSpec, rows: list[dict], puzzles: int) -> str:
    """Exact accuracy (%) over D (columns) x B (rows), one block per rule; the paper's metric first."""
    lines = [f"Exact accuracy (%) on {puzzles} puzzles: whole board right. "
             f"THE PAPER'S METRIC is the first table (top-1 by convergence at B>1, trajectory 1 at B=1)."]
    header = "    B \\ D " + "".join(f"{d:>7}" for d in spec.depths)

    def block(title, pick):
        lines.extend(["", title, header])
        for breadth in spec.breadths:
            lines.append(f"{breadth:>9} " + "".join(f"{_pct(pick(depth, breadth)):>7}" for depth in spec.depths))

    if spec.elastic:
        lines = [f"Elastic inference on {puzzles} puzzles: exact accuracy (%) = whole board right."]
    else:
        block("[paper metric] exact accuracy: top-1 by convergence (B>1, D>=2) / trajectory 1",
              lambda d, b: find(rows, d, b, spec.headline_rule(d, b)))
        if spec.max_breadth > 1:  # at B = 1 the paper's metric is trajectory 1: the block above
            block("trajectory 1", lambda d, b: find(rows, d, b, "traj1"))
    if spec.max_breadth > 1 and not spec.elastic:
        block("majority vote", lambda d, b: find(rows, d, b, "majority"))
        block("pass@B (any of the B right)", lambda d, b: find(rows, d, b, f"pass@{b}"))
        block("reference's plain exact_accuracy at B>1 (mean over all N x B trajectories)",
              lambda d, b: find(rows, d, b, "all_traj"))
    if spec.halting_rules:
        lines.extend(["", halting_table(spec, rows)])
    d, b = spec.max_depth, spec.max_breadth
    head = find(rows, d, b, spec.headline_rule(d, b))
    lines.extend(["", f"HEADLINE exact accuracy D{d} B{b} ({rule_text(spec, spec.headline_rule(d, b))}): "
                      f"{_pct(head).strip()}% ({head['correct']}/{head['total']})"])
    return "\n".join(lines)


def halting_table(spec: GridSpec, rows: list[dict]) -> str:
    """Per depth cap and breadth: the fixed-depth answer (when computed) and each halting rule's, with NFE per
    puzzle, exact accuracy and the NFE saving at equal accuracy against the fixed depths of this run."""
    lines = ["Halting rules (trajectory 1 at B=1, majority vote of the halted answers at B>1):",
             f"  {'D':>5} {'B':>4}  {'rule':<24} {'NFE/puzzle':>11} {'exact %':>8} {'saving':>7}"]
    for depth in spec.depths:
        for breadth in spec.breadths:
            base = halting_rule_at(breadth)
            for label, rule in [("fixed depth", base)] + [(r.label, base + suffix) for r, suffix
                                                          in zip(spec.halting_rules, spec.halt_suffixes)]:
                row = find(rows, depth, breadth, rule)
                if row is None:
                    continue
                saving = row["nfe_saving_at_equal_accuracy"]
                lines.append(f"  {depth:>5} {breadth:>4}  {label:<24} {row['nfe_per_puzzle']:>11.1f} {_pct(row):>8} "
                             + (f"{saving:>6.2f}x" if saving else f"{'-':>7}"))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots

CONVERGENCE_NOTE = ("B>1 lines start at D=2: convergence is the change of the logits from one step to the next, "
                    "so after one step there is nothing to rank the B trajectories by")


def write_plots(output_dir: str, spec: GridSpec, rows: list[dict], checkpoint: str, puzzles: int) -> list[str]:
    """accuracy_heatmap.png (the paper's metric over D x B) and accuracy_vs_nfe.png (accuracy against compute);
    with halting rules halting_pareto.png; the elastic evaluator writes only the last."""
    paths = [] if spec.elastic else [
        _heatmap(os.path.join(output_dir, "accuracy_heatmap.png"), spec, rows, checkpoint, puzzles),
        _accuracy_vs_nfe(os.path.join(output_dir, "accuracy_vs_nfe.png"), spec, rows, checkpoint, puzzles)]
    if spec.halting_rules:
        paths.append(halting_pareto(os.path.join(output_dir, "halting_pareto.png"), [(checkpoint, spec, rows)], puzzles))
    return paths


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (cost, accuracy) that no other point beats: cheaper-or-equal and more accurate,
    or cheaper and as accurate. In increasing cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def halting_pareto(path: str, runs: list[tuple[str, GridSpec, list[dict]]], puzzles: int) -> str:
    """Exact accuracy against NFE per puzzle at the largest breadth: the fixed-depth curve (where the run has
    it), every halting rule at every depth cap as a point, and the Pareto front of the rules as a line.
    `runs`: (name, spec, rows) of one or more results (e.g. the grid and the elastic evaluator's)."""
    plt = render.pyplot()
    from matplotlib.ticker import FuncFormatter
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for name, spec, rows in runs:
        breadth = spec.max_breadth
        base = halting_rule_at(breadth)
        fixed = [find(rows, d, breadth, base) for d in spec.depths]
        fixed = [r for r in fixed if r is not None]
        if fixed:
            colour = ax.plot([r["nfe_per_puzzle"] for r in fixed], [100 * r["accuracy"] for r in fixed], "o-",
                             label=f"{name}: fixed depth (B={breadth})")[0].get_color()
            for r in fixed:
                ax.annotate(f"D{r['depth']}", (r["nfe_per_puzzle"], 100 * r["accuracy"]), textcoords="offset points",
                            xytext=(3, -8), fontsize=6, color=colour)
        points = [r for d in spec.depths for suffix in spec.halt_suffixes
                  if (r := find(rows, d, breadth, base + suffix)) is not None]
        xy = [(r["nfe_per_puzzle"], 100 * r["accuracy"]) for r in points]
        ax.plot(*zip(*xy), "x", color="0.5", label=f"{name}: halting rules ({len(spec.halting_rules)} x "
                                                   f"{len(spec.depths)} cap(s))")
        front = [xy[i] for i in pareto_front(xy)]
        ax.plot(*zip(*front), "s--", color="C3", markersize=4, label=f"{name}: Pareto front of the rules")
        for i in pareto_front(xy):
            ax.annotate(f"{points[i]['halt_rule']} D{points[i]['depth']}", xy[i], textcoords="offset points",
                        xytext=(3, 3), fontsize=6, color="C3")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.set_xlabel("NFE per puzzle (block applications, all B trajectories)")
    ax.set_ylabel("exact accuracy (%)")
    ax.set_title(f"{runs[0][0]}: halting rules vs fixed depth on {puzzles} puzzles", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    render.save_figure(fig, path)
    return path


def _heatmap(path: str, spec: GridSpec, rows: list[dict], checkpoint: str, puzzles: int) -> str:
    """Colour is the error rate (100 - accuracy) on a log scale, so 95, 99 and 99.9% look different;
    each cell is annotated with its accuracy. A cell with no error is drawn at half a puzzle's error."""
    plt = render.pyplot()
    from matplotlib.colors import LogNorm
    import numpy as np
    accuracy = np.array([[(find(rows, d, b, spec.headline_rule(d, b)) or {}).get("accuracy", np.nan)
                          for d in spec.depths] for b in spec.breadths], dtype=float) * 100
    floor = 50 / max(puzzles, 1)
    # at least 5 x 3.6 inches: the title and the colour bar's label need that much even for one cell
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 + 0.9 * len(spec.depths)), max(3.6, 1.4 + 0.6 * len(spec.breadths))))
    image = ax.imshow(np.clip(100 - accuracy, floor, 100), origin="lower", cmap="viridis_r", aspect="auto",
                      norm=LogNorm(vmin=floor, vmax=100))
    ax.set_xticks(range(len(spec.depths)), [str(d) for d in spec.depths])
    ax.set_yticks(range(len(spec.breadths)), [str(b) for b in spec.breadths])
    for (i, j), value in np.ndenumerate(accuracy):
        if not np.isnan(value):
            text = f"{value:.2f}" if 99 <= value < 100 else f"{value:.1f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="k" if 100 - value < 10 else "w")
    ax.set_xlabel("depth D (supervision steps)")
    ax.set_ylabel("breadth B (trajectories)")
    ax.set_title(f"{checkpoint}: exact accuracy (%) on {puzzles} puzzles\n"
                 f"top-1 by convergence (B>1, D>=2), trajectory 1 (B=1 or D=1)", fontsize=9)
    bar = fig.colorbar(image, ax=ax)
    bar.set_label("error rate, 100 - accuracy (%), log scale", fontsize=8)
    render.save_figure(fig, path)
    return path


def _accuracy_vs_nfe(path: str, spec: GridSpec, rows: list[dict], checkpoint: str, puzzles: int) -> str:
    """One solid line per breadth (the paper's rule), one dashed per breadth with halting; each point is a depth."""
    plt = render.pyplot()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    fig, ax = plt.subplots(figsize=(7, 4.8))

    def line(points, style, label, colour=None):
        x, y = [p["nfe_per_puzzle"] for p in points], [100 * p["accuracy"] for p in points]
        colour = ax.plot(x, y, style, label=label, color=colour)[0].get_color()
        for p, xi, yi in zip(points, x, y):
            ax.annotate(f"D{p['depth']}", (xi, yi), textcoords="offset points", xytext=(3, 3), fontsize=6, color=colour)
        return colour

    for breadth in spec.breadths:
        rule = spec.headline_rule(spec.max_depth, breadth)
        points = [find(rows, d, breadth, rule) for d in spec.depths if spec.reported(d, breadth, rule)]
        name = "top-1 by convergence" if rule == "conv_top1" else "trajectory 1"
        colour = line(points, "o-", f"B={breadth}: {name}")
        if spec.halting_rules:
            rule = "majority+halt" if breadth > 1 else "traj1+halt"
            line([find(rows, d, breadth, rule) for d in spec.depths], "x--",
                 f"B={breadth} with halting: " + ("majority vote" if breadth > 1 else "trajectory 1"), colour)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("NFE per puzzle (block applications, all B trajectories)")
    ax.set_ylabel("exact accuracy (%)")
    ax.set_title(f"{checkpoint}: accuracy vs compute on {puzzles} puzzles"
                 + (" (with and without halting)" if spec.halting_rules else ""), fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    if spec.max_breadth > 1 and spec.depths[0] == 1:
        fig.text(0.01, -0.01, CONVERGENCE_NOTE, fontsize=7, va="top")
    render.save_figure(fig, path)
    return path
