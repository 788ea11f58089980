"""evaluation/residuals.py: the grid's residual counts equal a row-by-row, step-by-step recomputation (in one
pass, through evaluate.py on 1 process and on 2 gloo processes), and the AUC from histograms equals a pairwise count."""
import json
import math

import numpy as np
import pytest
import torch

import evaluate
import launch as launcher
from dataset.common import open_split, single_example_split, write_dataset
from dataset.puzzle_dataset import iter_test_batches
from evaluation import residuals
from evaluation.grid import GridSpec, row_keys, run_batch
from evaluation.intervals import mann_whitney_auc
from evaluation.keyed_rng import KeyedSampler
from models.losses import IGNORE_LABEL_ID
from test_eval_grid import EQR, TRM, build_model, model_answers, random_batch, write_checkpoint

WINDOW = 2


def trajectory(inner, inputs, labels, seed, puzzle, number, steps, fresh_std):
    """One trajectory alone, step by step -> per step: (residual, relative residual, exact, convergence score)."""
    sampler = KeyedSampler(seed, torch.tensor([puzzle]), torch.tensor([number]))
    shape = (1, inner.config.latent_len, inner.config.hidden_size)
    z_H, z_L = torch.zeros(shape, dtype=inner.config.dtype), torch.zeros(shape, dtype=inner.config.dtype)
    inner.reset_latents(z_H, z_L, torch.ones(1, dtype=torch.bool), sampler, fresh_std=fresh_std)
    out, changes, previous = [], [], None
    with torch.inference_mode():
        for _ in range(steps):
            z = torch.cat((z_H, z_L), dim=1)
            z_H, z_L, logits, _ = inner(z_H, z_L, inputs[None], sampler)
            new = torch.cat((z_H, z_L), dim=1)
            residual = float((new - z).flatten().float().norm())  # the authors' form
            relative = residual / float(new.flatten().float().norm())
            labelled = labels != IGNORE_LABEL_ID
            exact = bool((logits[0].argmax(-1)[labelled] == labels[labelled]).all())
            if previous is not None:
                changes.append(float((logits[0].float() - previous).norm(dim=-1).mean()))
            previous = logits[0].float()
            score = float(np.mean(changes[-WINDOW:])) if changes else 0.0
            out.append((residual, relative, exact, score))
    return out


def brute_force(inner, puzzles, seed, depths, breadths, fresh_std):
    """Every residual row (residuals.rows' keys) from trajectories run one by one; puzzles: (index, inputs, labels).
    Returns the rows and, per (D, B, group), the (solved, failed) lists of raw residuals."""
    fixed_row = fresh_std is not None and breadths[-1] > 1 and breadths[0] == 1
    runs = {}
    for p, inputs, labels in puzzles:
        for t in range(breadths[-1]):
            runs[p, t] = trajectory(inner, inputs, labels, seed, p, t, depths[-1], fresh_std if breadths[-1] > 1 else None)
        if fixed_row:
            runs[p, "fixed"] = trajectory(inner, inputs, labels, seed, p, 0, depths[-1], None)
    rows, raw = [], {}
    for depth in depths:
        for breadth in breadths:
            members = {"all": [], "picked": []}
            for p, _, _ in puzzles:
                traj = [runs[p, "fixed" if fixed_row and breadth == 1 else t][depth - 1] for t in range(breadth)]
                members["all"] += traj
                best = min(range(breadth), key=lambda t: (traj[t][3], t)) if depth >= 2 and breadth > 1 else 0
                members["picked"].append(traj[best])
            for group, held in members.items():
                solved = [r for r in held if r[2]]
                failed = [r for r in held if not r[2]]
                mean = lambda xs, i: sum(x[i] for x in xs) / len(xs) if xs else None
                raw[depth, breadth, group] = [x[0] for x in solved], [x[0] for x in failed]
                rows.append({"depth": depth, "breadth": breadth, "group": group, "solved": len(solved),
                             "failed": len(failed), "residual": mean(held, 0), "residual_solved": mean(solved, 0),
                             "residual_failed": mean(failed, 0), "relative_solved": mean(solved, 1),
                             "relative_failed": mean(failed, 1), "auc": pairwise_auc(*raw[depth, breadth, group])})
    return rows, raw


