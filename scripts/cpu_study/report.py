"""The study's numbers: collected from finished stages into results.json, and filled as tables and claims
into the hand-written docs/cpu_reproduction.template.md, which gives docs/cpu_reproduction.md.

The template holds the prose; each `{{name}}` in it is replaced by BLOCKS[name](res). A stage whose
files are not in this checkout keeps the record the previous results.json holds for it, if that
record was made by the same command; such records are marked `carried_over`.
"""
import json
import os
import re

from cpu_study import study
from cpu_study.runner import load_ledger, shown
from evaluation import intervals
from evaluation.report import RESULTS_FILE, read_results
from utils.errors import RunError

TEMPLATE = "docs/cpu_reproduction.template.md"
REPORT_DOC = "docs/cpu_reproduction.md"
REPORT_DIR = "docs/cpu_reproduction"
RESULTS = f"{REPORT_DIR}/results.json"
LEDGER = f"{study.WORK_DIR}/ledger.json"
SWEEP_KEYS = ("depth", "breadth", "rule", "correct", "total", "accuracy", "token_accuracy", "nfe_per_puzzle",
              "nfe_saving_at_equal_accuracy")
TRAIN_LOG_WINDOW = 100  # steps at the end of a run over which the training log's exact accuracy is averaged


# ----------------------------------------------------------------------------- collection

def parameter_count(ckpt: dict) -> int:
    """Trained parameters (not buffers) of the model the checkpoint's config builds, whether or not it has an EMA."""
    from models.eqr import ModelConfig, RecurrentReasoner

    return sum(p.numel() for p in RecurrentReasoner(ModelConfig.from_dict(ckpt["config"]["arch"])).parameters())


def run_record(run: study.Run) -> dict:
    from models.eqr import ModelConfig
    from utils.checkpoint import read_run_checkpoint
    from utils.run_folder import EVAL, STEP, TRAIN, read_metrics

    metrics = read_metrics(f"{run.path}/metrics.jsonl")
    ckpt = read_run_checkpoint(run.final_checkpoint)
    arch = ckpt["config"]["arch"]
    # the training log's exact accuracy: rows that halted in the last steps (their puzzle, the live weights)
    tail = [m for m in metrics if TRAIN["count"] in m and m[STEP] > run.steps - TRAIN_LOG_WINDOW]
    halted = sum(m[TRAIN["count"]] for m in tail)
    return {
        "task": run.task, "arm": run.arm, "label": run.label, "steps": run.steps, "seed": run.seed,
        "params": parameter_count(ckpt),
        "blocks_per_step": ModelConfig.from_dict(arch).blocks_per_step, "forward_dtype": arch["forward_dtype"],
        "train_halt_max_steps": arch["halt_max_steps"], "act_halting": arch.get("act_halting", True),
        "random_init": arch["random_init"], "lambda": arch["lambda_"], "noise_scale": arch["noise_scale"],
        # rows that halted (took a new puzzle) over the whole run: training examples actually presented
        "examples_presented": int(sum(m.get(TRAIN["count"], 0) for m in metrics)),
        "train_log_exact": sum(m[TRAIN["exact_accuracy"]] * m[TRAIN["count"]] for m in tail) / halted if halted else None,
        "eval_curve": [{"step": m[STEP], "exact": m[EVAL["exact_accuracy"]], "token": m[EVAL["accuracy"]]}
                       for m in metrics if EVAL["count"] in m]}


def sweep_record(sweep: study.Sweep) -> dict:
    res = read_results(os.path.join(sweep.path, RESULTS_FILE))
    rows = [{k: r[k] for k in SWEEP_KEYS} for r in res["rows"]]
    record = {"run": sweep.run, "puzzles": rows[0]["total"], "rows": rows, "eval_wall_time_s": round(res["wall_time_s"], 1)}
    if res.get("residuals"):  # fixed-point residuals (sweeps made since evaluate.py measures them)
        record.update(residuals=res["residuals"], residual_grid={"depths": res["grid"]["depths"], "breadths": res["grid"]["breadths"]},
                      residual_histograms=res["counts"]["residual_histograms"])
    if os.path.isfile(f"{sweep.path}/predictions.npz"):  # save_outputs=true: the headline cell's per-puzzle outcomes
        from evaluation.predictions import read_predictions
        saved = read_predictions(f"{sweep.path}/predictions.npz")
        scored = (saved["labels"] != 0).any(1)  # as results.json: a puzzle without scored cells is not counted
        record["outcomes"] = [{"depth": saved["depth"], "breadth": saved["breadth"], "rule": saved["rule"],
                               "index": saved["index"][scored].tolist(), "solved": saved["solved"][scored].astype(int).tolist()}]
    return record


