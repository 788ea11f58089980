"""The one-pass grid engine, keyed randomness, halting/NFE counts and evaluate.py end to end (tiny models, CPU)."""
import csv
import json
import math
import os

import numpy as np
import pytest
import torch

import evaluate
from dataset.common import single_example_split, write_dataset
from evaluation.grid import FIELDS, GridSpec, row_keys, run_batch
from evaluation.keyed_rng import KeyedSampler
from models.eqr import ModelConfig, RecurrentReasoner
from models.layers import trunc_normal_
from models.losses import ACTLossHead
from utils.constants import IGNORE_LABEL_ID
from utils.files import atomic_save

# Small init std and larger noise: trajectories differ, yet often agree, so every rule has something to pick.
EQR = dict(seq_len=8, vocab_size=4, hidden_size=32, num_heads=4, H_cycles=2, L_cycles=2, L_layers=1,
           forward_dtype="float32", H_init_std=0.1, L_init_std=0.1, noise_scale=0.02)
TRM = dict(EQR, random_init=False, lambda_=1.0, noise_scale=0.0)


def build_model(arch: dict, seed: int = 0, q_weight_std: float = 0.0) -> ACTLossHead:
    torch.manual_seed(seed)
    head = ACTLossHead(RecurrentReasoner(ModelConfig(**arch))).eval()
    if q_weight_std:  # a q-head that reads the state, so halting steps differ between rows
        with torch.no_grad():
            head.model.inner.q_head.weight.normal_(0, q_weight_std)
            head.model.inner.q_head.bias.zero_()
    return head


def keyed_rows(seed, index, breadth):
    return KeyedSampler(seed, index.repeat_interleave(breadth), torch.arange(breadth).repeat(len(index)))


def model_answers(head: ACTLossHead, inputs: torch.Tensor, steps: int, seed: int = 99) -> torch.Tensor:
    """Trajectory-0 predictions after `steps` steps (keyed by `seed`): labels the model gets partly right."""
    inner, n = head.model.inner, inputs.shape[0]
    sampler = keyed_rows(seed, torch.arange(n), 1)
    z_H = torch.zeros(n, inner.config.seq_len, inner.config.hidden_size)
    z_L = z_H.clone()
    inner.reset_latents(z_H, z_L, torch.ones(n, dtype=torch.bool), sampler)
    with torch.inference_mode():
        for _ in range(steps):
            z_H, z_L, logits, _ = inner(z_H, z_L, inputs, sampler)
    return logits.argmax(-1)


def write_data(path: str, head: ACTLossHead, n: int, seed: int = 0) -> str:
    cfg = head.model.config
    rng = np.random.default_rng(seed)
    inputs = rng.integers(1, cfg.vocab_size, (n, cfg.seq_len))
    labels = model_answers(head, torch.from_numpy(inputs).int(), 2).numpy()
    labels = np.where(labels == 0, 1, labels)  # 0 is the ignore label on disk
    split = single_example_split(inputs, labels, cfg.vocab_size)
    write_dataset(path, {"train": split, "test": split})
    return path


def write_checkpoint(path: str, head: ACTLossHead, data_path: str, seed: int = 0) -> str:
    """A checkpoint in our documented format (models/checkpoint.py), as pretrain.py writes it."""
    arch = {**head.model.config.to_dict(), "name": "eqr@EqRModel",
            "loss": {"name": "losses@ACTLossHead", "loss_type": "stablemax_cross_entropy"}}
    config = {"arch": arch, "data_path": data_path, "global_batch_size": 4, "seed": seed}
    atomic_save({"format": "eqr/1", "step": 7, "config": config, "model": head.state_dict()}, path)
    return path