def bin_by_hand(x: float) -> int:
    if math.isnan(x) or x >= 2.0 ** residuals.HIGH_OCTAVE:
        return residuals.BINS - 1
    if x < 2.0 ** residuals.LOW_OCTAVE:
        return 0
    return min(residuals.BINS - 1, 1 + math.floor((math.log2(x) - residuals.LOW_OCTAVE) * residuals.BINS_PER_OCTAVE))


def pairwise_auc(solved, failed, key=bin_by_hand):
    """P(solved below failed) + P(tie) / 2 by counting every pair (of bins); None without both."""
    if not solved or not failed:
        return None
    score = sum(1.0 if key(s) < key(f) else 0.5 if key(s) == key(f) else 0.0 for s in solved for f in failed)
    return score / (len(solved) * len(failed))


def check_rows(got, want, raw):
    assert len(got) == len(want)
    informative = 0
    for g, w in zip(got, want):
        assert (g["depth"], g["breadth"], g["group"], g["solved"], g["failed"]) == \
               (w["depth"], w["breadth"], w["group"], w["solved"], w["failed"]), (g, w)
        for key in ("residual", "residual_solved", "residual_failed", "relative_solved", "relative_failed", "auc"):
            assert (g[key] is None) == (w[key] is None), (key, g, w)
            if w[key] is not None:
                assert g[key] == pytest.approx(w[key], rel=1e-5, abs=1e-6), (key, g, w)
        if w["auc"] is not None:
            informative += 1
            solved, failed = raw[g["depth"], g["breadth"], g["group"]]
            exact = 1 - mann_whitney_auc(solved, failed)  # unbinned: P(solved < failed) + ties / 2
            assert abs(exact - g["auc"]) <= g["auc_tie"] / 2 + 1e-12
    assert informative > 0  # some cells hold solved and failed trajectories: the AUC was compared


@pytest.mark.parametrize("arch,fresh_std", [(EQR, None), (TRM, 1.0)], ids=["eqr", "trm-fresh"])
def test_residual_counts_equal_a_trajectory_by_trajectory_recomputation(arch, fresh_std):
    head = build_model(arch)
    inner = head.model.inner
    batch = random_batch(head, n=6, pad=1)
    batch["labels"][:6] = model_answers(head, batch["inputs"][:6], 2)  # trajectory 1 is right at D=2, others vary
    depths, breadths = (1, 2, 4), (1, 2, 3)
    spec = GridSpec(depths, breadths, inner.config.blocks_per_step, window=WINDOW, fresh_init_std=fresh_std)
    counts = torch.zeros(spec.size, dtype=torch.long)
    for half in (slice(0, 4), slice(4, 7)):  # two batches add up
        part = {k: v[half] for k, v in batch.items()}
        run_batch(inner, part, spec, KeyedSampler(99, *row_keys(spec, part["index"])), residuals=spec.residual_parts(counts))
    got = residuals.rows(spec, *spec.residual_parts(counts))
    puzzles = [(int(batch["index"][i]), batch["inputs"][i], batch["labels"][i]) for i in range(6)]
    want, raw = brute_force(inner, puzzles, 99, depths, breadths, fresh_std)
    check_rows(got, want, raw)
    assert any(r["solved"] and r["failed"] for r in got)


def test_auc_from_histograms_equals_a_pairwise_count():
    rng = np.random.default_rng(0)
    for n_solved, n_failed in ((1, 1), (7, 3), (40, 55), (0, 5)):
        solved = list(np.exp(rng.normal(-1.0, 1.0, n_solved)))
        failed = list(np.exp(rng.normal(0.0, 1.0, n_failed))) + [0.0, float("nan"), 2.0 ** 20][:n_failed]
        counts = lambda xs: np.bincount(residuals.bin_of(torch.tensor(xs, dtype=torch.float64)).numpy(),
                                        minlength=residuals.BINS).tolist()
        auc, tie = residuals.auc_from_histograms(counts(solved), counts(failed))
        want = pairwise_auc(solved, failed)
        if want is None:
            assert math.isnan(auc) and math.isnan(tie)
            continue
        assert auc == pytest.approx(want, abs=1e-12)
        same = sum(bin_by_hand(s) == bin_by_hand(f) for s in solved for f in failed)
        assert tie == pytest.approx(same / (len(solved) * len(failed)), abs=1e-12)

