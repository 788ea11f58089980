"""Cost of the one-pass grid against its largest cell alone, keyed vs torch randomness, and peak memory vs D.

    python scripts/benchmark_eval.py                          # small CPU-sized Sudoku-shaped model
    python scripts/benchmark_eval.py --preset sudoku --device cuda --puzzles 16 \
        --depths 1 2 4 8 16 32 64 --breadths 1 2 4 8 16 32 64 128

Random weights and boards: the cost of a step does not depend on what the model learned.
Peak memory is measured in a fresh process per depth (RSS on CPU, max allocated on CUDA).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evaluation.grid import GridSpec, row_keys, run_batch  # noqa: E402
from evaluation.keyed_rng import KeyedSampler  # noqa: E402
from models.eqr import ModelConfig, RecurrentReasoner, TorchSampler  # noqa: E402

PRESETS = {
    "small": dict(seq_len=81, vocab_size=11, mlp_t=True, hidden_size=64, L_layers=2, H_cycles=3, L_cycles=6,
                  forward_dtype="float32"),
    "sudoku": dict(seq_len=81, vocab_size=11, mlp_t=True),  # the paper's preset (bfloat16)
    "maze": dict(seq_len=900, vocab_size=6, L_layers=1, L_cycles=4, hidden_size=128),
}


def setup(preset: str, puzzles: int, device: str):
    torch.manual_seed(0)
    config = ModelConfig(**PRESETS[preset])
    inner = RecurrentReasoner(config).inner.to(device).eval()
    batch = {"inputs": torch.randint(1, config.vocab_size, (puzzles, config.seq_len), device=device),
             "labels": torch.randint(1, config.vocab_size, (puzzles, config.seq_len), device=device),
             "mask": torch.ones(puzzles, dtype=torch.bool, device=device),
             "index": torch.arange(puzzles, device=device)}
    return inner, batch


def sampler_for(rng: str, batch: dict, spec: GridSpec):
    if rng == "torch":
        return TorchSampler()
    return KeyedSampler(0, *row_keys(spec, batch["index"]))


def timed(inner, batch, spec, rng: str, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run_batch(inner, batch, spec, sampler_for(rng, batch, spec))
        if batch["inputs"].is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def residual_cost(inner, batch, spec, repeats: int) -> dict:
    """Best wall and CPU seconds of the grid without and with the residual counts, run alternately."""
    best = {"wall_without_s": float("inf"), "cpu_without_s": float("inf"), "wall_with_s": float("inf"),
            "cpu_with_s": float("inf")}
    for _ in range(repeats):
        for name, counts in (("without", None), ("with", torch.zeros(spec.size, dtype=torch.long, device=inner.q_head.weight.device))):
            wall, cpu = time.perf_counter(), time.process_time()
            run_batch(inner, batch, spec, sampler_for("keyed", batch, spec),
                      residuals=None if counts is None else spec.residual_parts(counts))
            if batch["inputs"].is_cuda:
                torch.cuda.synchronize()
            best[f"wall_{name}_s"] = min(best[f"wall_{name}_s"], time.perf_counter() - wall)
            best[f"cpu_{name}_s"] = min(best[f"cpu_{name}_s"], time.process_time() - cpu)
    return best


def peak_memory(args, depth: int) -> float:
    """Peak memory (MiB) of one largest-breadth run to `depth`, in a fresh process."""
    out = subprocess.run([sys.executable, __file__, "--peak-of-depth", str(depth), "--preset", args.preset,
                          "--puzzles", str(args.puzzles), "--device", args.device, "--breadths", str(args.breadths[-1])],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def measure_peak(args) -> None:
    inner, batch = setup(args.preset, args.puzzles, args.device)
    spec = GridSpec((args.peak_of_depth,), (args.breadths[-1],), inner.config.blocks_per_step)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    run_batch(inner, batch, spec, sampler_for("keyed", batch, spec))
    if args.device.startswith("cuda"):
        print(torch.cuda.max_memory_allocated() / 2**20)
    else:
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux reports KiB


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--puzzles", type=int, default=2, help="puzzles per batch (rows = puzzles * max breadth)")
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--breadths", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument("--peak-of-depth", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.peak_of_depth:
        return measure_peak(args)

    inner, batch = setup(args.preset, args.puzzles, args.device)
    bps = inner.config.blocks_per_step
    grid = GridSpec(tuple(args.depths), tuple(args.breadths), bps, top_k=min(8, args.breadths[-1]), halt=True)
    cell = GridSpec((args.depths[-1],), (args.breadths[-1],), bps)
    timed(inner, batch, cell, "keyed", 1)  # warm-up
    t_cell = timed(inner, batch, cell, "keyed", args.repeats)
    t_grid = timed(inner, batch, grid, "keyed", args.repeats)
    t_torch = timed(inner, batch, cell, "torch", args.repeats)
    residual = residual_cost(inner, batch, grid, args.repeats)
    cells = len(args.depths) * len(args.breadths)
    separate = sum(timed(inner, batch, GridSpec((d,), (b,), bps), "keyed", 1)
                   for d in args.depths for b in args.breadths) if cells <= 30 and args.device == "cpu" else None
    peaks = {d: peak_memory(args, d) for d in args.depths}

    numbers = {"preset": args.preset, "device": args.device, "puzzles": args.puzzles, "depths": args.depths,
               "breadths": args.breadths, "rows": args.puzzles * args.breadths[-1], "largest_cell_s": t_cell,
               "grid_one_pass_s": t_grid, "grid_over_cell": t_grid / t_cell, "separate_cells_s": separate,
               "torch_rng_cell_s": t_torch, "keyed_over_torch": t_cell / t_torch, "peak_mib_by_depth": peaks,
               "residual_counts": residual}
    print(f"preset {args.preset} on {args.device}, {args.puzzles} puzzles x B{args.breadths[-1]} = "
          f"{numbers['rows']} rows, D{args.depths[-1]}")
    print(f"largest cell alone (D{args.depths[-1]} B{args.breadths[-1]}, keyed rng): {t_cell:.3f} s")
    print(f"whole grid {len(args.depths)}x{len(args.breadths)} in one pass (+halting, top-k curve): {t_grid:.3f} s "
          f"= {t_grid / t_cell:.3f}x the largest cell")
    if separate is not None:
        print(f"every cell run separately (the reference's way): {separate:.3f} s = {separate / t_cell:.2f}x")
    print(f"largest cell with torch rng: {t_torch:.3f} s; keyed rng costs {t_cell / t_torch:.3f}x")
    print(f"residual counts at the grid's {len(args.depths)} depths: wall {residual['wall_with_s']:.3f} s with, "
          f"{residual['wall_without_s']:.3f} s without ({residual['wall_with_s'] / residual['wall_without_s']:.3f}x); "
          f"CPU {residual['cpu_with_s']:.3f} s with, {residual['cpu_without_s']:.3f} s without "
          f"({residual['cpu_with_s'] / residual['cpu_without_s']:.3f}x)")
    print("peak memory (MiB) vs D: " + ", ".join(f"D{d}: {m:.0f}" for d, m in peaks.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(numbers, f, indent=2)


if __name__ == "__main__":
    main()
