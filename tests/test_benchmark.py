"""scripts/benchmark.py runs and writes well-formed JSON; the speed-ups keep the model's results."""
import contextlib
import json
import os
import subprocess
import sys

import pytest
import torch

from models.eqr import ModelConfig, RecurrentReasoner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import benchmark  # noqa: E402

PRESET_KEYS = {"forward_dtype", "params", "flops_per_row_forward", "flops_per_row_train",
               "train_batch", "train_step_s", "train_first_step_s", "train_peak_mem_mb", "train_tflops", "train_mfu",
               "eval_batch", "eval_step_s", "eval_first_step_s", "eval_trajectory_steps_per_s", "eval_peak_mem_mb",
               "eval_tflops", "eval_mfu", "eval_keyed_step_s", "keyed_rng_share", "puzzles_per_s_D16_B1",
               "puzzles_per_s_D64_B8"}
ELASTIC_KEYS = {"elastic_depth", "elastic_puzzles", "elastic_threshold", "elastic_grid_puzzles_per_s",
                "elastic_pool_puzzles_per_s", "elastic_speedup", "elastic_nfe_ratio", "elastic_rows_ratio",
                "elastic_same_counts"}
PATH_KEYS = PRESET_KEYS - {"forward_dtype", "params", "flops_per_row_forward", "flops_per_row_train"}
PRESET_KEYS = PRESET_KEYS | ELASTIC_KEYS


def check_results(results: dict, presets: list[str], startup: list[str]) -> None:
    assert {"machine", "settings", "peak_tflops", "presets", "startup_s", "load_average", "targets",
            "memory_before_presets_mb"} <= set(results)
    assert set(results["peak_tflops"]) == {"float32", "bfloat16"}
    assert all(v > 0 for v in results["peak_tflops"].values())
    assert list(results["presets"]) == presets
    for row in results["presets"].values():
        assert set(row) - {"compiled"} == PRESET_KEYS
        for path in (row, row.get("compiled", row)):
            assert set(path) >= PATH_KEYS
            assert all(isinstance(path[k], (int, float)) and path[k] > 0 for k in PATH_KEYS - {"keyed_rng_share"})
            assert 0 <= path["keyed_rng_share"] < 1
            assert path["eval_trajectory_steps_per_s"] == pytest.approx(path["eval_batch"] / path["eval_step_s"])
            assert path["puzzles_per_s_D16_B1"] == pytest.approx(path["eval_batch"] / path["eval_keyed_step_s"] / 16)
        # the pool gave the grid's counts, and the threshold made rows halt before the cap, so it computed less
        assert row["elastic_same_counts"] is True
        assert row["elastic_nfe_ratio"] > 1 and row["elastic_rows_ratio"] >= 1
        assert row["elastic_speedup"] == pytest.approx(row["elastic_pool_puzzles_per_s"] / row["elastic_grid_puzzles_per_s"])
    assert set(results["startup_s"]) == set(startup) and all(v > 0 for v in results["startup_s"].values())
    for target in results["targets"].values():
        assert set(target) == {"value", "target", "met"} and isinstance(target["met"], bool)


@pytest.mark.slow
def test_quick_benchmark_writes_json(tmp_path, capsys):
    out = tmp_path / "results" / "bench.json"
    presets = ["eqr_sudoku_cpu", "eqr_maze_cpu"]
    # float32: the JSON is what is checked, and bfloat16 is ~10x slower on a CPU without bf16 units
    code = benchmark.main(["--quick", "--threads", "1", "--presets", *presets, "--startup-presets", "eqr_sudoku_cpu",
                           "--repeats", "1", "--dtype", "float32", "--out", str(out)])
    assert code == 0
    results = json.loads(out.read_text())
    check_results(results, presets, ["eqr_sudoku_cpu"])
    assert all("compiled" not in row for row in results["presets"].values())  # not on a CPU unless asked
    assert os.listdir(out.parent) == ["bench.json"]  # the temp file was renamed, nothing else left
    assert "wrote" in capsys.readouterr().out


@pytest.mark.slow
def test_benchmark_times_the_compiled_path_too(tmp_path):
    out = tmp_path / "bench.json"
    assert benchmark.main(["--quick", "--threads", "1", "--presets", "trm_sudoku_cpu", "--startup-presets",
                           "--repeats", "1", "--dtype", "float32", "--compile", "--compile-backend", "aot_eager",
                           "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    check_results(results, ["trm_sudoku_cpu"], [])
    assert set(results["presets"]["trm_sudoku_cpu"]["compiled"]) == PATH_KEYS


@pytest.mark.slow
def test_quick_benchmark_command(tmp_path):
    """The documented smoke command, as a user runs it (all presets, start-up included)."""
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)  # a hang guard, not a speed target
    assert done.returncode == 0, done.stderr
    check_results(json.loads(out.read_text()), benchmark.PRESETS, ["eqr_sudoku", "eqr_sudoku_cpu"])


def test_unknown_preset_is_one_line_error(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert benchmark.main(["--quick", "--presets", "no_such_preset", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --presets: config/train/no_such_preset.yaml does not exist"
    assert not out.exists()


def test_step_flops_counts_the_gradient_rule():
    config = ModelConfig(seq_len=81, vocab_size=11, mlp_t=True)  # the Sudoku preset
    flops = benchmark.step_flops(config)
    block = benchmark.block_flops(config)
    assert block == 2 * 81 * 512 * 3 * 1536 + 2 * 512 * 81 * 3 * 256  # SwiGLU over hidden + over the sequence
    heads = 2 * 81 * 512 * 11 + 2 * 512 * 2
    assert flops["forward"] == 42 * block + heads  # 3 recursions of (6 + 1) calls of 2 blocks
    assert flops["train"] == flops["forward"] + 2 * (14 * block + heads)  # backward of the last recursion only


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_weight_cast_reuse_changes_nothing(dtype, monkeypatch):
    """Reusing casts within a forward gives the same bits as casting at every call, and never outlives a weight update."""
    config = ModelConfig(seq_len=16, vocab_size=11, hidden_size=64, num_heads=4, mlp_t=True, H_cycles=2, L_cycles=2,
                         forward_dtype=dtype)
    core = RecurrentReasoner(config).inner
    z = torch.randn(3, 16, 64).to(config.dtype)
    inputs = torch.randint(1, 11, (3, 16))

    def step():
        torch.manual_seed(1)
        with torch.inference_mode():
            return core(z, z, inputs)

    reused = step()
    with monkeypatch.context() as m:
        m.setattr("models.eqr.reuse_weight_casts", contextlib.nullcontext)  # every call casts afresh
        fresh = step()
    assert all(torch.equal(a, b) for a, b in zip(reused, fresh))
    with torch.no_grad():
        core.L_level.layers[0].mlp.down_proj.weight.mul_(2)
    assert not torch.equal(step()[2], reused[2])