def collect(previous: dict) -> dict:
    """Every number of the report: from the stages finished in this checkout, else from `previous` (the
    last results.json) when its record of that stage was made by the same command."""
    ledger = load_ledger(LEDGER)
    out = {"seed": study.SEED, "threads": 1, "arms": study.ARMS, "datasets": {}, "runs": {}, "sweeps": {}}
    parts = ([("datasets", t, f"data-{t}", ds.path) for t, ds in study.DATASETS.items()] +
             [("runs", r.name, f"train-{r.name}", r) for r in study.RUNS] +
             [("sweeps", s.name, f"eval-{s.name}", s) for s in study.SWEEPS])
    stages = {s.key: s for s in study.stages()}
    for part, name, key, what in parts:
        stage, old = stages[key], previous.get(part, {}).get(name)
        if stage.done():
            record = {"path": what} if part == "datasets" else run_record(what) if part == "runs" else sweep_record(what)
            entry = ledger.get(key, {})
            record.update(command=shown(stage.argv), wall_s=round(entry.get("wall_s", 0.0), 1),
                          sessions=len(entry.get("attempts", [])))
        elif old and old.get("command") in (shown(stage.argv), shown(stage.argv).replace(f" {study.BF16}", "")):
            # (the second form: recorded before the presets' forward_dtype became `auto`, when it meant bfloat16)
            record = {**old, "carried_over": True}
        else:
            continue
        if part == "runs":
            record["arm"] = what.arm  # a record from before arms were named has none
        out[part][name] = record
    return out


def load_previous() -> dict:
    if not os.path.isfile(RESULTS):
        return {}
    with open(RESULTS) as f:
        return json.load(f)


# ----------------------------------------------------------------------------- lookups

def cell(res: dict, sweep: str, depth: int, breadth: int, rule: str):
    """The row of a sweep for (D, B, rule), or None when that sweep or cell did not run."""
    for r in res["sweeps"].get(sweep, {}).get("rows", []):
        if (r["depth"], r["breadth"], r["rule"]) == (depth, breadth, rule):
            return r
    return None


def acc(res, sweep, depth, breadth=1, rule="traj1"):
    r = cell(res, sweep, depth, breadth, rule)
    return None if r is None else r["accuracy"]


def b1(name: str) -> str:
    """The B=1 depth sweep of a run."""
    return "sudoku-ff-d1" if name == "sudoku-ff" else f"{name}-b1"


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def fmt_wall(s) -> str:
    return f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f} s"


def md_table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- intervals and verdicts

BOOTSTRAP_DRAWS = 2000


def pct_ci(row) -> str:
    """An accuracy with its Wilson 95 % interval, in %: '12.5 (8.1-18.0)'; pass@k (an expectation, not a
    count of puzzles) without one."""
    if row is None:
        return "–"
    if row["rule"].startswith("pass@"):
        return pct(row["accuracy"])
    low, high = intervals.wilson_interval(row["correct"], row["total"])
    return f"{pct(row['accuracy'])} ({pct(low)}–{pct(high)})"


def show(res, sweep, depth, breadth=1, rule="traj1") -> str:
    return pct_ci(cell(res, sweep, depth, breadth, rule))


def outcomes(res, sweep, depth, breadth, rule) -> dict | None:
    """Per-puzzle outcomes {puzzle index: solved} of a cell, where the sweep's record holds them
    (sweep_record: the headline cell of a sweep run with save_outputs=true); None otherwise."""
    for o in res["sweeps"].get(sweep, {}).get("outcomes", []):
        if (o["depth"], o["breadth"], o["rule"]) == (depth, breadth, rule):
            return dict(zip(o["index"], o["solved"]))
    return None


def compare(res, base: tuple, better: tuple, claimed: str = "above") -> dict | None:
    """The claim "cell `better` is more accurate than cell `base`" ((sweep, D, B, rule) each) -> the
    difference better - base with its 95 % interval, how it was made and the verdict on it being `claimed`
    ("above" zero; "below" for a claim that `better` is not ahead) (evaluation/intervals.py);
    None when a cell did not run. Paired bootstrap over the puzzles both cells solved or failed, where the
    records hold per-puzzle outcomes of both; else Newcombe's unpaired interval from the two counts."""
    a, b = cell(res, *base), cell(res, *better)
    if a is None or b is None:
        return None
    paired = [outcomes(res, *base), outcomes(res, *better)]
    common = sorted(set(paired[0]) & set(paired[1])) if None not in paired else []
    if common:
        difference, low, high = intervals.paired_difference_interval(
            [paired[1][i] for i in common], [paired[0][i] for i in common], count=BOOTSTRAP_DRAWS, seed=study.SEED)
        method = f"paired bootstrap over {len(common)} puzzles"
    else:
        difference, low, high = intervals.difference_interval(b["correct"], b["total"], a["correct"], a["total"])
        method = "unpaired, from the counts (Newcombe)"
    return {"base": a, "better": b, "difference": difference, "low": low, "high": high, "method": method,
            "verdict": intervals.verdict(low, high, 0.0, claimed)}


