"""The CPU study driver's pieces: the runner skips finished stages and resumes interrupted ones; the report
carries over only unchanged records and fills the template from a results dict."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from cpu_study import report, runner, study  # noqa: E402
from utils.errors import RunError  # noqa: E402


def write_file(path: str, exit_code: int = 0) -> list:
    """A command that creates `path` and exits with `exit_code`."""
    return [sys.executable, "-c", f"open({path!r}, 'w').close(); raise SystemExit({exit_code})"]


def test_runner_skips_finished_stages_and_resumes_an_interrupted_one(tmp_path):
    first, partial, second = (str(tmp_path / name) for name in ("first", "partial", "second"))
    stages = [
        runner.Stage("first", write_file(first), done=lambda: os.path.exists(first)),
        # a fresh start is interrupted after leaving partial work; the resume command finishes it
        runner.Stage("second", write_file(partial, exit_code=3), done=lambda: os.path.exists(second),
                     resume_argv=write_file(second), started=lambda: os.path.exists(partial)),
    ]
    ledger, logs = str(tmp_path / "ledger.json"), str(tmp_path / "logs")

    with pytest.raises(RunError, match="stage second failed with exit code 3"):
        runner.run_all(stages, ledger, logs, {}, str(tmp_path))
    assert os.path.exists(first) and os.path.exists(partial) and not os.path.exists(second)

    runner.run_all(stages, ledger, logs, {}, str(tmp_path))
    with open(ledger) as f:
        entries = json.load(f)
    assert len(entries["first"]["attempts"]) == 1  # finished, so not run again
    assert [a["exit_code"] for a in entries["second"]["attempts"]] == [3, 0]
    assert entries["second"]["attempts"][1]["command"] == runner.shown(write_file(second))  # the resume command
    assert entries["second"]["wall_s"] == pytest.approx(sum(a["wall_s"] for a in entries["second"]["attempts"]), abs=0.2)
    assert all(line.startswith("done") for line in runner.listing(stages, ledger))


def test_a_fresh_start_restarts_the_ledgers_wall_time(tmp_path):
    """Wall time adds up over a start and its resumes; a stage started again from scratch (its command changed, or
    its folder was removed) counts only from that start."""
    ledger = str(tmp_path / "ledger.json")
    runner.record_attempt(ledger, "s", ["python", "a"], 10.0, 1, fresh=True)
    runner.record_attempt(ledger, "s", ["python", "a", "resume=true"], 5.0, 0)
    assert runner.load_ledger(ledger)["s"]["wall_s"] == pytest.approx(15.0)
    runner.record_attempt(ledger, "s", ["python", "b"], 7.0, 0, fresh=True)
    entry = runner.load_ledger(ledger)["s"]
    assert entry["wall_s"] == pytest.approx(7.0) and len(entry["attempts"]) == 3  # the history is kept


def test_runner_selects_stages_by_pattern():
    keys = [s.key for s in runner.selected(study.stages(), ["train-sudoku-d4-*"])]
    assert keys == [f"train-sudoku-d4-{k}{s}" for s in ("", "-s1") for k in ("trm", "trm-ri", "eqr")] + [
        "train-sudoku-d4-hrm"]
    assert len(runner.selected(study.stages(), [])) == len(study.stages())


def sweep(run: str, accuracies: dict, depths=(1, 2, 4, 8, 16)) -> dict:
    rows = [{"depth": d, "breadth": 1, "rule": rule, "correct": round(256 * accuracies.get(d, 0.0)), "total": 256,
             "accuracy": accuracies.get(d, 0.0), "token_accuracy": 0.9, "nfe_per_puzzle": 12.0 * d,
             "nfe_saving_at_equal_accuracy": None} for d in depths for rule in ("traj1", "traj1+halt")]
    return {"run": run, "puzzles": 256, "rows": rows, "command": f"python evaluate.py {run}", "wall_s": 5.0}


def run_record(name: str, exact: float) -> dict:
    return {"task": "sudoku", "arm": "sudoku-d4", "label": name, "steps": 1000, "seed": 0, "params": 10,
            "blocks_per_step": 12, "forward_dtype": "float32", "train_halt_max_steps": 4, "act_halting": True,
            "random_init": True, "lambda": 1.0, "noise_scale": 0.0, "examples_presented": 100,
            "train_log_exact": 0.5, "eval_curve": [{"step": 1000, "exact": exact, "token": 0.9}],
            "command": f"python pretrain.py {name}", "wall_s": 60.0}


def test_report_fills_the_template_from_a_results_dict():
    exact = {"sudoku-d4-trm": 0.25, "sudoku-d4-trm-ri": 0.5, "sudoku-d4-eqr": 0.75}
    res = {"seed": 0, "datasets": {}, "shipped": {},
           "runs": {n: run_record(n, a) for n, a in exact.items()},
           "sweeps": {**{f"{n}-b1": sweep(n, {4: a, 16: a}) for n, a in exact.items()},
                      **{f"{n}-train": sweep(n, {4: 0.5}, depths=(4,)) for n in exact}}}
    with open(os.path.join(ROOT, report.TEMPLATE)) as f:
        doc = report.fill(f.read(), res)
    assert "{{" not in doc
    none, half = "0.0 (0.0–1.5)", "50.0 (43.9–56.1)"  # every accuracy with its Wilson 95 % interval
    assert f"| `sudoku-d4-trm-ri` | sudoku-d4-trm-ri | {none} | {none} | {half} | {none} | {half} |" in doc
    assert f"| `sudoku-d4-eqr` | 50.0 | {half} | 75.0 | 75.0 (69.4–79.9) |" in doc  # the agreement row
    assert "largest gap over 3 finished runs: +0.0 points" in doc
    assert ("sudoku D=4, training seed 0, D=4: TRM < TRM + RI: 25.0 (20.1–30.6) vs 50.0 (43.9–56.1), difference "
            "+25.0 (+16.7, +32.8): **reproduces**; TRM + RI < EqR: 50.0 (43.9–56.1) vs 75.0 (69.4–79.9), difference "
            "+25.0 (+16.7, +32.8): **reproduces**.") in doc  # Newcombe's interval from the counts
    assert "D=16: TRM < TRM + RI < EqR holds for 1 of 1 training seeds (1 not finished)" in doc
    summary = doc.split("## Summary", 1)[1].split("## Data", 1)[0]
    assert "holds for 1 of 1 training seeds" in summary  # claims are repeated at the top

    with pytest.raises(RunError, match="unknown blocks \\['nothing'\\]"):
        report.fill("{{nothing}}", res)


def test_collect_carries_over_only_records_made_by_the_same_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no stage has finished here
    stages = {s.key: s for s in study.stages()}
    previous = {"runs": {"sudoku-trm": {**run_record("sudoku-trm", 0.5),
                                        "command": runner.shown(stages["train-sudoku-trm"].argv)}},
                "sweeps": {"sudoku-trm-b1": {**sweep("sudoku-trm", {16: 0.5}), "command": "python evaluate.py old"}}}
    res = report.collect(previous)
    assert res["runs"]["sudoku-trm"]["carried_over"] is True
    assert res["runs"]["sudoku-trm"]["arm"] == "sudoku"  # from the study, whatever the old record said
    assert "sudoku-trm-b1" not in res["sweeps"]  # its command changed: the old numbers do not count
    assert res["datasets"] == {}


def grid_sweep(run: str, correct: dict, puzzles: int = 40, outcomes: dict | None = None) -> dict:
    """A breadth-grid record at D=64 with `correct` {(breadth, rule): puzzles solved}; `outcomes` {(breadth, rule):
    per-puzzle 0/1 list} as sweep_record stores them for a sweep saved with save_outputs=true."""
    rows = [{"depth": 64, "breadth": b, "rule": rule, "correct": k, "total": puzzles, "accuracy": k / puzzles,
             "token_accuracy": 0.9, "nfe_per_puzzle": 768.0, "nfe_saving_at_equal_accuracy": None}
            for (b, rule), k in correct.items()]
    record = {"run": run, "puzzles": puzzles, "rows": rows, "command": f"python evaluate.py {run}", "wall_s": 5.0}
    if outcomes:
        record["outcomes"] = [{"depth": 64, "breadth": b, "rule": rule, "index": list(range(puzzles)), "solved": o}
                              for (b, rule), o in outcomes.items()]
    return record


def test_verdicts_follow_the_interval_rule_paired_where_outcomes_exist():
    base, better = ("g", 64, 64, "majority"), ("g", 64, 64, "conv_top1")
    verdict = lambda correct, outcomes=None: report.compare({"sweeps": {"g": grid_sweep("sudoku-eqr", correct, outcomes=outcomes)}},
                                                            base, better)
    assert verdict({(64, "majority"): 10, (64, "conv_top1"): 30})["verdict"] == "reproduces"
    assert verdict({(64, "majority"): 30, (64, "conv_top1"): 10})["verdict"] == "does not reproduce"
    unpaired = verdict({(64, "majority"): 20, (64, "conv_top1"): 24})
    assert unpaired["verdict"] == "inconclusive" and unpaired["method"] == "unpaired, from the counts (Newcombe)"
    # the same counts, where the two answers differ on only 4 puzzles (both right on the same 20): pairing
    # keeps the correlation, and the interval shrinks to the 4 puzzles that differ
    same = [1] * 20 + [0] * 20
    changed = [1] * 24 + [0] * 16
    paired = verdict({(64, "majority"): 20, (64, "conv_top1"): 24}, {(64, "majority"): same, (64, "conv_top1"): changed})
    assert paired["method"] == "paired bootstrap over 40 puzzles" and paired["difference"] == pytest.approx(0.1)
    assert paired["verdict"] == "reproduces" and paired["low"] > 0 > unpaired["low"]
    assert report.compare({"sweeps": {}}, base, better) is None  # a stage that did not run


def test_a_claim_that_convergence_does_not_help_gets_the_mirror_verdict():
    base, better = ("g", 64, 64, "majority"), ("g", 64, 64, "conv_top1")
    verdict = lambda correct: report.compare({"sweeps": {"g": grid_sweep("sudoku-trm", correct)}}, base, better,
                                             "below")["verdict"]
    assert verdict({(64, "majority"): 30, (64, "conv_top1"): 10}) == "reproduces"  # majority vote ahead
    assert verdict({(64, "majority"): 10, (64, "conv_top1"): 30}) == "does not reproduce"  # convergence ahead
    assert verdict({(64, "majority"): 20, (64, "conv_top1"): 21}) == "inconclusive"


def residual_record(solved: list, failed: list) -> dict:
    """A sweep record at (D=16, B=1) whose picked answers have these binned residuals (histogram bins)."""
    hist = lambda bins: [[b, bins.count(b)] for b in sorted(set(bins))]
    empty = [[], []]
    return {"residual_grid": {"depths": [16], "breadths": [1]},
            "residual_histograms": [[[empty, [hist(solved), hist(failed)]]]],
            "residuals": [{"depth": 16, "breadth": 1, "group": "picked", "residual_solved": 1.0, "residual_failed": 2.0}]}


def test_the_residual_auc_equals_the_count_of_ordered_pairs():
    solved, failed = [3, 5, 5, 7, 9, 2], [5, 8, 9, 9, 12]
    got = report.residual_auc({"sweeps": {"s": residual_record(solved, failed)}}, "s", 16, 1)
    # brute force: every (solved, failed) pair, a right answer with the lower residual scores 1, a tie 1/2
    pairs = [(s, f) for s in solved for f in failed]
    expected = sum(1.0 if s < f else 0.5 if s == f else 0.0 for s, f in pairs) / len(pairs)
    assert got[0] == pytest.approx(expected) and got[1] <= got[0] <= got[2]
    separated = report.residual_auc({"sweeps": {"s": residual_record([1] * 30, [9] * 30)}}, "s", 16, 1)
    assert separated == (1.0, 1.0, 1.0)
    assert report.residual_auc({"sweeps": {"s": residual_record([1, 2], [])}}, "s", 16, 1) is None  # no failure
    assert report.residual_auc({"sweeps": {"s": {}}}, "s", 16, 1) is None  # a sweep from before residuals

    record = residual_record([1] * 30, [9] * 30)
    record["residuals"] += [{"depth": 16, "breadth": 1, "group": "all", "residual": 1.5}]
    res = {"sweeps": {"s": record}}
    block = report.residual_block({"model": "s", "older": "t"}, [16])(res)
    assert "| model | B=1 | 1 / 2; AUC 1.00 (1.00–1.00) |" in block and "| older | – | not measured |" in block
    assert ("- model, B=1: a lower final residual goes with a right answer (AUC > 0.5): **reproduces** at depths [16], "
            "**does not reproduce** at none, **inconclusive** at none; mean residual of all answers from D=16 to D=16: 1.5.") in block


def test_claims_table_has_a_row_per_claim_with_its_command():
    res = {"sweeps": {"sudoku-eqr-grid": grid_sweep("sudoku-eqr", {(1, "traj1"): 10, (64, "conv_top1"): 30,
                                                                   (64, "majority"): 28})}}
    table = report.claims_table(res).splitlines()
    assert len(table) == 2 + len(report.PAPER_CLAIMS)
    breadth = next(line for line in table if "breadth helps EqR" in line and "Sudoku" in line)
    assert ("| 93.0 → 99.8 | 25.0 (14.2–40.2) → 75.0 (59.8–85.8); difference +50.0 (+28.5, +65.3), unpaired, "
            "from the counts (Newcombe) | **reproduces** | "
            "`python scripts/reproduce_cpu.py run train-sudoku-eqr eval-sudoku-eqr-grid` |") in breadth
    vote = next(line for line in table if "majority vote" in line and "Sudoku" in line)
    assert "**inconclusive**" in vote
    assert sum("not run (stage missing)" in line for line in table) == len(report.PAPER_CLAIMS) - 2


def test_sweep_record_keeps_the_per_puzzle_outcomes_of_saved_predictions(tmp_path, monkeypatch):
    import numpy as np
    from evaluation import predictions
    from evaluation.report import RESULTS_FORMAT

    monkeypatch.chdir(tmp_path)
    sweep = study.Sweep("s", "sudoku-eqr", [64], [1, 64], 8)
    os.makedirs(sweep.path)
    record = grid_sweep("sudoku-eqr", {(1, "traj1"): 2, (64, "conv_top1"): 3}, puzzles=4)
    residual_rows = [{"depth": 64, "breadth": 1, "group": "picked", "residual_solved": 0.5, "residual_failed": 3.0}]
    histograms = [[[[[], []], [[[4, 1]], [[9, 1]]]], [[[], []], [[], []]]]]
    with open(f"{sweep.path}/results.json", "w") as f:
        json.dump({"format": RESULTS_FORMAT, "rows": record["rows"], "wall_time_s": 1.0, "residuals": residual_rows,
                   "grid": {"depths": [64], "breadths": [1, 64]}, "counts": {"residual_histograms": histograms}}, f)
    labels = np.array([[1, 2], [0, 0], [2, 1], [1, 1], [2, 2]], np.uint8)  # puzzle 1 has no scored cell
    np.savez(f"{sweep.path}/{predictions.FILE_NAME}", format=predictions.FORMAT, rule="conv_top1", depth=64, breadth=64,
             index=np.arange(5), inputs=labels, labels=labels, answers=labels, trajectory=np.zeros(5, np.int32),
             solved=np.array([True, False, False, True, True]))
    got = report.sweep_record(sweep)
    assert got["outcomes"] == [{"depth": 64, "breadth": 64, "rule": "conv_top1", "index": [0, 2, 3, 4],
                                "solved": [1, 0, 1, 1]}]
    assert report.outcomes({"sweeps": {"s": got}}, "s", 64, 64, "conv_top1") == {0: 1, 2: 0, 3: 1, 4: 1}
    assert report.outcomes({"sweeps": {"s": got}}, "s", 64, 1, "traj1") is None  # only the headline cell is saved
    assert got["residuals"] == residual_rows and report.residual_auc({"sweeps": {"s": got}}, "s", 64, 1)[0] == 1.0


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_the_usage_and_exits_zero(flag):
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "reproduce_cpu.py"), flag],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "python scripts/reproduce_cpu.py --list" in done.stdout and not done.stderr


def test_parameter_count_of_a_run_without_ema_equals_the_shadows_count():
    """HRM trains without EMA; its record's parameter count comes from the rebuilt model, as the EMA's would."""
    from models.eqr import ModelConfig, RecurrentReasoner
    from models.losses import ACTLossHead
    arch = ModelConfig(seq_len=8, vocab_size=4, hidden_size=32, num_heads=4, H_cycles=2, L_cycles=2, L_layers=1,
                       H_level_layers=1, one_step_grad=True, random_init=False).to_dict()
    head = ACTLossHead(RecurrentReasoner(ModelConfig.from_dict(arch)))
    state = head.state_dict()
    shadow = {name: p for name, p in head.named_parameters()}
    assert len(shadow) < len(state)  # buffers (the fixed initial latents) are in the state dict, not counted
    with_ema = {"model": state, "ema": {"shadow": shadow}, "config": {"arch": arch}}
    without = {"model": state, "config": {"arch": arch}}
    assert report.parameter_count(without) == report.parameter_count(with_ema) == sum(p.numel() for p in shadow.values())
