"""Elastic pool vs one-pass grid on the same checkpoint, puzzles and halting rules, in one process.

    python scripts/benchmark_elastic.py checkpoints/shipped/eqr_sudoku_cpu.pt data/elastic/sudoku-g40 \
        --depths 64 256 --puzzles 256 --batch 64 --thresholds 0 1 --threads 1

For each depth cap D it runs the grid (every row to D, the rules' answers read off) and the pool
(evaluation/pool.py: a trajectory leaves once every rule has decided), alternately, `--repeats` times,
and prints wall and CPU seconds, puzzles/s, the rows computed (row-steps; the pool's include idle
slots while it drains), the NFE per puzzle the rules report, and checks that both give the same counts.
Once the pool is full, its time over the grid's should follow its row-steps over the grid's.
--calibration D instead prints the halting head's calibration over D steps of trajectory 1: per step,
the share of puzzles solved, the mean q_halt of solved and unsolved ones, and for each threshold the
share of trajectories with q > threshold and how many of those are solved (the rule's precision).
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from dataset.puzzle_dataset import iter_test_batches  # noqa: E402
from evaluation.grid import GridSpec, row_keys, run_batch  # noqa: E402
from evaluation.keyed_rng import KeyedSampler  # noqa: E402
from evaluation.pool import elastic_batches  # noqa: E402
from models.checkpoint import load_for_eval  # noqa: E402
from models.halting import rules_from  # noqa: E402
from utils.constants import IGNORE_LABEL_ID  # noqa: E402
from utils.files import atomic_write  # noqa: E402


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


@torch.inference_mode()
def calibration(inner, batches, depth: int, thresholds: list[float], seed: int) -> int:
    """q_halt against correctness per step, trajectory 1 of every real puzzle, keyed as the grid's rows."""
    qs, solved = [], []
    for b in batches:
        labelled = b["labels"] != IGNORE_LABEL_ID
        real = b["mask"] & labelled.any(-1)
        sampler = KeyedSampler(seed, b["index"], torch.zeros_like(b["index"]))
        n = len(b["index"])
        z_H = torch.zeros(n, inner.config.seq_len, inner.config.hidden_size, dtype=inner.config.dtype)
        z_L = torch.zeros_like(z_H)
        inner.reset_latents(z_H, z_L, torch.ones(n, dtype=torch.bool), sampler)

        q_rows, s_rows = [], []
        for _ in range(depth):
            z_H, z_L, logits, q = inner(z_H, z_L, b["inputs"], sampler)
            q_rows.append(q[real])
            s_rows.append(((logits.argmax(-1) == b["labels"]) | ~labelled).all(-1)[real])
        qs.append(torch.stack(q_rows, 1))
        solved.append(torch.stack(s_rows, 1))
    q, ok = torch.cat(qs), torch.cat(solved)
    print(f"{len(q)} puzzles, trajectory 1: step, solved %, mean q solved / unsolved, "
          + ", ".join(f"[q>{t:g}: % of rows, % of them solved]" for t in thresholds))
    for t in range(depth):
        mean = lambda m: f"{q[m, t].mean():6.2f}" if m.any() else "     -"
        cols = []
        for threshold in thresholds:
            above = q[:, t] > threshold
            cols.append(f"{100 * above.double().mean():5.1f} {100 * ok[above, t].double().mean():5.1f}"
                        if above.any() else f"{0:5.1f}     -")
        print(f"{t + 1:4d} {100 * ok[:, t].double().mean():6.1f} {mean(ok[:, t])} / {mean(~ok[:, t])}   " + "   ".join(cols))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("data")
    parser.add_argument("--depths", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--puzzles", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64, help="puzzles per grid batch")
    parser.add_argument("--pool", type=int, default=None, help="pool slots (default: the rows of a grid batch)")
    parser.add_argument("--breadth", type=int, default=1)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 1.0])
    parser.add_argument("--confirm", type=int, nargs="+", default=[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the figures as JSON")
    parser.add_argument("--calibration", type=int, default=None, metavar="D", help="print q vs correctness per step")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    head, info = load_for_eval(args.checkpoint)
    inner = head.model.inner.eval()
    rules = rules_from(args.thresholds, args.confirm, "consecutive", 1)
    batches = list(iter_test_batches(args.data, args.batch, 0, 1, "test", args.puzzles))
    puzzles = sum(int(b["mask"].sum()) for b in batches)
    pool = args.pool or args.batch * args.breadth
    print(f"{info['uri']} on {args.data}: {puzzles} puzzles, B{args.breadth}, rules {[r.label for r in rules]}, "
          f"grid batch {args.batch}, pool {pool} slots, {args.threads} thread(s)")
    if args.calibration:
        return calibration(inner, batches, args.calibration, args.thresholds, args.seed)
    results = []
    for depth in args.depths:
        common = dict(depths=(depth,), breadths=(args.breadth,), blocks_per_step=inner.config.blocks_per_step,
                      halt_rules=rules)
        grid, elastic = GridSpec(**common), GridSpec(**common, elastic=True)
        keep = [grid.rules.index(rule) for rule in elastic.rules]

        def run_grid():
            return [run_batch(inner, b, grid, KeyedSampler(args.seed, *row_keys(grid, b["index"])))[0][:, :, keep]
                    for b in batches]

        def run_pool():
            slots = torch.zeros(pool, dtype=torch.long)
            out = [c for _, _, c, _ in elastic_batches(inner, enumerate(batches), elastic, pool,
                                                       KeyedSampler(args.seed, slots, slots), stats)]
            return out

        for _ in range(args.repeats):
            stats = {}
            grid_counts, grid_wall, grid_cpu = timed(run_grid)
            pool_counts, pool_wall, pool_cpu = timed(run_pool)
            same = all(torch.equal(a, b) for a, b in zip(grid_counts, pool_counts))
            grid_rows = sum(int(b["mask"].numel()) * args.breadth for b in batches) * depth
            total = sum(grid_counts)[0, 0]
            nfe = {r.label: float(total[3 * i + 1, 4]) / puzzles for i, r in enumerate(rules)}  # all_traj+halt: all B
            row = {"depth": depth, "grid_wall_s": grid_wall, "grid_cpu_s": grid_cpu, "pool_wall_s": pool_wall,
                   "pool_cpu_s": pool_cpu, "grid_row_steps": grid_rows, "pool_row_steps": stats["slot_steps"],
                   "pool_busy_row_steps": stats["busy_steps"], "same_counts": same, "nfe_per_puzzle": nfe}
            results.append(row)
            print(f"D{depth}: grid {grid_wall:.1f} s wall / {grid_cpu:.1f} s CPU ({puzzles / grid_wall:.2f} puzzles/s), "
                  f"pool {pool_wall:.1f} s / {pool_cpu:.1f} s ({puzzles / pool_wall:.2f} puzzles/s); "
                  f"pool/grid: wall {pool_wall / grid_wall:.3f}, CPU {pool_cpu / grid_cpu:.3f}, "
                  f"row-steps {stats['slot_steps'] / grid_rows:.3f} (busy {stats['busy_steps'] / grid_rows:.3f}); "
                  f"NFE/puzzle by rule {', '.join(f'{k} {v:.1f}' for k, v in nfe.items())}; same counts: {same}")
    if args.out:
        atomic_write(args.out, (json.dumps({"checkpoint": info["uri"], "puzzles": puzzles, "pool": pool,
                                            "rules": [r.label for r in rules], "runs": results}, indent=2) + "\n").encode())
    return 0 if all(r["same_counts"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