def points(x) -> str:
    return f"{100 * x:+.1f}"


def verdict_of(c) -> str:
    """'<a> vs <b>, difference +d (low, high): **verdict**' of a compare() result."""
    if c is None:
        return "n/a (stage missing)"
    return (f"{pct_ci(c['base'])} vs {pct_ci(c['better'])}, difference {points(c['difference'])} "
            f"({points(c['low'])}, {points(c['high'])}): **{c['verdict']}**")


def depths_by_verdict(verdicts: dict) -> str:
    """{depth: verdict or None} -> '**reproduces** at depths [..], **does not reproduce** at [..], **inconclusive** at [..]'."""
    by = {v: [d for d, got in verdicts.items() if got == v] for v in ("reproduces", "does not reproduce", "inconclusive")}
    return (f"**reproduces** at depths {by['reproduces'] or 'none'}, **does not reproduce** at "
            f"{by['does not reproduce'] or 'none'}, **inconclusive** at {by['inconclusive'] or 'none'}")


# ----------------------------------------------------------------------------- blocks
# Each block returns markdown; claims() blocks also add their lines to res["claims"] for the summary.

def claims(res: dict, lines: list) -> str:
    res.setdefault("claims", []).extend(lines)
    return "\n".join(lines)


def total_wall(res):
    parts = [*res["runs"].values(), *res["sweeps"].values(), *res["datasets"].values()]
    return fmt_wall(sum(v["wall_s"] for v in parts))


def data_block(res):
    return "\n".join(f"- {task}: `{ds['command']}` ({fmt_wall(ds['wall_s'])})." for task, ds in res["datasets"].items())


def training_table(res):
    rows = []
    for name, r in res["runs"].items():
        last = r["eval_curve"][-1] if r["eval_curve"] else {}
        rows.append([f"`{name}`", r["label"], f"{r['params']:,}", r["blocks_per_step"], r["steps"],
                     r["train_halt_max_steps"], "yes" if r["act_halting"] and r["train_halt_max_steps"] > 1 else "no",
                     "yes" if r["random_init"] else "no", r["lambda"], r["noise_scale"],
                     r.get("forward_dtype", "bfloat16"),  # records from before the float32 arm did not say; all bf16
                     f"{r['examples_presented']:,}", pct(last.get("exact")), fmt_wall(r["wall_s"])])
    return md_table(["run", "what", "params", "blocks/step", "steps", "train D", "ACT", "RI", "λ", "σ", "dtype",
                     "examples presented", "exact at end (train eval, D=train D, 256)", "wall"], rows)


def construction_table(res):
    rows = [[f"`{n}`", res["runs"][n]["label"]] + [show(res, b1(n), d) for d in (1, 16, 64)]
            for n in study.CONSTRUCTION if n in res["runs"]]
    return md_table(["run", "what", "D=1 (12 NFE)", "D=16 (192 NFE)", "D=64 (768 NFE)"], rows)


def construction_claims(res):
    c = lambda sweep, depth: (sweep, depth, 1, "traj1")
    ff, tied, tied16 = c("sudoku-ff-d1", 1), c("sudoku-tied-b1", 1), c("sudoku-tied-b1", 16)
    sup, trm, eqr = (c(f"sudoku-{n}-b1", 16) for n in ("tied-sup", "trm", "eqr"))
    return claims(res, [
        f"- untied FF < weight-tied at equal 12 NFE: {verdict_of(compare(res, ff, tied))}.",
        f"- weight-tied 1 step (D=1) < + supervision over steps (D=16): {verdict_of(compare(res, tied, sup))}; "
        f"at equal test compute (both run 16 steps = 192 NFE): {verdict_of(compare(res, tied16, sup))}.",
        f"- + supervision < + halting (TRM) at D=16: {verdict_of(compare(res, sup, trm))}.",
        f"- TRM < EqR at D=16: {verdict_of(compare(res, trm, eqr))}."])


def ri_ni_table(groups: dict, depths: list):
    def block(res):
        rows = [[f"`{n}`", res["runs"][n]["label"]] + [show(res, b1(n), d) for d in depths]
                for names in groups.values() for n in names if n in res["runs"]]
        return md_table(["run", "what", *[f"D={d}" for d in depths]], rows)
    return block


