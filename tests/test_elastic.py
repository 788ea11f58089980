"""The elastic pool evaluator (evaluation/pool.py): the grid's halting counts bit for bit, with less compute."""
import json
import os

import pytest
import torch

import evaluate
from evaluation.grid import GridSpec, row_keys, run_batch
from evaluation.keyed_rng import KeyedSampler
from evaluation.pool import elastic_batches
from models.halting import HaltRule, rules_from
from tests.test_eval_grid import EQR, TRM, build_model, random_batch, write_checkpoint, write_data

RULES = rules_from([-0.3, 0.0, 0.4], [0, 2], ["consecutive", "cumulative"], [1, 3])


def grid_and_pool(arch, breadths, pool_size, rules=RULES, depth=6, fresh_std=None, batches=3, seed=5):
    head = build_model(arch, q_weight_std=0.6)
    inner = head.model.inner
    grid = GridSpec((depth,), breadths, inner.config.blocks_per_step, halt_rules=rules, fresh_init_std=fresh_std)
    elastic = GridSpec((depth,), breadths, inner.config.blocks_per_step, halt_rules=rules, fresh_init_std=fresh_std,
                       elastic=True)
    data = []
    for b in range(batches):
        batch = random_batch(head, n=5, pad=1 if b == batches - 1 else 0, seed=b)
        batch["index"] = torch.where(batch["mask"], batch["index"] + 5 * b, -1)
        data.append((b, batch))
    expected = []
    for _, batch in data:
        cells, hist, _, _ = run_batch(inner, batch, grid, KeyedSampler(seed, *row_keys(grid, batch["index"])))
        keep = [grid.rules.index(rule) for rule in elastic.rules]
        expected.append((cells[:, :, keep], hist[:, :, 1:]))
    stats = {}
    sampler = KeyedSampler(seed, torch.zeros(pool_size, dtype=torch.long), torch.zeros(pool_size, dtype=torch.long))
    got = list(elastic_batches(inner, data, elastic, pool_size, sampler, stats))
    return expected, got, stats


@pytest.mark.parametrize("arch,breadths,fresh_std", [(EQR, (1,), None), (EQR, (1, 3), None), (TRM, (1,), None),
                                                     (TRM, (1, 2), 1.0)], ids=["eqr-b1", "eqr-b3", "trm-b1", "trm-b2"])
@pytest.mark.parametrize("pool_size", [1, 4, 64])
def test_pool_counts_equal_the_grid_bit_for_bit(arch, breadths, fresh_std, pool_size):
    expected, got, stats = grid_and_pool(arch, breadths, pool_size, fresh_std=fresh_std)
    assert [index for index, *_ in got] == [0, 1, 2]  # in loader order
    for (cells, hist), (_, _, pool_cells, pool_hist) in zip(expected, got):
        assert torch.equal(cells, pool_cells) and torch.equal(hist, pool_hist)
    solved = sum(c[..., 0].sum() for c, _ in expected)
    assert 0 < solved  # some answers are right, so the comparison can tell runs apart
    assert stats["busy_steps"] <= stats["slot_steps"]


def test_pool_stops_computing_halted_trajectories():
    """One rule that halts at once (q > -inf... here q > -100) vs the cap: the pool runs 1 step per trajectory."""
    expected, got, stats = grid_and_pool(EQR, (1,), 5, rules=(HaltRule(-100.0),), depth=8)
    assert stats["busy_steps"] == 15  # 15 real puzzles x 1 step
    _, _, cells, _ = got[0]
    assert cells[0, 0, 0, 4] == 5 * 1 * build_model(EQR).model.config.blocks_per_step  # NFE: 5 puzzles, 1 step
    expected, got, stats = grid_and_pool(EQR, (1,), 5, rules=(HaltRule(100.0),), depth=8)
    assert stats["busy_steps"] == 15 * 8  # never fires: every trajectory runs to the cap


def run_eval(ckpt, out, *args):
    assert evaluate.main([f"checkpoint={ckpt}", f"output_dir={out}", "global_batch_size=4", "progress=false",
                          "device=cpu", *args]) == 0
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


def test_evaluate_act_inference_equals_the_grid_with_the_same_rules(tmp_path):
    head = build_model(EQR, q_weight_std=0.6)
    data = write_data(str(tmp_path / "data"), head, n=9)
    ckpt = write_checkpoint(str(tmp_path / "ckpt.pt"), head, data)
    rules = ["halt_threshold=[-0.2,0.3]", "halt_confirm_steps=[0,1]", "halt_min_steps=2"]
    grid = run_eval(ckpt, tmp_path / "grid", "depths=[2,5]", "breadths=[1,2]", "halt=true", *rules)
    pool = run_eval(ckpt, tmp_path / "pool", "halt_max_steps=5", "different_init=2", "act_inference=true",
                    "pool_size=3", *rules)
    by_key = lambda res: {(r["depth"], r["breadth"], r["rule"]): (r["correct"], r["nfe_per_puzzle"]) for r in res["rows"]}
    g, p = by_key(grid), by_key(pool)
    assert p and all(g[key] == value for key, value in p.items())
    assert {r["halt_rule"] for r in pool["rows"]} == {"q>-0.2 min2", "q>-0.2 x2 min2", "q>0.3 min2", "q>0.3 x2 min2"}
    assert os.path.isfile(tmp_path / "pool" / "halting_pareto.png") and os.path.isfile(tmp_path / "grid" / "halting_pareto.png")
    assert pool["elastic"]["busy_steps"] <= pool["elastic"]["slot_steps"]


@pytest.mark.slow
def test_depth_1024_in_the_grid_and_the_pool():
    """A thousand steps: the grid and the pool agree at D = 1024 and every trajectory stops by the cap."""
    expected, got, stats = grid_and_pool(EQR, (1,), 2, rules=(HaltRule(0.0, 3), HaltRule(50.0)), depth=1024, batches=1)
    (cells, hist), (_, _, pool_cells, pool_hist) = expected[0], got[0]
    assert torch.equal(cells, pool_cells) and torch.equal(hist, pool_hist)
    assert stats["busy_steps"] == 5 * 1024  # the second rule never fires: each of the 5 trajectories runs to the cap
    assert pool_cells[0, 0, 3, 4] == 5 * 1024 * build_model(EQR).model.config.blocks_per_step


def test_benchmark_elastic_runs_both_and_finds_the_same_counts(tmp_path, capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location("benchmark_elastic", os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "benchmark_elastic.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    head = build_model(EQR, q_weight_std=0.6)
    data = write_data(str(tmp_path / "data"), head, n=9)
    ckpt = write_checkpoint(str(tmp_path / "ckpt.pt"), head, data)
    out = str(tmp_path / "bench.json")
    assert bench.main([ckpt, data, "--depths", "4", "--puzzles", "9", "--batch", "4", "--out", out]) == 0
    with open(out) as f:
        run = json.load(f)["runs"][0]
    assert run["same_counts"] and run["pool_busy_row_steps"] <= run["pool_row_steps"]
    capsys.readouterr()
    assert bench.main([ckpt, data, "--puzzles", "9", "--batch", "4", "--calibration", "3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2 + 3  # the header lines and one per step