def test_bins_and_fixed_point_edges():
    x = torch.tensor([0.0, 2.0 ** -17, 2.0 ** -16, 1.0, 1.0 * 2 ** (1 / 8), 2.0 ** 16, math.inf, math.nan], dtype=torch.float64)
    assert residuals.bin_of(x).tolist() == [bin_by_hand(v) for v in x.tolist()]
    assert residuals.bin_of(x).tolist()[:5] == [0, 0, 1, 129, 130] and residuals.bin_of(x).tolist()[5:] == [257] * 3
    assert residuals.fixed_point(torch.tensor([0.5, -1.0, math.nan, 1e30])).tolist() == [
        residuals.SCALE // 2, 0, int(residuals.MAX * residuals.SCALE), int(residuals.MAX * residuals.SCALE)]


# ----------------------------------------------------------------------------- through evaluate.py

GRID = ["seed=99", "depths=[1,2,3]", "breadths=[1,2]", "progress=false", "plots=false", "device=cpu", f"convergence_window={WINDOW}"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("residuals")
    head = build_model(EQR)
    inputs = np.random.default_rng(0).integers(1, EQR["vocab_size"], (5, EQR["seq_len"]))  # 5: the last batch is padded
    labels = model_answers(head, torch.from_numpy(inputs).int(), 2).numpy()  # 0 (a prediction of 0) is unlabelled
    split = single_example_split(inputs, labels, EQR["vocab_size"])
    data = str(root / "data")
    write_dataset(data, {"train": split, "test": split})
    return write_checkpoint(str(root / "eqr.pt"), head, data), data, head


def check_results(output_dir, data, head):
    with open(output_dir / "results.json") as f:
        results = json.load(f)
    puzzles = [(int(i), x, y) for batch in iter_test_batches(open_split(data, "test"), 4, 0, 1)
               for i, x, y, m in zip(batch["index"], batch["inputs"], batch["labels"], batch["mask"])
               if m and (y != IGNORE_LABEL_ID).any()]  # as the grid: a puzzle without labels is not counted
    assert len(puzzles) >= 3
    want, raw = brute_force(head.model.inner, puzzles, 99, (1, 2, 3), (1, 2), None)
    check_rows(results["residuals"], want, raw)
    return results


def test_evaluate_reports_residuals(checkpoint, tmp_path, capsys):
    path, data, head = checkpoint
    assert evaluate.main([f"checkpoint={path}", f"output_dir={tmp_path / 'one'}", "global_batch_size=2", *GRID]) == 0
    results = check_results(tmp_path / "one", data, head)
    assert results["counts"]["residual_scale"] == residuals.SCALE
    hist = torch.zeros(residuals.shapes(3, 2)[1], dtype=torch.long)  # the sparse histograms, read back
    for d, depth in enumerate(results["counts"]["residual_histograms"]):
        for b, cell in enumerate(depth):
            for g, group in enumerate(cell):
                for o, pairs in enumerate(group):
                    for bin_, count in pairs:
                        hist[d, b, g, o, bin_] = count
    sums = torch.tensor(results["counts"]["residual_sums"])
    assert residuals.rows(GridSpec((1, 2, 3), (1, 2), 1), sums, hist) == results["residuals"]
    assert "AUC of the residual for correctness" in capsys.readouterr().out


@pytest.mark.slow
def test_two_processes_report_the_same_residuals(checkpoint, tmp_path):
    path, data, head = checkpoint
    two = launcher.launch("evaluate.py", f"checkpoint={path}", f"output_dir={tmp_path / 'two'}", "global_batch_size=4",
                          *GRID, nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    results = check_results(tmp_path / "two", data, head)
    assert results["world_size"] == 2