def ri_ni_claims(groups: dict, depths: tuple):
    def block(res):
        lines = []
        for what, names in groups.items():
            for depth in depths:
                t, ri, e = ((b1(n), depth, 1, "traj1") for n in names)
                lines.append(f"- {what}, D={depth}: TRM < TRM + RI: {verdict_of(compare(res, t, ri))}; "
                             f"TRM + RI < EqR: {verdict_of(compare(res, ri, e))}.")
        return claims(res, lines)
    return block


def agreement_table(res):
    rows, gaps = [], []
    for names in study.RI_NI_D4.values():
        for n in names:
            r = res["runs"].get(n)
            if r is None:
                continue
            depth = r["train_halt_max_steps"]
            logged, frozen = r.get("train_log_exact"), acc(res, f"{n}-train", depth)
            rows.append([f"`{n}`", pct(logged), show(res, f"{n}-train", depth),
                         pct(r["eval_curve"][-1]["exact"] if r["eval_curve"] else None), show(res, f"{n}-b1", depth)])
            if logged is not None and frozen is not None:
                gaps.append((100 * (logged - frozen), n))
    table = md_table(["run", f"training log, last {TRAIN_LOG_WINDOW} steps (rows that halted)",
                      "evaluate.py, training split (first 256)", "training-time eval, test (256)",
                      "evaluate.py, test (256)"], rows)
    if not gaps:
        return table
    gap, name = max(gaps, key=lambda g: abs(g[0]))
    return table + "\n\n" + claims(res, [
        f"- agreement, sudoku D=4 arm: training log minus evaluate.py on training puzzles, largest gap over "
        f"{len(gaps)} finished runs: {gap:+.1f} points (`{name}`; the maze pilot at D=16: 27 logged vs 0.4 evaluated)."])


def ordering_claims(groups: dict, depths: tuple):
    """Whether the whole ranking TRM < TRM + RI < EqR holds, per depth, in how many of the groups (seeds)."""
    def block(res):
        lines = []
        for depth in depths:
            triples = [[acc(res, b1(n), depth) for n in names] for names in groups.values()]
            done = [t for t in triples if None not in t]
            held = sum(1 for t, ri, e in done if t < ri < e)
            lines.append(f"- sudoku D=4 arm, D={depth}: TRM < TRM + RI < EqR holds for {held} of {len(done)} "
                         f"training seeds" + (f" ({len(groups) - len(done)} not finished)" if len(done) < len(groups) else "")
                         + (f"; mean over seeds: TRM {pct(sum(t[0] for t in done) / len(done))}, TRM + RI "
                            f"{pct(sum(t[1] for t in done) / len(done))}, EqR {pct(sum(t[2] for t in done) / len(done))}"
                            if done else "") + ".")
        return claims(res, lines)
    return block


def depth_table(res):
    rows = [[f"`{n}`", res["sweeps"][b1(n)]["puzzles"]] + [show(res, b1(n), d) for d in study.DEPTHS]
            for n in res["runs"] if n != "sudoku-ff" and b1(n) in res["sweeps"]]
    return md_table(["run", "puzzles", *[f"D={d}" for d in study.DEPTHS]], rows)


def depth_claims(res):
    lines = []
    if cell(res, "sudoku-tied-b1", 1, 1, "traj1"):
        lines.append(f"- `sudoku-tied` (trained at D=1), D=1 < D=64: "
                     f"{verdict_of(compare(res, ('sudoku-tied-b1', 1, 1, 'traj1'), ('sudoku-tied-b1', 64, 1, 'traj1')))}.")
    for name in ("sudoku-eqr", "maze-eqr", "sudoku-trm", "maze-trm"):
        if name in res["runs"]:
            trained = res["runs"][name]["train_halt_max_steps"]
            c = compare(res, (b1(name), trained, 1, "traj1"), (b1(name), 64, 1, "traj1"))
            if c is not None:
                lines.append(f"- `{name}`, trained D={trained} < D=64 (beyond the trained depth): {verdict_of(c)}.")
    return claims(res, lines)


