"""diagnose.py end to end on a tiny checkpoint: the CSV's columns, summary AUCs recomputed from the CSV, sharding."""
import csv
import json
import math
import os

import numpy as np
import pytest

import diagnose
from evaluation import sweep
import launch as launcher
from test_eval_grid import EQR, build_model, write_checkpoint, write_data

DEPTH, K = 5, 2
ARGS = [f"depth={DEPTH}", f"lyapunov_k={K}", "prefix_segments=2", "progress=false", "device=cpu"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("diagnose")
    head = build_model(EQR, q_weight_std=0.5)
    data = write_data(str(root / "data"), head, n=9)  # 9 puzzles: the last batch is padded
    return write_checkpoint(str(root / "eqr.pt"), head, data)


def read_rows(output_dir) -> list[dict]:
    with open(os.path.join(output_dir, "diagnostics.csv"), newline="") as f:
        return list(csv.DictReader(f))


def pair_auc(rows, score) -> float:
    """P(a failure's score > a success's) + ties / 2, by counting every pair."""
    failures = [float(r[score]) for r in rows if r["solved"] == "0"]
    successes = [float(r[score]) for r in rows if r["solved"] == "1"]
    pairs = [(f > s) + 0.5 * (f == s) for f in failures for s in successes]
    return sum(pairs) / len(pairs)


def test_summary_aucs_equal_the_ones_recomputed_from_the_csv(checkpoint, tmp_path, capsys):
    out = tmp_path / "one"
    assert diagnose.main([f"checkpoint={checkpoint}", f"output_dir={out}", "global_batch_size=4", "breadth=2",
                          *ARGS]) == 0
    rows = read_rows(out)
    assert [(int(r["puzzle"]), int(r["trajectory"])) for r in rows] == [(p, t) for p in range(9) for t in range(2)]
    assert list(rows[0])[:7] == ["puzzle", "trajectory", "solved", "givens", "to_fill", "lyap_1", "lyap_2"]
    assert {f"disp_{DEPTH}", f"reldisp_{DEPTH}", f"q_halt_{DEPTH}", f"solved_{DEPTH}"} <= set(rows[0])
    assert all(r["solved"] == r[f"solved_{DEPTH}"] for r in rows)
    assert all(int(r["givens"]) + int(r["to_fill"]) == 8 for r in rows)  # every cell labelled
    with open(out / "summary.json") as f:
        summary = json.load(f)
    failed = sum(r["solved"] == "0" for r in rows)
    assert 0 < failed < len(rows), "the tiny model should solve some puzzles and fail others"
    assert summary["failures"] == failed and summary["trajectories"] == 18 and summary["puzzles"] == 9
    assert summary["auc_lyap_1"]["auc"] == pytest.approx(pair_auc(rows, "lyap_1"), abs=1e-12)
    assert summary["auc_final_reldisp"]["auc"] == pytest.approx(pair_auc(rows, f"reldisp_{DEPTH}"), abs=1e-12)
    unsolved = [r for r in rows if r["solved_2"] == "0"]
    prefix = summary["prefix"]
    assert prefix["trajectories"] == len(unsolved)
    for key, column in (("auc_lyap_1", "lyap1_prefix"), ("auc_reldisp", "reldisp_2"), ("auc_q_halt", "q_halt_2")):
        if 0 < sum(r["solved"] == "0" for r in unsolved) < len(unsolved):
            assert prefix[key] == pytest.approx(pair_auc(unsolved, column), abs=1e-12)
    settle = summary["settling"]
    mobility = lambda r: max(float(r[f"reldisp_{t}"]) for t in range(DEPTH - settle["tail_segments"] + 1, DEPTH + 1))
    fails = [r for r in rows if r["solved"] == "0"]
    band = settle["held_out"]["band"]
    if band is not None:  # null when no even-numbered puzzle is solved
        assert settle["held_out"]["share_failures_settled"] == pytest.approx(
            sum(mobility(r) <= band for r in fails) / len(fails))
    assert all(float(r["lyap_sum"]) == pytest.approx(float(r["lyap_1"]) + float(r["lyap_2"]), abs=1e-12) for r in rows)
    low, high = summary["auc_lyap_1"]["auc_ci95"]
    assert low <= summary["auc_lyap_1"]["auc"] <= high
    assert {"displacement_by_outcome.png", "lyap1_vs_displacement.png", "roc.png"} <= set(os.listdir(out))

    # summary_only: the same measures from the CSV alone, under another settling rule; the run's description kept
    assert diagnose.main(["checkpoint=unused", f"output_dir={out}", "summary_only=true", "settle_threshold=0.01",
                          "bootstrap_resamples=30", "plots=false", "progress=false", "device=cpu"]) == 0
    with open(out / "summary.json") as f:
        again = json.load(f)
    assert again["auc_lyap_1"]["auc"] == summary["auc_lyap_1"]["auc"]
    assert again["prefix"]["auc_q_halt"] == summary["prefix"]["auc_q_halt"] and again["checkpoint"] == summary["checkpoint"]
    assert again["settling"]["fixed"]["threshold"] == 0.01 and again["summary_config"]["bootstrap_resamples"] == 30
    (out / "diagnostics.csv").write_text("puzzle,trajectory\n0,0\n")
    assert diagnose.main(["checkpoint=unused", f"output_dir={out}", "summary_only=true", "device=cpu"]) == 2
    assert "diagnostics.csv: not a diagnostics.csv" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_equal_one_process(checkpoint, tmp_path):
    two = launcher.launch("diagnose.py", f"checkpoint={checkpoint}", f"output_dir={tmp_path / 'two'}",
                          "global_batch_size=4", "plots=false", *ARGS, nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert diagnose.main([f"checkpoint={checkpoint}", f"output_dir={tmp_path / 'one'}", "global_batch_size=2",
                          "plots=false", *ARGS]) == 0
    assert read_rows(tmp_path / "two") == read_rows(tmp_path / "one")  # same rows per batch: the same bits
    with open(tmp_path / "two" / "summary.json") as f:
        assert json.load(f)["world_size"] == 2
    assert not os.path.exists(tmp_path / "two" / "partial")


@pytest.mark.parametrize("arg, message", [("noise=sometimes", "noise: expected fixed or off"),
                                          ("lyapunov_k=0", "lyapunov_k: expected a positive integer"),
                                          ("different_init_reset_std=0",
                                           "different_init_reset_std: expected a value in (0, inf)"),
                                          ("colour=red", "colour: unknown")])
def test_bad_settings_end_with_one_line(checkpoint, tmp_path, capsys, arg, message):
    assert diagnose.main([f"checkpoint={checkpoint}", f"output_dir={tmp_path}", arg]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1


@pytest.mark.slow  # four runs, three of them fresh processes
def test_killed_run_resumes_to_the_same_rows(checkpoint, tmp_path):
    base = [f"checkpoint={checkpoint}", "global_batch_size=2", "save_every_batches=2", "plots=false", *ARGS]
    killed = launcher.launch("diagnose.py", *base, f"output_dir={tmp_path / 'cut'}",
                             env_extra={sweep.KILL_AFTER_ENV: "3"})
    assert killed.returncode == -9  # SIGKILL after 3 of 5 batches; the partial rows cover the first 2
    assert os.listdir(tmp_path / "cut" / "partial") == ["rank0-of-1.pt"]
    refused = launcher.launch("diagnose.py", *base, f"output_dir={tmp_path / 'cut'}", "resume=true", "lyapunov_k=1")
    assert refused.returncode == 2 and "lyapunov_k=" in refused.stderr
    resumed = launcher.launch("diagnose.py", *base, f"output_dir={tmp_path / 'cut'}", "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at batch 2/5" in resumed.stderr
    assert diagnose.main([*base, f"output_dir={tmp_path / 'whole'}"]) == 0
    assert read_rows(tmp_path / "cut") == read_rows(tmp_path / "whole")
    assert not os.path.exists(tmp_path / "cut" / "partial")


def test_an_authors_attention_file_is_sized_by_the_data(tmp_path):
    """A file of the authors' format without mlp_t names no seq_len; diagnose.py takes it from data_path."""
    from test_checkpoint import EQR_ARCH, with_orig_mod, write_reference_file
    head = build_model(EQR, q_weight_std=0.5)
    data = write_data(str(tmp_path / "data"), head, n=4)
    arch = {**EQR_ARCH, **{k: EQR[k] for k in ("hidden_size", "num_heads", "H_cycles", "L_cycles", "L_layers")},
            "board_height": None, "board_width": None, "forward_dtype": "float32"}
    path = str(tmp_path / "eqr.pth")
    write_reference_file(path, with_orig_mod(head.state_dict()), arch, None)
    out = tmp_path / "out"
    assert diagnose.main([f"checkpoint={path}", f"data_path={data}", f"output_dir={out}", "global_batch_size=4",
                          *ARGS]) == 0
    assert len(read_rows(out)) == 4


@pytest.mark.parametrize("which", ["trm", "hrm"])
def test_official_trm_and_hrm_files_are_diagnosed(which, tmp_path):
    """The official TRM's and HRM's own checkpoint layout (tests/test_official_models.py writes it from their
    code's structure) diagnosed like ours: rows for every (puzzle, trajectory), finite exponents."""
    from test_official_models import HRM_ARCH, HRM_SHAPES, TRM_ARCH, TRM_SHAPES, write_official

    from dataset.common import single_example_split, write_dataset
    shapes, arch, seq_len, vocab = {"trm": (TRM_SHAPES, TRM_ARCH, 16, 11), "hrm": (HRM_SHAPES, HRM_ARCH, 36, 6)}[which]
    path, _ = write_official(str(tmp_path / which), shapes, {**arch, "forward_dtype": "float32"})
    rng = np.random.default_rng(0)
    split = single_example_split(rng.integers(1, vocab, (5, seq_len)), rng.integers(1, vocab, (5, seq_len)), vocab)
    data = str(tmp_path / "data")
    write_dataset(data, {"train": split, "test": split})
    out = tmp_path / "out"
    assert diagnose.main([f"checkpoint={path}", f"data_path={data}", f"output_dir={out}", "global_batch_size=4",
                          "breadth=2", *ARGS]) == 0
    rows = read_rows(out)
    assert [(int(r["puzzle"]), int(r["trajectory"])) for r in rows] == [(p, t) for p in range(5) for t in range(2)]
    assert all(math.isfinite(float(r[f"lyap_{i}"])) for r in rows for i in (1, 2))
    assert all(float(r["lyap_sum"]) == pytest.approx(float(r["lyap_1"]) + float(r["lyap_2"])) for r in rows)