def random_batch(head: ACTLossHead, n: int, pad: int = 0, seed: int = 0) -> dict:
    cfg = head.model.config
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randint(1, cfg.vocab_size, (n + pad, cfg.seq_len), generator=g, dtype=torch.int32)
    labels = model_answers(head, inputs, 2).int().clamp_min(1)
    labels[n:] = IGNORE_LABEL_ID
    index = torch.cat([torch.arange(n), torch.full((pad,), -1)])
    return {"inputs": inputs, "labels": labels, "mask": index >= 0, "index": index}


# ----------------------------------------------------------------------------- keyed randomness

def test_keyed_draws_do_not_depend_on_the_batch():
    puzzles, trajectories = torch.tensor([5, 5, 9, 2]), torch.tensor([0, 3, 1, 7])
    batched = KeyedSampler(11, puzzles, trajectories)
    init = batched.initial_state(torch.arange(4), (6, 8), torch.float32, "cpu", 1.0)
    noise = [batched.noise(torch.empty(4, 6, 8)) for _ in range(3)]
    for r in range(4):  # the same row alone, and inside another batch in another position
        alone = KeyedSampler(11, puzzles[r:r + 1], trajectories[r:r + 1])
        mixed = KeyedSampler(11, torch.cat([torch.tensor([1, 2]), puzzles[r:r + 1]]),
                             torch.cat([torch.tensor([0, 0]), trajectories[r:r + 1]]))
        assert torch.equal(alone.initial_state(torch.tensor([0]), (6, 8), torch.float32, "cpu", 1.0)[0], init[r])
        assert torch.equal(mixed.initial_state(torch.tensor([2]), (6, 8), torch.float32, "cpu", 1.0)[0], init[r])
        for draw in noise:
            assert torch.equal(alone.noise(torch.empty(1, 6, 8))[0], draw[r])
    assert not torch.equal(init[0], init[1]) and not torch.equal(noise[0], noise[1])
    other_seed = KeyedSampler(12, puzzles, trajectories).initial_state(torch.arange(4), (6, 8), torch.float32, "cpu", 1.0)
    assert not torch.equal(other_seed, init)


def test_keyed_draws_have_the_right_distribution():
    sampler = KeyedSampler(0, torch.arange(64), torch.zeros(64, dtype=torch.long))
    noise = sampler.noise(torch.empty(64, 100, 100)).double()
    assert abs(noise.mean()) < 0.01 and abs(noise.std() - 1) < 0.01
    assert abs((noise > 1.96).double().mean() - 0.025) < 0.002
    init = sampler.initial_state(torch.arange(64), (100, 100), torch.float32, "cpu", 1.0).double()
    assert abs(init.mean()) < 0.01 and abs(init.std() - 1) < 0.01  # std compensated for the truncation
    bound = trunc_normal_(torch.empty(640_000, dtype=torch.float64), std=1.0).abs().max()  # torch's draw
    assert bound - 1e-3 < init.abs().max() <= bound + 1e-5  # truncated at the same bound (2 sigma before rescaling)
    bf16 = sampler.initial_state(torch.tensor([3]), (4, 4), torch.bfloat16, "cpu", 1.0)
    assert bf16.dtype == torch.bfloat16


# ----------------------------------------------------------------------------- one pass = separate cells

def cell_counts(spec, cells, hist, depth, breadth):
    d, b = spec.depths.index(depth), spec.breadths.index(breadth)
    return {rule: cells[d, b, r].tolist() for r, rule in enumerate(spec.rules)}, hist[d, b, :, :breadth + 1].tolist()