def breadth_block(task: str, sweep: str | None = None, depths: list = study.DEPTHS):
    """B=1 against top-1 by convergence at every breadth of `sweep` (default: the task's EqR grid)."""
    sweep = sweep or f"{task}-eqr-grid"

    def block(res):
        if sweep not in res["sweeps"]:
            return f"- {task}: breadth grid not finished."
        n, top = res["sweeps"][sweep]["puzzles"], max(study.BREADTHS)
        rows = [[f"B={b}"] + [show(res, sweep, d, b, "traj1" if b == 1 else "conv_top1") for d in depths]
                for b in study.BREADTHS]
        gains = {d: compare(res, (sweep, d, 1, "traj1"), (sweep, d, top, "conv_top1")) for d in depths}
        rows.append([f"gain B={top} − B=1 (points, 95 % interval)"] + [
            "–" if g is None else f"{points(g['difference'])} ({points(g['low'])}, {points(g['high'])})"
            for g in gains.values()])
        return (f"{task}, the first {n} test puzzles (one puzzle = {100 / n:.1f} points), B=1 is one trajectory, "
                f"B>1 top-1 by convergence; accuracies with their Wilson 95 % intervals:\n\n"
                + md_table(["", *[f"D={d}" for d in depths]], rows) + "\n\n"
                + claims(res, [f"- {task}: B={top} (top-1 by convergence) beats B=1: "
                               + depths_by_verdict({d: g and g["verdict"] for d, g in gains.items()})
                               + f" ({gains[depths[-1]]['method'] if gains[depths[-1]] else 'n/a'})."]))
    return block


def selection_block(task: str, sweep: str | None = None, depths: list = study.DEPTHS):
    """Top-1 by convergence, majority vote and pass@B at every breadth > 1 of `sweep`."""
    sweep = sweep or f"{task}-eqr-grid"

    def block(res):
        if sweep not in res["sweeps"]:
            return f"- {task}: breadth grid not finished."
        rows = [[f"B={b}", rule] + [show(res, sweep, d, b, rule) for d in depths]
                for b in study.BREADTHS[1:] for rule in ("conv_top1", "majority", f"pass@{b}")]
        b, deepest = max(study.BREADTHS), depths[-1]
        wins = sum(1 for d in depths
                   if (acc(res, sweep, d, b, "conv_top1") or 0) >= (acc(res, sweep, d, b, "majority") or 0))
        verdicts = [c["verdict"] for d in depths
                    if (c := compare(res, (sweep, d, b, "majority"), (sweep, d, b, "conv_top1"))) is not None]
        return (f"{task} ({res['sweeps'][sweep]['puzzles']} puzzles; pass@B is an expectation over draws, "
                f"given without an interval):\n\n"
                + md_table(["B", "rule", *[f"D={d}" for d in depths]], rows) + "\n\n"
                + claims(res, [f"- {task}: at B={b}, top-1 by convergence >= majority vote at {wins} of "
                               f"{len(depths)} depths; top-1 by convergence > majority vote by the interval rule: "
                               + ", ".join(f"{verdicts.count(v)} {v}" for v in ("reproduces", "does not reproduce", "inconclusive"))
                               + f" (pass@{b}, the ceiling of any selection rule, at D={deepest}: "
                               f"{pct(acc(res, sweep, deepest, b, f'pass@{b}'))})."]))
    return block


# ----------------------------------------------------------------------------- fixed-point residuals

def residual_row(res, sweep: str, depth: int, breadth: int, group: str = "picked") -> dict | None:
    for r in res["sweeps"].get(sweep, {}).get("residuals", []):
        if (r["depth"], r["breadth"], r["group"]) == (depth, breadth, group):
            return r
    return None


def residual_auc(res, sweep: str, depth: int, breadth: int) -> tuple[float, float, float] | None:
    """(AUC, low, high) of "lower final residual, right answer" over the answers the cell's headline rule
    picks (one per puzzle, so trajectories resample as puzzles); the residual binned as evaluate.py counts it
    (evaluation/residuals.py), ties within a bin counted half. None without residual counts."""
    record = res["sweeps"].get(sweep, {})
    if "residual_histograms" not in record:
        return None
    grid = record["residual_grid"]
    if depth not in grid["depths"] or breadth not in grid["breadths"]:
        return None
    d, b = grid["depths"].index(depth), grid["breadths"].index(breadth)
    solved, failed = record["residual_histograms"][d][b][1]  # group "picked" (evaluation/residuals.GROUPS)
    scores = [bin_ for bin_, count in solved + failed for _ in range(count)]
    is_failed = [False] * sum(c for _, c in solved) + [True] * sum(c for _, c in failed)
    if all(is_failed) or not any(is_failed):
        return None
    return intervals.auc_interval(scores, is_failed, count=BOOTSTRAP_DRAWS, seed=study.SEED)


