"""The CPU study driver's pieces: the runner skips finished stages and resumes interrupted ones; the report
carries over only unchanged records and fills the template from a results dict."""
import json
import os
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


def test_runner_selects_stages_by_pattern():
    keys = [s.key for s in runner.selected(study.stages(), ["train-sudoku-d4-*"])]
    assert keys == [f"train-sudoku-d4-{k}{s}" for s in ("", "-s1") for k in ("trm", "trm-ri", "eqr")]
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
    assert "| `sudoku-d4-trm-ri` | sudoku-d4-trm-ri | 0.0 | 0.0 | 50.0 | 0.0 | 50.0 |" in doc
    assert "| `sudoku-d4-eqr` | 50.0 | 50.0 | 75.0 | 75.0 |" in doc  # the agreement row
    assert "largest gap over 3 finished runs: +0.0 points" in doc
    assert ("sudoku D=4, training seed 0, D=4: TRM < TRM + RI (25.0 vs 50.0): **reproduces**; "
            "TRM + RI < EqR (50.0 vs 75.0): **reproduces**.") in doc
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