@pytest.mark.parametrize("arch,fresh_std", [(EQR, None), (TRM, None), (TRM, 1.0)], ids=["eqr", "trm-fixed", "trm-fresh"])
def test_one_pass_grid_equals_separate_runs(arch, fresh_std):
    head = build_model(arch, q_weight_std=0.5)
    batch = random_batch(head, n=10, pad=1)
    inner = head.model.inner
    depths, breadths = (1, 2, 3, 5), (1, 2, 4)
    spec = GridSpec(depths, breadths, inner.config.blocks_per_step, top_k=3, window=2, halt=True, fresh_init_std=fresh_std)
    assert spec.fixed_row == (fresh_std is not None)
    cells, hist, _, _ = run_batch(inner, batch, spec, KeyedSampler(3, *row_keys(spec, batch["index"])))
    assert cells[..., FIELDS.index("token_correct")].sum() > 0
    solved = cells[:, :, spec.rules.index("traj1"), 0]
    assert 0 < solved.max() and solved.min() < 10  # some but not all puzzles solved: the counts can tell runs apart
    for depth in depths:
        for breadth in breadths:
            alone = GridSpec((depth,), (breadth,), inner.config.blocks_per_step, top_k=3, window=2, halt=True,
                             fresh_init_std=fresh_std)
            one_cells, one_hist, _, _ = run_batch(inner, batch, alone, KeyedSampler(3, *row_keys(alone, batch["index"])))
            grid_rules, grid_hist = cell_counts(spec, cells, hist, depth, breadth)
            one_rules, one_hist = cell_counts(alone, one_cells, one_hist, depth, breadth)
            for rule, value in one_rules.items():
                if alone.reported(depth, breadth, rule):
                    assert grid_rules[rule] == value, (depth, breadth, rule)
            assert grid_hist == one_hist


def test_headline_answers_are_the_answers_the_paper_rule_scored():
    head = build_model(EQR, q_weight_std=0.5)
    batch = random_batch(head, n=10, pad=1)
    inner = head.model.inner
    labelled = batch["mask"][:, None]
    for depths, breadths, rule in (((1, 3), (1, 4), "conv_top1"), ((1,), (1, 4), "traj1")):
        spec = GridSpec(depths, breadths, inner.config.blocks_per_step, window=2, halt=True)
        cells, _, _, found = run_batch(inner, batch, spec, keyed_rows(3, batch["index"], 4))
        right = (found["answer"] == batch["labels"]) & labelled
        counted = cells[-1, -1, spec.rules.index(rule)]
        assert right.all(-1).sum() == counted[FIELDS.index("correct")]
        assert right.sum() == counted[FIELDS.index("token_correct")] > 0
        assert ((1 <= found["settled_step"]) & (found["settled_step"] <= spec.max_depth)).all()
        assert ((0 <= found["halt_step"]) & (found["halt_step"] <= spec.max_depth)).all()
        if rule == "traj1":  # convergence needs two steps: the answer is trajectory 1's
            assert (found["trajectory"] == 0).all()
        else:
            assert (found["trajectory"] > 0).any()


def test_padding_rows_are_never_counted():
    head = build_model(EQR)
    batch = random_batch(head, n=3, pad=2)
    spec = GridSpec((1, 2), (1, 3), head.model.config.blocks_per_step, halt=True)
    cells, hist, _, _ = run_batch(head.model.inner, batch, spec, keyed_rows(0, batch["index"], 3))
    totals = cells[:, :, spec.rules.index("traj1"), FIELDS.index("total")]
    assert (totals == 3).all()
    assert (cells[:, :, spec.rules.index("all_traj"), FIELDS.index("total")] == torch.tensor([3, 9])).all()
    assert (hist.sum(-1) == 3).all()


# ----------------------------------------------------------------------------- fresh initial states at B > 1

