"""The shipped CPU checkpoints load and solve puzzles a freshly initialised model cannot.

Each test builds a small fixed test slice offline with the real builders (seed 1, so puzzles the
training split was not drawn from), runs `evaluate.main` on it (one pass, D16 B1) and reads
results.json. The floor is exact accuracy: a fresh model of the same config is checked to stay below
it, so passing needs trained weights.
"""
import json
import os

import pytest
import torch

import evaluate
import solve
from dataset import build_maze_unique_dataset, build_sudoku_dataset
from models.checkpoint import load_for_eval
from models.eqr import ModelConfig, RecurrentReasoner
from models.losses import ACTLossHead
from utils.files import atomic_save
from utils.processes import native_forward_dtype

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PUZZLES = 16
CASES = {
    # shipped file, slice builder + args, exact-accuracy floor at D16 B1 (SHIP_FLOOR in scripts/cpu_study/study.py).
    "sudoku": ("checkpoints/shipped/eqr_sudoku_cpu.pt", build_sudoku_dataset,
               ["--generate", "1", "--generate-test", str(PUZZLES), "--num-aug", "0", "--min-givens", "40",
                "--seed", "1"], 0.25),
    "maze": ("checkpoints/shipped/eqr_maze_cpu.pt", build_maze_unique_dataset,
             ["--grid-size", "11", "--train-samples", "1", "--test-samples", str(PUZZLES), "--min-path-length", "8",
              "--max-path-length", "24", "--seed", "1"], 0.25),
}


def exact_accuracy(checkpoint: str, data: str, out: str) -> float:
    code = evaluate.main([f"checkpoint={checkpoint}", f"data_path={data}", "depths=[16]", "breadths=[1]",
                          f"global_batch_size={PUZZLES}", f"output_dir={out}", "device=cpu", "plots=false",
                          "progress=false", "seed=0", "forward_dtype=float32"])
    assert code == 0
    with open(os.path.join(out, "results.json")) as f:
        rows = json.load(f)["rows"]
    row = next(r for r in rows if (r["depth"], r["breadth"], r["rule"]) == (16, 1, "traj1"))
    assert row["total"] == PUZZLES
    return row["accuracy"]


@pytest.mark.parametrize("task", sorted(CASES))
def test_shipped_checkpoint_beats_floor_fresh_model_does_not(task, tmp_path, capsys):
    shipped, builder, args, floor = CASES[task]
    path = os.path.join(ROOT, shipped)
    assert os.path.isfile(path), f"{shipped} is missing"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert set(ckpt) == {"format", "step", "config", "model", "ema"}  # slim: no optimizer, carry or RNG state
    assert os.path.getsize(path) < 5_000_000

    data = str(tmp_path / "data")
    builder.main(args + ["--output-dir", data])
    head, _ = load_for_eval(path)
    assert not head.training

    trained = exact_accuracy(path, data, str(tmp_path / "trained"))

    torch.manual_seed(0)
    fresh_head = ACTLossHead(RecurrentReasoner(ModelConfig.from_dict(ckpt["config"]["arch"])))
    fresh_path = str(tmp_path / "fresh.pt")
    atomic_save({"format": ckpt["format"], "step": 0, "config": ckpt["config"], "model": fresh_head.state_dict()},
                fresh_path)
    fresh = exact_accuracy(fresh_path, data, str(tmp_path / "fresh"))
    capsys.readouterr()

    assert fresh < floor, f"a fresh {task} model reaches {fresh:.3f}, the floor {floor} means nothing"
    assert trained >= floor, f"{shipped}: exact accuracy {trained:.3f} on the test slice, floor {floor}"


def test_auto_dtype_evaluates_and_solves_in_the_devices_native_dtype(tmp_path, capsys):
    """`forward_dtype=auto`, as the *_cpu presets train, also works for evaluate.py and solve.py: the model runs in
    the dtype the device multiplies natively (on this CPU float32), recorded in results.json."""
    shipped, builder, args, _ = CASES["maze"]
    path, data, out = os.path.join(ROOT, shipped), str(tmp_path / "data"), str(tmp_path / "eval")
    builder.main(args + ["--output-dir", data])
    assert evaluate.main([f"checkpoint={path}", f"data_path={data}", "depths=[2]", "breadths=[1]",
                          f"global_batch_size={PUZZLES}", f"output_dir={out}", "device=cpu", "plots=false",
                          "progress=false", "forward_dtype=auto"]) == 0
    with open(os.path.join(out, "results.json")) as f:
        used = json.load(f)["identity"]["model"]["forward_dtype"]
    assert used == native_forward_dtype(torch.device("cpu"))
    assert torch.load(path, map_location="cpu", weights_only=True)["config"]["arch"]["forward_dtype"] == "bfloat16"
    assert solve.main([f"checkpoint={path}", f"data_path={data}", "index=0", "forward_dtype=auto", "image=null",
                       "device=cpu"]) == 0
    capsys.readouterr()
