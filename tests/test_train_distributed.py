"""2-process gloo torchrun = 1 process with the same global batch; per-rank shards resume the run."""
import json
import os

import pytest
import torch

from dataset import build_sudoku_dataset
from launch import launch
from utils.run_folder import EVAL, TRAIN

# TRM without halting exploration: no rank-dependent randomness, so both runs see the same numbers.
ARGS = ["--config-name", "train/trm_sudoku", "device=cpu", "wandb_mode=disabled", "global_batch_size=8", "eval_batch_size=8",
        "eval_max_examples=16", "eval_interval_steps=3", "log_interval_steps=1", "checkpoint_interval_steps=3", "lr=3e-3",
        "lr_warmup_steps=2", "arch.hidden_size=32", "arch.num_heads=2", "arch.L_layers=1", "arch.H_cycles=2",
        "arch.L_cycles=1", "arch.halt_max_steps=3", "arch.halt_exploration_prob=0", "arch.forward_dtype=float32"]


@pytest.fixture(scope="module")
def sudoku_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("data") / "sudoku")
    build_sudoku_dataset.main(["--generate", "32", "--generate-test", "16", "--num-aug", "1", "--min-givens", "50",
                               "--output-dir", path])
    return path


def run(nproc, run_dir, data_path, *extra):
    result = launch("pretrain.py", *ARGS, f"data_path={data_path}", f"checkpoint_path={run_dir}", *extra, nproc=nproc)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_two_gloo_processes_follow_the_single_process_trajectory(sudoku_path, tmp_path):
    single = run(1, tmp_path / "one", sudoku_path, "max_steps=8")
    double = run(2, tmp_path / "two", sudoku_path, "max_steps=6")
    assert sorted(os.listdir(tmp_path / "two")) == [".lock", "config.yaml", "latest", "metrics.jsonl", "step_3.pt", "step_3.rank1.pt",
                                                    "step_6.pt", "step_6.rank1.pt", "training_curves.png"]
    # Continue the 2-process run from its per-rank shards up to the same length.
    double = run(2, tmp_path / "two", sudoku_path, "max_steps=8", "resume=true")

    def train(metrics):
        return [(m["step"], m[TRAIN["lm_loss"]], m[TRAIN["q_halt_loss"]], m[TRAIN["count"]], m[TRAIN["grad_norm"]])
                for m in metrics if TRAIN["lm_loss"] in m]

    one, two = train(single), train(double)
    assert [r[0] for r in one] == [r[0] for r in two] == list(range(1, 9))
    for a, b in zip(one, two):
        assert a[3] == b[3]  # the same rows halted
        assert a[1] == pytest.approx(b[1], rel=1e-4) and a[2] == pytest.approx(b[2], rel=1e-3, abs=1e-6)
        # AdamATan2 ignores a constant scale of the gradient, so compare the gradient itself:
        # DDP's mean over ranks times world_size / global batch must give the 1-process gradient.
        assert a[4] == pytest.approx(b[4], rel=1e-4)
    evals_one = [m[EVAL["accuracy"]] for m in single if EVAL["accuracy"] in m]
    evals_two = [m[EVAL["accuracy"]] for m in double if EVAL["accuracy"] in m]
    assert evals_one == pytest.approx(evals_two, rel=1e-4)

    w1 = torch.load(tmp_path / "one" / "step_8.pt", weights_only=True)["model"]
    w2 = torch.load(tmp_path / "two" / "step_8.pt", weights_only=True)["model"]
    for name in w1:
        torch.testing.assert_close(w1[name], w2[name], rtol=1e-4, atol=1e-5)