def residual_block(sweeps: dict, depths: list):
    """Mean residual of the picked answers (solved / failed) per depth at B=1 and the largest B, with the AUC
    of the residual for correctness; one claim line per model and depth >= 2."""
    def block(res):
        rows, lines = [], []
        mean = lambda x: "–" if x is None else f"{x:.3g}"
        for label, sweep in sweeps.items():
            if "residuals" not in res["sweeps"].get(sweep, {}):
                rows.append([label, "–"] + ["not measured"] * len(depths))
                continue
            for b in sorted({1, max(res["sweeps"][sweep]["residual_grid"]["breadths"])}):
                cells = []
                for d in depths:
                    r, a = residual_row(res, sweep, d, b), residual_auc(res, sweep, d, b)
                    if r is None:
                        cells.append("–")
                        continue
                    cells.append(f"{mean(r['residual_solved'])} / {mean(r['residual_failed'])}"
                                 + ("" if a is None else f"; AUC {a[0]:.2f} ({a[1]:.2f}–{a[2]:.2f})"))
                rows.append([label, f"B={b}"] + cells)
            aucs = {d: residual_auc(res, sweep, d, 1) for d in depths if d >= 2}
            verdicts = {d: a and intervals.verdict(a[1], a[2], 0.5, "above") for d, a in aucs.items()}
            lines.append(f"- {label}, B=1: a lower final residual goes with a right answer (AUC > 0.5): "
                         + depths_by_verdict(verdicts) + f"; mean residual of all answers from D={depths[0]} "
                         f"to D={depths[-1]}: " + " → ".join(
                             "–" if (r := residual_row(res, sweep, d, 1, "all")) is None or r["residual"] is None
                             else f"{r['residual']:.3g}" for d in depths) + ".")
        table = md_table(["model", "B", *[f"D={d}" for d in depths]], rows)
        return table + "\n\n" + claims(res, lines)
    return block


def halting_rows(res, names, depths=(16, 64)):
    """(run, D, no-halting row, halting row) where both exist."""
    for name in names:
        for d in depths:
            plain, halted = cell(res, b1(name), d, 1, "traj1"), cell(res, b1(name), d, 1, "traj1+halt")
            if plain and halted:
                yield name, d, plain, halted


def halting_table(res):
    rows = []
    for name, d, plain, halted in halting_rows(res, [n for n in res["runs"] if n not in ("sudoku-ff", "sudoku-tied")]):
        s = halted["nfe_saving_at_equal_accuracy"]
        rows.append([f"`{name}`", d, pct_ci(plain), f"{plain['nfe_per_puzzle']:.0f}", pct_ci(halted),
                     f"{halted['nfe_per_puzzle']:.1f}", "–" if s is None else f"{s:.2f}x"])
    return md_table(["run", "D cap", "exact, no halting", "NFE", "exact, halting", "NFE", "saving at equal accuracy"], rows)


def halting_claims(res):
    lines = []
    for name, d, plain, halted in halting_rows(res, ("sudoku-trm", "sudoku-eqr", "maze-eqr")):
        s = halted["nfe_saving_at_equal_accuracy"]
        c = compare(res, (b1(name), d, 1, "traj1"), (b1(name), d, 1, "traj1+halt"))
        # a saving is a ratio of compute at a measured accuracy: no interval, so no verdict by the rule
        lines.append(f"- elastic halting, `{name}`, D cap {d}: {pct_ci(halted)} with "
                     f"{halted['nfe_per_puzzle']:.0f} NFE per puzzle against {pct_ci(plain)} with "
                     f"{plain['nfe_per_puzzle']:.0f} without halting (difference {points(c['difference'])} "
                     f"({points(c['low'])}, {points(c['high'])})); saving at equal accuracy "
                     f"{'–' if s is None else f'{s:.2f}x'} ({'a saving' if s and s > 1 else 'no saving'}; "
                     f"a ratio without an interval, so no verdict).")
    return claims(res, lines)