def test_fixed_init_model_starts_every_trajectory_fresh_at_breadth_above_one():
    head = build_model(TRM)
    inner = head.model.inner
    batch = random_batch(head, n=6)
    traj1, every, tokens = 0, 1, FIELDS.index("token_correct")  # rules traj1, all_traj; the token count

    def run(fresh_std):
        spec = GridSpec((2,), (1, 4), inner.config.blocks_per_step, fresh_init_std=fresh_std)
        cells, hist, _, headline = run_batch(inner, batch, spec, KeyedSampler(0, *row_keys(spec, batch["index"])))
        return cells[0], hist[0, :, 0], headline

    cells, hist, _ = run(None)  # different_init_reset_std=null: four copies of the fixed-init trajectory
    assert hist[1, 1:4].sum() == 0 and cells[1, every, tokens] == 4 * cells[1, traj1, tokens] > 0
    fresh_cells, fresh_hist, headline = run(1.0)
    assert fresh_cells[1, every, tokens] != 4 * fresh_cells[1, traj1, tokens]  # fresh starts: the trajectories differ
    assert torch.equal(fresh_cells[0], cells[0])  # B = 1 still starts from the fixed latents
    assert headline["answer"].shape == (6, 8) and headline["trajectory"].max() < 4

    # The draw itself: every row and token its own truncated normal of the given std, both latents.
    z_H, z_L = torch.zeros(64, 8, 32), torch.zeros(64, 8, 32)
    inner.reset_latents(z_H, z_L, torch.ones(64, dtype=torch.bool), keyed_rows(0, torch.arange(16), 4), fresh_std=0.5)
    for z in (z_H, z_L):
        assert abs(z.std() - 0.5) < 0.02 and z.abs().max() <= 2 * 0.5 * 1.15
        assert len(torch.unique(z[:, 0, 0])) == 64
    assert not torch.equal(z_H, z_L)


def test_random_init_model_keeps_its_own_init_std():
    inner = build_model(EQR).model.inner  # H_init_std = L_init_std = 0.1
    states = []
    for fresh_std in (None, 5.0):
        z_H, z_L = torch.zeros(4, 8, 32), torch.zeros(4, 8, 32)
        inner.reset_latents(z_H, z_L, torch.ones(4, dtype=torch.bool), keyed_rows(0, torch.arange(4), 1), fresh_std)
        states.append((z_H, z_L))
    assert torch.equal(states[0][0], states[1][0]) and torch.equal(states[0][1], states[1][1])
    assert abs(states[0][0].std() - 0.1) < 0.02


@pytest.mark.parametrize("arch,override,expected", [
    (EQR, [], None), (TRM, [], 1.0), (TRM, ["different_init_reset_std=0.5"], 0.5),
    (TRM, ["different_init_reset_std=null"], None),
    (dict(EQR, feedforward=True, random_init=False, H_init_std=0.0, L_init_std=0.0), [], None)])
def test_which_models_get_fresh_initial_states(arch, override, expected):
    cfg = evaluate.parse_config(evaluate.compose_eval_config(["checkpoint=x.pt", "different_init=4", *override]))
    assert evaluate.grid_spec(cfg, ModelConfig(**arch)).fresh_init_std == expected


# ----------------------------------------------------------------------------- halting and NFE

def set_constant_q(head: ACTLossHead, value: float) -> None:
    with torch.no_grad():
        head.model.inner.q_head.weight.zero_()
        head.model.inner.q_head.bias.fill_(value)


def test_nfe_by_hand_with_and_without_halting():
    head = build_model(EQR)
    inner = head.model.inner
    assert inner.config.blocks_per_step == 2 * (2 + 1) * 1  # H_cycles * (L_cycles + 1) * L_layers
    batch = random_batch(head, n=4, pad=1)
    spec = GridSpec((1, 3, 4), (1, 2), inner.config.blocks_per_step, halt=True)
    nfe = FIELDS.index("nfe")
    r = spec.rules.index

    set_constant_q(head, 5.0)  # q > 0 at once: every trajectory stops after its first step
    cells, _, _, _ = run_batch(inner, batch, spec, keyed_rows(0, batch["index"], 2))
    for d, depth in enumerate(spec.depths):
        assert cells[d, 0, r("traj1"), nfe] == 4 * depth * 6  # 4 real puzzles, D steps, 6 blocks a step
        assert cells[d, 1, r("majority"), nfe] == 4 * 2 * depth * 6
        assert cells[d, 0, r("traj1+halt"), nfe] == 4 * 1 * 6
        assert cells[d, 1, r("majority+halt"), nfe] == 4 * 2 * 1 * 6
        # halted at step 1, so every depth gives the step-1 answers
        assert torch.equal(cells[d, :, r("traj1+halt")], cells[0, :, r("traj1")])

    set_constant_q(head, -5.0)  # never halts: identical to running every step
    cells, _, _, _ = run_batch(inner, batch, spec, keyed_rows(0, batch["index"], 2))
    for plain in ("traj1", "all_traj", "majority"):
        assert torch.equal(cells[:, :, r(plain + "+halt")], cells[:, :, r(plain)])


