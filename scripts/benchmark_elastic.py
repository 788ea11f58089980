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

from dataset.common import open_split  # noqa: E402
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


def compare(inner, batches, depth: int, breadth: int, rules, pool: int, seed: int) -> dict:
    """Time the one-pass grid, then the pool, over `batches` at depth cap `depth` with halting `rules`
    -> wall and CPU seconds, puzzles/s, rows computed and NFE per puzzle of each rule, and whether both
    gave the same counts."""
    common = dict(depths=(depth,), breadths=(breadth,), blocks_per_step=inner.config.blocks_per_step, halt_rules=rules)
    grid, elastic = GridSpec(**common), GridSpec(**common, elastic=True)
    keep = [grid.rules.index(rule) for rule in elastic.rules]
    stats = {}

    def run_grid():
        return [run_batch(inner, b, grid, KeyedSampler(seed, *row_keys(grid, b["index"])))[0][:, :, keep] for b in batches]

    def run_pool():
        slots = torch.zeros(pool, dtype=torch.long, device=batches[0]["inputs"].device)
        return [c for _, _, c, _ in elastic_batches(inner, enumerate(batches), elastic, pool,
                                                   KeyedSampler(seed, slots, slots), stats)]

    puzzles = sum(int(b["mask"].sum()) for b in batches)
    grid_counts, grid_wall, grid_cpu = timed(run_grid)
    pool_counts, pool_wall, pool_cpu = timed(run_pool)
    total = sum(grid_counts)[0, 0]
    return {"depth": depth, "puzzles": puzzles, "grid_wall_s": grid_wall, "grid_cpu_s": grid_cpu,
            "pool_wall_s": pool_wall, "pool_cpu_s": pool_cpu,
            "grid_puzzles_per_s": puzzles / grid_wall, "pool_puzzles_per_s": puzzles / pool_wall,
            "grid_row_steps": sum(int(b["mask"].numel()) * breadth for b in batches) * depth,
            "pool_row_steps": stats["slot_steps"], "pool_busy_row_steps": stats["busy_steps"],
            "same_counts": all(torch.equal(a, b) for a, b in zip(grid_counts, pool_counts)),
            # the all_traj+halt cell of each rule: NFE over all B trajectories
            "nfe_per_puzzle": {r.label: float(total[3 * i + 1, 4]) / puzzles for i, r in enumerate(rules)}}


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
    batches = list(iter_test_batches(open_split(args.data, "test"), args.batch, 0, 1, args.puzzles))
    puzzles = sum(int(b["mask"].sum()) for b in batches)
    pool = args.pool or args.batch * args.breadth
    print(f"{info['uri']} on {args.data}: {puzzles} puzzles, B{args.breadth}, rules {[r.label for r in rules]}, "
          f"grid batch {args.batch}, pool {pool} slots, {args.threads} thread(s)")
    if args.calibration:
        return calibration(inner, batches, args.calibration, args.thresholds, args.seed)
    results = []
    for depth in args.depths:
        for _ in range(args.repeats):
            row = compare(inner, batches, depth, args.breadth, rules, pool, args.seed)
            results.append(row)
            nfe = row["nfe_per_puzzle"]
            print(f"D{depth}: grid {row['grid_wall_s']:.1f} s wall / {row['grid_cpu_s']:.1f} s CPU ({row['grid_puzzles_per_s']:.2f} puzzles/s), "
                  f"pool {row['pool_wall_s']:.1f} s / {row['pool_cpu_s']:.1f} s ({row['pool_puzzles_per_s']:.2f} puzzles/s); "
                  f"pool/grid: wall {row['pool_wall_s'] / row['grid_wall_s']:.3f}, CPU {row['pool_cpu_s'] / row['grid_cpu_s']:.3f}, "
                  f"row-steps {row['pool_row_steps'] / row['grid_row_steps']:.3f} (busy {row['pool_busy_row_steps'] / row['grid_row_steps']:.3f}); "
                  f"NFE/puzzle by rule {', '.join(f'{k} {v:.1f}' for k, v in nfe.items())}; same counts: {row['same_counts']}")
    if args.out:
        atomic_write(args.out, (json.dumps({"checkpoint": info["uri"], "puzzles": puzzles, "pool": pool,
                                            "rules": [r.label for r in rules], "runs": results}, indent=2) + "\n").encode())
    return 0 if all(r["same_counts"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