# The paper's claims tested here: (claim, source, the paper's numbers, the cell a claim says is worse, the
# cell it says is better), cells as (sweep, D, B, rule). The paper's numbers (exact %,
# Sudoku-Extreme / Maze-Unique 30x30); the study's models are far smaller, so only the direction is compared.
PAPER = "the paper"
PAPER_CLAIMS = [
    ("weight-tied beats untied feed-forward at equal block applications (Sudoku, 12 NFE; the paper's FF has 42 blocks)",
     f"{PAPER} (construction path)", "2.6 → 32.6", ("sudoku-ff-d1", 1, 1, "traj1"), ("sudoku-tied-b1", 1, 1, "traj1")),
    ("supervision over 16 steps beats one step (Sudoku)", f"{PAPER} (construction path)", "32.6 → 74.7",
     ("sudoku-tied-b1", 1, 1, "traj1"), ("sudoku-tied-sup-b1", 16, 1, "traj1")),
    ("halting (ACT) beats supervision without it (Sudoku, D=16; the paper's step also adds the two-level state)",
     f"{PAPER} (construction path)", "76.5 → 84.8", ("sudoku-tied-sup-b1", 16, 1, "traj1"), ("sudoku-trm-b1", 16, 1, "traj1")),
    ("EqR beats TRM (Sudoku, D=16, B=1)", f"{PAPER} (headline table)", "84.8 → 86.4",
     ("sudoku-trm-b1", 16, 1, "traj1"), ("sudoku-eqr-b1", 16, 1, "traj1")),
    *[(f"random initial state lifts TRM (maze, at the trained D=4, training seed {seed})", f"{PAPER} (RI / NI on mazes)",
       "44.9 → 68.6", (f"maze-trm{suffix}-b1", 4, 1, "traj1"), (f"maze-trm-ri{suffix}-b1", 4, 1, "traj1"))
      for seed, suffix in ((0, ""), (1, "-s1"))],
    *[(f"path noise lifts TRM + RI (maze, at the trained D=4, training seed {seed})", f"{PAPER} (RI / NI on mazes)",
       "68.6 → 82.2", (f"maze-trm-ri{suffix}-b1", 4, 1, "traj1"), (f"maze-eqr{suffix}-b1", 4, 1, "traj1"))
      for seed, suffix in ((0, ""), (1, "-s1"))],
    ("depth beyond training helps EqR: 4x the trained depth (Sudoku, D=16 → 64)", f"{PAPER} (headline table)",
     "86.4 → 93.0", ("sudoku-eqr-b1", 16, 1, "traj1"), ("sudoku-eqr-b1", 64, 1, "traj1")),
    ("depth beyond training helps EqR: 4x the trained depth (maze, D=4 → 16; the paper's D=16 → 64)",
     f"{PAPER} (headline table)", "82.2 → 88.9", ("maze-eqr-b1", 4, 1, "traj1"), ("maze-eqr-b1", 16, 1, "traj1")),
    ("breadth helps EqR: B=64 top-1 by convergence beats B=1 (Sudoku, D=64; the paper's B=128)",
     f"{PAPER} (headline table)", "93.0 → 99.8", ("sudoku-eqr-grid", 64, 1, "traj1"), ("sudoku-eqr-grid", 64, 64, "conv_top1")),
    ("breadth helps EqR: B=64 top-1 by convergence beats B=1 (maze, D=64; the paper's B=128)",
     f"{PAPER} (headline table)", "88.9 → 93.0", ("maze-eqr-grid", 64, 1, "traj1"), ("maze-eqr-grid", 64, 64, "conv_top1")),
    ("top-1 by convergence beats majority vote (EqR, Sudoku, D=64, B=64)", f"{PAPER} (breadth)", "stated, no number",
     ("sudoku-eqr-grid", 64, 64, "majority"), ("sudoku-eqr-grid", 64, 64, "conv_top1")),
    ("top-1 by convergence beats majority vote (EqR, maze, D=64, B=64)", f"{PAPER} (breadth)", "stated, no number",
     ("maze-eqr-grid", 64, 64, "majority"), ("maze-eqr-grid", 64, 64, "conv_top1")),
    ("top-1 by convergence beats majority vote (EqR, Sudoku trained at D=4, D=16, B=64)", f"{PAPER} (breadth)",
     "stated, no number", ("sudoku-d4-eqr-grid", 16, 64, "majority"), ("sudoku-d4-eqr-grid", 16, 64, "conv_top1")),
    # The un-shaped model: the claim is that convergence selection does not help it, so the verdict is the
    # mirror image: reproduces when majority vote is ahead by the interval, fails when convergence is.
    (("top-1 by convergence does not beat majority vote for the un-shaped TRM (fresh starts; Sudoku trained at D=4, "
      "D=16, B=64)"), f"{PAPER} (breadth)", "stated, no number", ("sudoku-d4-trm-grid", 16, 64, "majority"),
     ("sudoku-d4-trm-grid", 16, 64, "conv_top1"), "below"),
    ("EqR beats untied feed-forward at equal evaluated compute (Sudoku, 12 block applications per answer: EqR at D=1)",
     f"{PAPER} (feed-forward of equal compute)", "2.6 → not stated", ("sudoku-ff-d1", 1, 1, "traj1"), ("sudoku-eqr-b1", 1, 1, "traj1")),
]


def stage_command(*sweeps: str) -> str:
    """The driver command that makes these sweeps' numbers: their training stages and theirs."""
    by_name = {s.name: s for s in study.SWEEPS}
    keys = dict.fromkeys(k for name in sweeps for k in (f"train-{by_name[name].run}", f"eval-{name}"))
    return "python scripts/reproduce_cpu.py run " + " ".join(keys)