def test_halting_stops_at_the_first_step_with_q_above_threshold():
    head = build_model(EQR, q_weight_std=0.7)
    inner = head.model.inner
    batch = random_batch(head, n=6)
    D = 5
    # Hand run of the same keyed trajectories: record q and correctness at every step.
    sampler = keyed_rows(4, batch["index"], 1)
    z_H = torch.zeros(6, 8, 32)
    z_L = z_H.clone()
    inner.reset_latents(z_H, z_L, torch.ones(6, dtype=torch.bool), sampler)
    qs, right = [], []
    with torch.inference_mode():
        for _ in range(D):
            z_H, z_L, logits, q = inner(z_H, z_L, batch["inputs"], sampler)
            qs.append(q)
            right.append((logits.argmax(-1) == batch["labels"]).all(-1))
    qs, right = torch.stack(qs, 1), torch.stack(right, 1)
    threshold = qs.flatten().kthvalue(qs.numel() * 2 // 3).values.item()  # a third of (row, step) pairs are above
    above = qs > threshold
    stop = torch.where(above.any(1), above.int().argmax(1) + 1, D)  # first step with q > threshold, else D
    assert 1 < len(set(stop.tolist()))  # the rows really stop at different steps
    expected_right = right[torch.arange(6), stop - 1].sum()

    spec = GridSpec((D,), (1,), inner.config.blocks_per_step, halt=True, halt_threshold=threshold)
    cells, _, _, _ = run_batch(inner, batch, spec, keyed_rows(4, batch["index"], 1))
    row = cells[0, 0, spec.rules.index("traj1+halt")]
    assert row[FIELDS.index("nfe")] == stop.sum() * inner.config.blocks_per_step
    assert row[FIELDS.index("correct")] == expected_right


# ----------------------------------------------------------------------------- evaluate.py end to end

@pytest.fixture
def run_files(tmp_path):
    head = build_model(EQR)
    data = write_data(str(tmp_path / "data"), head, n=7)
    ckpt = write_checkpoint(str(tmp_path / "ckpt" / "step_7.pt"), head, data)
    return head, data, ckpt


def test_evaluate_writes_results_csv_and_plots(run_files, tmp_path, capsys):
    _, data, ckpt = run_files
    out = str(tmp_path / "out")
    code = evaluate.main([f"checkpoint={ckpt}", f"output_dir={out}", "depths=[1,2,4]", "breadths=[1,2,4]",
                          "convergence_top_k=2", "halt=true", "global_batch_size=4", "progress=false", "device=cpu"])
    assert code == 0
    assert sorted(os.listdir(out)) == ["accuracy_heatmap.png", "accuracy_vs_nfe.png", "halting_pareto.png", "results.csv",
                                       "results.json"]
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    assert results["data"]["puzzles"] == 7 and results["world_size"] == 1
    assert results["headline"]["rule"] == "conv_top1" and results["headline"]["depth"] == 4
    assert results["checkpoint"]["step"] == 7 and len(results["checkpoint"]["sha256"]) == 64
    with open(os.path.join(out, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    rules = {(int(r["depth"]), int(r["breadth"]), r["rule"]) for r in rows}
    assert (4, 4, "conv_top2") in rules and (1, 4, "conv_top1") not in rules and (2, 1, "majority") not in rules
    assert (4, 4, "pass@4") in rules and (4, 4, "majority+halt") in rules
    assert all(r["checkpoint_sha256"] == results["checkpoint"]["sha256"] for r in rows)
    head_row = next(r for r in rows if (r["depth"], r["breadth"], r["rule"]) == ("4", "4", "conv_top1"))
    assert math.isclose(float(head_row["accuracy"]), results["headline"]["accuracy"])
    assert "HEADLINE exact accuracy D4 B4" in capsys.readouterr().out
    with open(os.path.join(out, "accuracy_heatmap.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_evaluate_single_cell_matches_the_grid(run_files, tmp_path):
    _, data, ckpt = run_files
    runs = {}
    for name, args in {"grid": ["depths=[2,3]", "breadths=[1,3]"], "cell": ["halt_max_steps=3", "different_init=3"]}.items():
        out = str(tmp_path / name)
        assert evaluate.main([f"checkpoint={ckpt}", f"output_dir={out}", "global_batch_size=2", "progress=false",
                              "plots=false", "device=cpu", *args]) == 0
        with open(os.path.join(out, "results.json")) as f:
            runs[name] = {(r["depth"], r["breadth"], r["rule"]): r["correct"] for r in json.load(f)["rows"]}
    assert runs["cell"] and all(runs["grid"][key] == value for key, value in runs["cell"].items())


@pytest.mark.parametrize("args,message", [
    (["checkpoint=/nonexistent/x.pt"], "no such checkpoint file"),
    (["depths=[4,2,0]"], "depths"),
    (["rng=philox"], "rng"),
    (["data_path=/nonexistent"], "dataset.json"),
    (["global_batch_size=3", "halt_max_steps=1"], None),
    (["no_such_key=1"], "no_such_key"),
    (["compile=maybe"], "compile: expected true/false or null"),
    (["halt=1"], "halt: expected true/false, got 1"),
    (["halt_threshold=abc"], "halt_threshold: expected a number"),
    (["device=tpu"], "device: expected cpu, cuda or cuda:N"),
    (["different_init_reset_std=0"], "different_init_reset_std: expected a value in (0, inf)"),
    (["save_outputs=yes"], "save_outputs: expected true/false"),
])
def test_evaluate_bad_input_is_one_line_and_exit_2(run_files, tmp_path, capsys, args, message):
    _, data, ckpt = run_files
    device = [] if any(a.startswith("device=") for a in args) else ["device=cpu"]
    code = evaluate.main([f"checkpoint={ckpt}", f"output_dir={tmp_path / 'o'}", "progress=false", "plots=false",
                          *device, *args])
    err = capsys.readouterr().err.strip().splitlines()
    if message is None:  # a valid odd batch size just works
        assert code == 0
        return
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_presets_compose_and_command_line_wins():
    cfg = evaluate.parse_config(evaluate.compose_eval_config(["checkpoint=x.pt", "eval=paper_grid"]))
    assert cfg.depths == [1, 2, 4, 8, 16, 32, 64] and cfg.breadths == [1, 2, 4, 8, 16, 32, 64, 128]
    assert cfg.global_batch_size == 16 and cfg.convergence_top_k == 1 and cfg.rng == "keyed"
    cfg = evaluate.parse_config(evaluate.compose_eval_config(["checkpoint=x.pt", "eval=paper_grid", "depths=[2,4]"]))
    assert cfg.depths == [2, 4]
    cfg = evaluate.parse_config(evaluate.compose_eval_config(["checkpoint=x.pt", "eval=headline"]))
    assert (cfg.halt_max_steps, cfg.different_init, cfg.depths) == (64, 128, None)
    cfg = evaluate.parse_config(evaluate.compose_eval_config(["checkpoint=x.pt", "eval=elastic"]))
    assert (cfg.act_inference, cfg.halt_max_steps, cfg.halt_threshold) == (True, 64, 1.0)
    spec = evaluate.grid_spec(cfg, ModelConfig(**EQR))
    assert spec.elastic and [r.label for r in spec.halting_rules] == ["q>1"]
