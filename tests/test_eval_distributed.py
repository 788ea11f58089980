"""Sharded evaluation (2 gloo processes) equals one process; a SIGKILLed sweep resumes to the same counts.
Both also write predictions.npz (save_outputs=true), which must agree with results.json and across runs."""
import json
import os

import numpy as np
import pytest

import evaluate
import launch as launcher
from evaluation import sweep
from evaluation.predictions import read_predictions
from test_eval_grid import EQR, TRM, build_model, write_checkpoint, write_data
from test_predictions import check_against_results

# device=cpu everywhere: gloo processes, and one process on the same device, whatever GPUs the machine has.
GRID = ["depths=[1,2,3]", "breadths=[1,2,4]", "convergence_top_k=2", "halt=true", "progress=false", "plots=false",
        "device=cpu", "save_outputs=true"]


def launch(nproc: int, *args, env_extra=None):
    return launcher.launch("evaluate.py", *args, nproc=nproc, env_extra=env_extra)


def counts(output_dir: str) -> dict:
    with open(os.path.join(output_dir, "results.json")) as f:
        results = json.load(f)
    return {"counts": results["counts"], "rows": [(r["depth"], r["breadth"], r["rule"], r["correct"], r["total"])
                                                  for r in results["rows"]], "puzzles": results["data"]["puzzles"],
            "world_size": results["world_size"]}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-dist")
    made = {}
    for name, arch in {"eqr": EQR, "trm": TRM}.items():
        head = build_model(arch, q_weight_std=0.5)
        data = write_data(str(root / f"data-{name}"), head, n=7)  # 7 puzzles: the last batch is padded
        made[name] = write_checkpoint(str(root / f"{name}.pt"), head, data), data
    return made


def same_predictions(a: str, b: str) -> bool:
    saved = [read_predictions(os.path.join(folder, "predictions.npz")) for folder in (a, b)]
    return all(np.array_equal(saved[0][k], saved[1][k]) for k in saved[0])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["eqr", "trm"])
def test_two_processes_equal_one_process_with_one_ranks_batch(checkpoints, tmp_path, name):
    checkpoint, data = checkpoints[name]
    two = launch(2, f"checkpoint={checkpoint}", f"output_dir={tmp_path / 'two'}", "global_batch_size=4", *GRID)
    assert two.returncode == 0, two.stderr[-3000:]
    assert evaluate.main([f"checkpoint={checkpoint}", f"output_dir={tmp_path / 'one'}", "global_batch_size=2",
                          *GRID]) == 0
    sharded, single = counts(tmp_path / "two"), counts(tmp_path / "one")
    assert sharded["world_size"] == 2 and single["world_size"] == 1
    assert sharded["puzzles"] == single["puzzles"] == 7
    assert sharded["counts"] == single["counts"] and sharded["rows"] == single["rows"]
    assert not os.path.exists(tmp_path / "two" / "partial")  # finished: no partial counts left behind
    check_against_results(tmp_path / "two", data)
    assert same_predictions(tmp_path / "two", tmp_path / "one")


@pytest.mark.slow
def test_killed_sweep_resumes_to_the_same_counts(checkpoints, tmp_path):
    checkpoint, data = checkpoints["eqr"]
    base = [f"checkpoint={checkpoint}", "global_batch_size=1", "save_every_batches=2", *GRID]
    killed = launch(1, *base, f"output_dir={tmp_path / 'cut'}", env_extra={sweep.KILL_AFTER_ENV: "5"})
    assert killed.returncode == -9  # SIGKILL after 5 of 7 batches; partial counts cover the first 4
    assert sorted(os.listdir(tmp_path / "cut" / "partial")) == [  # counts and predictions of batches 0-3
        "predictions-rank0-of-1-batches00000000-00000002.npz", "predictions-rank0-of-1-batches00000002-00000004.npz",
        "rank0-of-1.pt"]
    assert not os.path.exists(tmp_path / "cut" / "results.json")

    refused = launch(1, *base, f"output_dir={tmp_path / 'cut'}", "seed=5", "resume=true")
    assert refused.returncode == 2 and "seed=" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    fresh = launch(1, *base, f"output_dir={tmp_path / 'cut'}")
    assert fresh.returncode == 2 and "resume=true" in fresh.stderr

    resumed = launch(1, *base, f"output_dir={tmp_path / 'cut'}", "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at batch 4/7" in resumed.stderr
    assert evaluate.main([*base, f"output_dir={tmp_path / 'whole'}"]) == 0
    assert counts(tmp_path / "cut") == counts(tmp_path / "whole")
    check_against_results(tmp_path / "cut", data)
    assert same_predictions(tmp_path / "cut", tmp_path / "whole")
    assert not os.path.exists(tmp_path / "cut" / "partial")


ELASTIC = ["halt_max_steps=4", "different_init=2", "act_inference=true", "halt_threshold=[-0.3,0.2]",
           "halt_confirm_steps=[0,1]", "pool_size=3", "progress=false", "plots=false", "device=cpu"]


@pytest.mark.slow
def test_elastic_pool_two_processes_and_a_killed_run_equal_one_uninterrupted_process(checkpoints, tmp_path):
    checkpoint, _ = checkpoints["eqr"]
    assert evaluate.main([f"checkpoint={checkpoint}", f"output_dir={tmp_path / 'one'}", "global_batch_size=2",
                          *ELASTIC]) == 0
    two = launch(2, f"checkpoint={checkpoint}", f"output_dir={tmp_path / 'two'}", "global_batch_size=4", *ELASTIC)
    assert two.returncode == 0, two.stderr[-3000:]
    single, sharded = counts(tmp_path / "one"), counts(tmp_path / "two")
    assert sharded["world_size"] == 2 and sharded["counts"] == single["counts"] and sharded["rows"] == single["rows"]

    base = [f"checkpoint={checkpoint}", "global_batch_size=1", "save_every_batches=2", *ELASTIC]
    killed = launch(1, *base, f"output_dir={tmp_path / 'cut'}", env_extra={sweep.KILL_AFTER_ENV: "5"})
    assert killed.returncode == -9 and os.listdir(tmp_path / "cut" / "partial") == ["rank0-of-1.pt"]
    resumed = launch(1, *base, f"output_dir={tmp_path / 'cut'}", "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at batch 4/7" in resumed.stderr
    assert evaluate.main([*base, f"output_dir={tmp_path / 'whole'}"]) == 0
    assert counts(tmp_path / "cut") == counts(tmp_path / "whole")
    assert counts(tmp_path / "whole")["rows"] == single["rows"]  # batch size and pool do not change an answer