def claims_table(res):
    rows = []
    for claim, source, paper, base, better, *claimed in PAPER_CLAIMS:
        c = compare(res, base, better, *claimed)
        ours = "not run (stage missing)" if c is None else (
            f"{pct_ci(c['base'])} → {pct_ci(c['better'])}; difference {points(c['difference'])} "
            f"({points(c['low'])}, {points(c['high'])}), {c['method']}")
        rows.append([claim, source, paper, ours, "–" if c is None else f"**{c['verdict']}**",
                     f"`{stage_command(*dict.fromkeys((base[0], better[0])))}`"])
    return md_table(["claim", "source", "paper (exact %)", "ours (exact %, 95 % interval)", "verdict", "command"], rows)


def commands_table(res):
    records = ([(f"data-{t}", d) for t, d in res["datasets"].items()] + [(f"train-{n}", r) for n, r in res["runs"].items()]
               + [(f"eval-{n}", s) for n, s in res["sweeps"].items()])
    rows = [[f"`{k}`", f"`{v['command']}`", fmt_wall(v["wall_s"]), "results.json" if v.get("carried_over") else "this checkout"]
            for k, v in records]
    table = md_table(["stage", "command", "wall", "numbers from"], rows)
    have = {k for k, _ in records}
    missing = [s.key for s in study.stages() if s.key not in have]
    return table + "\n\nStages not finished (their numbers are absent): " + (", ".join(missing) or "none") + "."


def shipped_block(res):
    shipped = res.get("shipped", {})
    lines = [f"- `{s['path']}` ({s['bytes'] / 1e6:.2f} MB, step {s['step']}), from `{name}`." for name, s in shipped.items()]
    lines += [f"- `{name}` is not shipped: its exact accuracy at D=16, B=1, is below the shipping floor "
              f"{pct(study.SHIP_FLOOR)} (or its evaluation has not finished)." for name in study.SHIPPED if name not in shipped]
    return "\n".join(lines)


# Document order: the claims blocks fill res["claims"] in this order, and `summary` (last) lists them.
BLOCKS = {
    "total_wall": total_wall,
    "data": data_block,
    "training_table": training_table,
    "construction_table": construction_table,
    "construction_claims": construction_claims,
    "ri_ni_table": ri_ni_table(study.RI_NI, [1, 4, 16, 64]),
    "ri_ni_claims": ri_ni_claims(study.RI_NI, (16, 64)),
    "d4_table": ri_ni_table(study.RI_NI_D4, study.D4_DEPTHS),
    "d4_claims": ri_ni_claims(study.RI_NI_D4, (4, 16)),
    "agreement_table": agreement_table,
    "d4_ordering": ordering_claims(study.RI_NI_D4, (4, 16)),
    "depth_table": depth_table,
    "depth_claims": depth_claims,
    "breadth_sudoku": breadth_block("sudoku"),
    "breadth_maze": breadth_block("maze"),
    "selection_sudoku": selection_block("sudoku"),
    "selection_maze": selection_block("maze"),
    "breadth_d4": lambda res: "\n\n".join(breadth_block(f"sudoku D=4, {kind}", f"sudoku-d4-{kind.lower()}-grid",
                                                         study.D4_DEPTHS)(res) for kind in ("EqR", "TRM")),
    "selection_d4": lambda res: "\n\n".join(selection_block(f"sudoku D=4, {kind}", f"sudoku-d4-{kind.lower()}-grid",
                                                             study.D4_DEPTHS)(res) for kind in ("EqR", "TRM")),
    "residuals_d4": residual_block({"sudoku D=4, EqR": "sudoku-d4-eqr-grid", "sudoku D=4, TRM": "sudoku-d4-trm-grid"},
                                   study.D4_DEPTHS),
    "halting_table": halting_table,
    "halting_claims": halting_claims,
    "commands_table": commands_table,
    "shipped": shipped_block,
    "claims_table": claims_table,
    "summary": lambda res: "\n".join(res["claims"]),
}


def fill(template: str, res: dict) -> str:
    """The template with every `{{name}}` replaced by its block; an unknown or unused name is an error."""
    names = re.findall(r"\{\{(\w+)\}\}", template)
    unknown, unused = sorted(set(names) - set(BLOCKS)), sorted(set(BLOCKS) - set(names))
    if unknown or unused:
        raise RunError(f"{TEMPLATE}: " + "; ".join(
            ([f"unknown blocks {unknown}"] if unknown else []) + ([f"blocks never used {unused}"] if unused else [])))
    res = {**res, "claims": []}
    text = {name: BLOCKS[name](res) for name in BLOCKS}
    return re.sub(r"\{\{(\w+)\}\}", lambda m: text[m.group(1)], template)
