"""Measure EqR's speed on the machine at hand and write the figures as JSON.

    python scripts/benchmark.py                     # full figures (CPU: several minutes)
    python scripts/benchmark.py --quick             # smoke run: small batches, few repeats, dtype auto (< 2 min on 2 cores)
    python scripts/benchmark.py --device cuda       # GPU: the Sudoku/maze presets at their global batch (768), bf16

In one run: the matrix-multiply peak in float32 and bfloat16 (a loop of square torch.mm);
then for each preset of config/train (the Sudoku and maze presets and the *_cpu ones) the
training step time (forward + backward + optimizer + EMA, median after warm-up), the
evaluation throughput (trajectory-steps per second: one supervision step of ReasoningCore
per row, under torch.inference_mode), the peak memory of each, the analytic matmul FLOPs
and the achieved fraction of the peak (MFU), and the cost of keyed randomness (an eval step
drawing from evaluate.py's KeyedSampler against one drawing from torch's generator); all of it
for the eager path and, on CUDA (or with --compile), again for the torch.compile'd core that
pretrain.py and evaluate.py use there by default; the elastic pool (evaluation/pool.py) against the
one-pass grid at the same depth cap on the same random-weight model and batches (puzzles/s of each,
their ratio, the NFE ratio; the halting head gets random weights and its threshold is set so that half
of the first batch's trajectories halt before the cap, eager path only); and the start-up time, from launching
pretrain.py (max_steps=1, tiny generated Sudoku set) to the process exiting.
Peak memory is the resident set size on CPU (VmHWM, reset before each measurement) and
torch.cuda.max_memory_allocated on GPU.
"""
import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from evaluation.keyed_rng import KeyedSampler  # noqa: E402
from models.halting import HaltRule  # noqa: E402
from utils.errors import RunError  # noqa: E402
from utils.files import atomic_write  # noqa: E402
from utils.processes import resolve_forward_dtype  # noqa: E402
from models.ema import EMA  # noqa: E402
from models.eqr import ModelConfig, RecurrentReasoner  # noqa: E402
from models.layers import find_multiple, trunc_normal_  # noqa: E402
from models.losses import ACTLossHead  # noqa: E402
from models.optim import make_optimizer  # noqa: E402

PRESETS = ["eqr_sudoku", "eqr_maze_unique", "eqr_sudoku_cpu", "trm_sudoku_cpu", "ff_sudoku_cpu", "eqr_maze_cpu", "trm_maze_cpu"]
# (seq_len, vocab_size) of each preset's default data folder, used when that folder is not built here.
DATA_SHAPES = {"data/sudoku-extreme-1k-aug-1000": (81, 11), "data/maze-30x30-unique-1k": (900, 6),
               "data/sudoku-cpu": (81, 11), "data/maze-cpu-11": (121, 6)}
# (train batch, eval batch) per mode for the full-size presets on CPU; the *_cpu presets use their own.
CPU_BATCH = {"quick": (2, 4), "full": (8, 16)}
TARGETS = {"eval_mfu": 0.5, "train_mfu": 0.3, "startup_s": 10.0}  # the MFU ones are for eqr_sudoku on CPU
EVAL_CELLS = ((16, 1), (64, 8))  # (depth, breadth) cells whose puzzles/s the benchmark reports
# Elastic pool vs grid: (depth cap, eval batches fed through both) per mode, and the share of the first
# batch's trajectories that the threshold, set from them, lets halt before the cap (a random model halts at no fixed one)
ELASTIC = {"quick": (8, 3), "full": (64, 4)}
ELASTIC_HALT_SHARE = 0.5
# On CUDA, for the default (compiled) path: MFU of the bf16 peak per preset, keyed draws' share of an eval step
GPU_TARGETS = {"eqr_sudoku": 0.45, "eqr_maze_unique": 0.30, "keyed_rng_share": 0.05}


class BenchmarkError(Exception):
    pass


# ----------------------------------------------------------------------------- timing and memory

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn, warmup: int, repeats: int, device: torch.device) -> tuple[float, float]:
    """-> (median seconds of `repeats` calls after `warmup` calls, seconds of the very first call)."""
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times[warmup:]), times[0]


class PeakMemory:
    """Peak memory since reset(), in MiB: CUDA allocator peak, or the process's peak RSS (VmHWM)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.resettable = device.type == "cuda" or self._reset_rss()

    @staticmethod
    def _reset_rss() -> bool:
        try:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def reset(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:  # hand freed heap back to the OS, so that an earlier preset's memory does not count here
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        self._reset_rss()

    def current(self) -> float | None:
        """Resident memory now (CPU), or memory allocated now (CUDA), in MiB."""
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device) / 2**20
        try:
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            return None

    def read(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        import resource  # without /proc: the whole process's peak, never reset
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak(dtype: torch.dtype, n: int, seconds: float, device: torch.device) -> float:
    """FLOP/s of a square torch.mm loop of size up to n, run for about `seconds` (best of short rounds).

    The size doubles from 256 while one product takes under a fortieth of `seconds`: a CPU without
    bfloat16 units (no avx512_bf16 / AMX) runs bf16 torch.mm some 100x slower than float32, and a
    2048 product there takes longer than a whole quick run.
    """
    size = 256
    while True:
        a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
        out = torch.empty(size, size, device=device, dtype=dtype)
        torch.mm(a, b, out=out)  # warm-up (library start-up on the first call)
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        synchronize(device)
        if size >= n or time.perf_counter() - start > seconds / 40:
            break
        size *= 2
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        reps = 4
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        synchronize(device)
        best = max(best, reps * 2 * size**3 / (time.perf_counter() - start))
    return best


# ----------------------------------------------------------------------------- FLOPs

def block_flops(config: ModelConfig) -> int:
    """Matmul FLOPs (2 per multiply-add) of one Block forward on one row."""
    seq, hidden = config.seq_len, config.hidden_size
    inner = find_multiple(round(config.expansion * hidden * 2 / 3), 256)
    flops = 2 * seq * hidden * 3 * inner  # SwiGLU over hidden: gate_up (2 * inner) + down
    if config.mlp_t:
        inner_t = find_multiple(round(config.expansion * seq * 2 / 3), 256)
        flops += 2 * hidden * seq * 3 * inner_t  # SwiGLU over the sequence axis
    else:
        flops += 2 * seq * hidden * 4 * hidden  # qkv + o projections
        flops += 2 * 2 * seq * seq * hidden  # scores and weighted sum, over all heads
    return flops


def step_flops(config: ModelConfig) -> dict:
    """Per row: forward of one supervision step, and a training step (forward + backward of the last recursion).

    Only the last of the H_cycles recursions (and the heads) carries a gradient, and a backward
    costs twice its forward.
    """
    heads = 2 * config.seq_len * config.hidden_size * config.vocab_size + 2 * config.hidden_size * 2
    block = block_flops(config)
    forward = config.blocks_per_step * block + heads
    with_grad = forward if config.feedforward else (config.L_cycles + 1) * config.L_layers * block + heads
    return {"forward": forward, "train": forward + 2 * with_grad}


# ----------------------------------------------------------------------------- presets

def load_preset(name: str, dtype: str | None, device: torch.device) -> tuple[ModelConfig, dict]:
    from config import compose_train_config

    cfg = compose_train_config(f"train/{name}", [])
    meta_path = os.path.join(ROOT, cfg["data_path"], "train", "dataset.json")
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        seq_len, vocab = meta["seq_len"], meta["vocab_size"]
    elif cfg["data_path"] in DATA_SHAPES:
        seq_len, vocab = DATA_SHAPES[cfg["data_path"]]
    else:
        raise BenchmarkError(f"config/train/{name}.yaml: data_path {cfg['data_path']} is not built and its shape is unknown")
    arch = {k: v for k, v in cfg["arch"].items() if k not in ("seq_len", "vocab_size")}
    if dtype:
        arch["forward_dtype"] = dtype
    arch["forward_dtype"] = resolve_forward_dtype(arch["forward_dtype"], device)
    return ModelConfig.from_dict(arch, seq_len=seq_len, vocab_size=vocab), cfg


def random_batch(config: ModelConfig, batch_size: int, device, generator) -> dict:
    shape = (batch_size, config.seq_len)
    return {"inputs": torch.randint(1, config.vocab_size, shape, generator=generator, dtype=torch.int32).to(device),
            "labels": torch.randint(1, config.vocab_size, shape, generator=generator, dtype=torch.int32).to(device),
            "puzzle_identifiers": torch.zeros(batch_size, dtype=torch.int32, device=device)}


def bench_train(config, cfg, batch_size, args, device, memory, compiled: bool = False) -> dict:
    """One training step as pretrain.py runs it: forward + backward + AdamATan2 + EMA."""
    torch.manual_seed(0)
    head = ACTLossHead(RecurrentReasoner(config), cfg["arch"]["loss"]["loss_type"]).to(device)
    optimizer = make_optimizer(head.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=1.0)
    ema = EMA(head, 0.999)
    if compiled:
        head.model.inner.compile(dynamic=False, backend=args.compile_backend)
    batch = random_batch(config, batch_size, device, torch.Generator().manual_seed(1))
    state = {"carry": head.initial_carry(batch)}

    def step():
        state["carry"], loss, _, _ = head(state["carry"], batch)
        (loss / batch_size).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(head)

    memory.reset()
    seconds, first = median_time(step, args.warmup, args.repeats, device)
    return {"train_batch": batch_size, "train_step_s": seconds, "train_first_step_s": first,
            "train_peak_mem_mb": memory.read()}


def bench_eval(config, batch_size, args, device, memory, compiled: bool = False, keyed: bool = False) -> dict:
    """Throughput of ReasoningCore supervision steps under inference_mode (latents carried over).

    keyed: draw the noise from evaluate.py's KeyedSampler (rng=keyed, its default) instead of torch's generator.
    """
    torch.manual_seed(0)
    core = RecurrentReasoner(config).to(device).eval().inner
    if compiled:
        core.compile(dynamic=False, backend=args.compile_backend)
    inputs = random_batch(config, batch_size, device, torch.Generator().manual_seed(1))["inputs"]
    shape = (batch_size, config.seq_len, config.hidden_size)
    state = {}
    with torch.inference_mode():
        state["z"] = tuple(trunc_normal_(torch.empty(shape, dtype=config.dtype, device=device)) for _ in range(2))
        rows = torch.arange(batch_size, device=device)
        sampler = KeyedSampler(0, rows, torch.zeros_like(rows)) if keyed else None

    def step():
        with torch.inference_mode():
            z_H, z_L, _, _ = core(*state["z"], inputs, sampler)
            state["z"] = (z_H, z_L)

    memory.reset()
    seconds, first = median_time(step, args.warmup, args.repeats, device)
    return {"eval_batch": batch_size, "eval_step_s": seconds, "eval_first_step_s": first,
            "eval_trajectory_steps_per_s": batch_size / seconds, "eval_peak_mem_mb": memory.read()}


def bench_preset(config, cfg, train_batch, eval_batch, args, device, memory, peak: float, compiled: bool) -> dict:
    """Train and eval step figures of one preset on one path (eager or compiled), MFU against `peak` FLOP/s,
    and the cost of keyed randomness: an eval step with KeyedSampler against one with torch's generator."""
    flops = step_flops(config)
    row = bench_train(config, cfg, train_batch, args, device, memory, compiled)
    row.update(bench_eval(config, eval_batch, args, device, memory, compiled))
    row["train_tflops"] = flops["train"] * train_batch / row["train_step_s"] / 1e12
    row["eval_tflops"] = flops["forward"] * eval_batch / row["eval_step_s"] / 1e12
    row["train_mfu"] = row["train_tflops"] * 1e12 / peak
    row["eval_mfu"] = row["eval_tflops"] * 1e12 / peak
    keyed = bench_eval(config, eval_batch, args, device, memory, compiled, keyed=True)
    row["eval_keyed_step_s"] = keyed["eval_step_s"]
    row["keyed_rng_share"] = max(0.0, 1 - row["eval_step_s"] / keyed["eval_step_s"])
    # evaluate.py's default (keyed) throughput in puzzles per second for two cells: D supervision steps of B rows each
    for depth, breadth in EVAL_CELLS:
        row[f"puzzles_per_s_D{depth}_B{breadth}"] = eval_batch / keyed["eval_step_s"] / (depth * breadth)
    return row


@torch.inference_mode()
def halting_threshold(inner, batch: dict, depth: int, share: float, seed: int) -> float:
    """The threshold at which `share` of the batch's trajectories (keyed as the grid's rows, B = 1) signal halt
    before step `depth`: the quantile of each row's highest q_halt (less q_continue, for a model with that head)
    over steps 1 ... depth - 1."""
    config, n = inner.config, batch["inputs"].shape[0]
    sampler = KeyedSampler(seed, batch["index"], torch.zeros_like(batch["index"]))
    z_H = torch.zeros(n, config.latent_len, config.hidden_size, dtype=config.dtype, device=batch["inputs"].device)
    z_L = torch.zeros_like(z_H)
    inner.reset_latents(z_H, z_L, torch.ones(n, dtype=torch.bool, device=z_H.device), sampler)
    best = torch.full((n,), -float("inf"), device=z_H.device)
    for _ in range(depth - 1):
        z_H, z_L, _, q = inner(z_H, z_L, batch["inputs"], sampler)
        q_continue = inner.q_continue(z_H)
        best = torch.maximum(best, q.float() - (0 if q_continue is None else q_continue))
    return float(torch.quantile(best, 1 - share))


def bench_elastic(config, batch_size, args, device) -> dict:
    """The elastic pool (evaluation/pool.py) against the one-pass grid at the same depth cap, on the same
    random-weight model and batches, through scripts/benchmark_elastic.py's comparison (eager, keyed)."""
    from scripts.benchmark_elastic import compare

    depth, count = ELASTIC["quick" if args.quick else "full"]
    torch.manual_seed(0)
    inner = RecurrentReasoner(config).to(device).eval().inner
    with torch.no_grad():  # the halting head starts at zero weights (q = -5 everywhere): give it random ones
        inner.q_head.weight.copy_(torch.randn(inner.q_head.weight.shape, generator=torch.Generator().manual_seed(2))
                                  * config.hidden_size ** -0.5)
    generator = torch.Generator().manual_seed(1)
    batches = []
    for i in range(count):
        batch = random_batch(config, batch_size, device, generator)
        batch.update(index=torch.arange(i * batch_size, (i + 1) * batch_size, device=device),
                     mask=torch.ones(batch_size, dtype=torch.bool, device=device))
        batches.append(batch)
    threshold = halting_threshold(inner, batches[0], depth, ELASTIC_HALT_SHARE, seed=0)
    row = compare(inner, batches, depth, 1, (HaltRule(threshold),), batch_size, seed=0)
    nfe = next(iter(row["nfe_per_puzzle"].values()))
    return {"elastic_depth": depth, "elastic_puzzles": row["puzzles"], "elastic_threshold": threshold,
            "elastic_grid_puzzles_per_s": row["grid_puzzles_per_s"], "elastic_pool_puzzles_per_s": row["pool_puzzles_per_s"],
            "elastic_speedup": row["pool_puzzles_per_s"] / row["grid_puzzles_per_s"],
            "elastic_nfe_ratio": depth * config.blocks_per_step / nfe,  # grid NFE over the pool's, per puzzle
            "elastic_rows_ratio": row["grid_row_steps"] / row["pool_row_steps"], "elastic_same_counts": row["same_counts"]}


def batch_sizes(name: str, cfg: dict, args, device) -> tuple[int, int]:
    train, evaluation = cfg["global_batch_size"], cfg["eval_batch_size"] or cfg["global_batch_size"]
    if device.type == "cpu" and not name.endswith("_cpu"):
        train, evaluation = CPU_BATCH["quick" if args.quick else "full"]
    elif args.quick:
        train, evaluation = min(train, 8), min(evaluation, 16)
    return args.train_batch or train, args.eval_batch or evaluation


# ----------------------------------------------------------------------------- start-up

def startup_time(preset: str, data_dir: str, device: torch.device, threads: int | None) -> float:
    """Seconds from launching pretrain.py (max_steps=1, no evaluation) until it exits after its first step.

    The time includes Python and torch start-up, Hydra composition, building the model and
    optimizer, one training step and writing the final checkpoint.
    """
    with tempfile.TemporaryDirectory() as run_dir:
        cmd = [sys.executable, os.path.join(ROOT, "pretrain.py"), "--config-name", f"train/{preset}",
               f"data_path={data_dir}", f"checkpoint_path={run_dir}/run", "max_steps=1", "global_batch_size=8",
               "eval_interval_steps=null", "wandb_mode=disabled", f"device={device.type}", "compile=false"]
        env = dict(os.environ)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BenchmarkError(f"pretrain.py --config-name train/{preset} failed (exit {done.returncode}): {last}")
    return seconds


def tiny_sudoku_set(folder: str) -> str:
    from dataset import build_sudoku_dataset

    path = os.path.join(folder, "sudoku-tiny")
    with open(os.devnull, "w") as devnull:  # the builder's progress output is not part of the report
        saved, sys.stdout, sys.stderr = (sys.stdout, sys.stderr), devnull, devnull
        try:
            build_sudoku_dataset.main(["--output-dir", path, "--generate", "16", "--generate-test", "4",
                                       "--num-aug", "0", "--min-givens", "40", "--seed", "0"])
        finally:
            sys.stdout, sys.stderr = saved
    return path


# ----------------------------------------------------------------------------- report

def machine_info(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu": platform.processor() or "", "cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        info["cpu"] = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), info["cpu"])
        flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
        info["bf16_matrix_units"] = sorted(f for f in flags if f in ("avx512_bf16", "amx_bf16", "avx_ne_convert"))
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def print_table(results: dict) -> None:
    peak = results["peak_tflops"]
    print(f"matmul peak: float32 {peak['float32']:.3f} TFLOP/s, bfloat16 {peak['bfloat16']:.3f} TFLOP/s")
    if results["memory_before_presets_mb"] is not None:
        print(f"memory before any preset: {results['memory_before_presets_mb']:.0f} MB (peaks below include it)")
    print(f"{'preset':<16} {'path':<8} {'train b':>7} {'step s':>8} {'MFU':>6} {'mem MB':>7} | {'eval b':>6} {'step s':>8} "
          f"{'traj-steps/s':>12} {'MFU':>6} {'mem MB':>7} | {'keyed s':>8} {'keyed %':>7}")
    for name, row in results["presets"].items():
        for path, r in (("eager", row), ("compiled", row.get("compiled"))):
            if r is None:
                continue
            print(f"{name:<16} {path:<8} {r['train_batch']:>7} {r['train_step_s']:>8.3f} {r['train_mfu']:>6.1%} "
                  f"{r['train_peak_mem_mb']:>7.0f} | {r['eval_batch']:>6} {r['eval_step_s']:>8.3f} "
                  f"{r['eval_trajectory_steps_per_s']:>12.1f} {r['eval_mfu']:>6.1%} {r['eval_peak_mem_mb']:>7.0f} | "
                  f"{r['eval_keyed_step_s']:>8.3f} {r['keyed_rng_share']:>7.1%}")
    print(f"elastic pool vs one-pass grid (eager, keyed, random weights and a random halting head, one rule q > threshold set so "
          f"that {ELASTIC_HALT_SHARE:.0%} of the first batch's trajectories halt before the cap; pool = one eval batch of slots):")
    print(f"{'preset':<16} {'D':>4} {'puzzles':>7} {'threshold':>9} {'grid p/s':>9} {'pool p/s':>9} {'pool/grid':>9} "
          f"{'NFE grid/pool':>13} {'rows grid/pool':>14} {'same':>5}")
    for name, r in results["presets"].items():
        print(f"{name:<16} {r['elastic_depth']:>4} {r['elastic_puzzles']:>7} {r['elastic_threshold']:>9.3f} "
              f"{r['elastic_grid_puzzles_per_s']:>9.2f} {r['elastic_pool_puzzles_per_s']:>9.2f} {r['elastic_speedup']:>9.3f} "
              f"{r['elastic_nfe_ratio']:>13.3f} {r['elastic_rows_ratio']:>14.3f} {str(r['elastic_same_counts']):>5}")
    print("keyed %: share of an eval step (rng=keyed, evaluate.py's default) spent on keyed draws rather than torch's generator")
    for name, seconds in results["startup_s"].items():
        print(f"start-up to first finished step ({name}): {seconds:.2f} s")
    print(f"load average (1 min) before {results['load_average']['before']:.2f}, after {results['load_average']['after']:.2f}")
    for name, t in results["targets"].items():
        print(f"target {name}: {t['value']:.3g} (target {t['target']}) {'met' if t['met'] else 'NOT met'}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--quick", action="store_true",
                        help="small batches and few repeats (a smoke run); unless --dtype is given, each preset in the "
                             "dtype pretrain.py would pick (auto: float32 on a CPU without bf16 units)")
    parser.add_argument("--out", default="benchmark_results.json", help="JSON file, written atomically")
    parser.add_argument("--presets", nargs="+", default=PRESETS, help="names from config/train")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: 1 with --quick on CPU, else torch's choice)")
    parser.add_argument("--train-batch", type=int, default=None, help="training batch for every preset")
    parser.add_argument("--eval-batch", type=int, default=None, help="evaluation batch for every preset")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls, median reported (default 2 quick, 3 full)")
    parser.add_argument("--dtype", default=None, help="override every preset's forward_dtype (auto: as pretrain.py picks it)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="also time the torch.compile'd core (default: on CUDA only; compiling on a CPU takes minutes)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend for the compiled figures (aot_eager: capture only, for tests)")
    parser.add_argument("--startup-presets", nargs="*", default=["eqr_sudoku", "eqr_sudoku_cpu"],
                        help="presets whose pretrain.py start-up is timed (none: skip)")
    args = parser.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else 1
    args.repeats = args.repeats if args.repeats is not None else (2 if args.quick else 3)
    if args.quick and args.dtype is None:  # bfloat16 on a CPU without bf16 units would make the smoke run ~10x slower
        args.dtype = "auto"
    if args.threads is None and args.quick and args.device == "cpu":
        args.threads = 1  # a smoke run must stay fast on a shared machine, where a second thread can stall every op
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (BenchmarkError, RunError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args) -> int:
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        raise BenchmarkError(f"--device: expected cpu or cuda, got {args.device!r}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchmarkError("--device cuda: no CUDA device is visible to torch")
    unknown = [p for p in args.presets + args.startup_presets if not os.path.isfile(os.path.join(ROOT, "config", "train", f"{p}.yaml"))]
    if unknown:
        raise BenchmarkError(f"--presets: config/train/{unknown[0]}.yaml does not exist")
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # the float32 peak is that of true float32

    n = 8192 if device.type == "cuda" else 2048
    seconds = 1.0 if args.quick else 4.0
    load_before = os.getloadavg()
    if device.type == "cpu" and load_before[0] + torch.get_num_threads() > (os.cpu_count() or 1) + 0.5:
        # Each parallel op waits for its slowest thread; a thread sharing a core with another job stalls them all.
        print(f"warning: load average {load_before[0]:.2f} with {torch.get_num_threads()} threads on {os.cpu_count()} cores: "
              "other jobs will distort the figures (use --threads 1, or wait for a quiet machine)", file=sys.stderr)
    peak = {name: matmul_peak(getattr(torch, name), n, seconds, device) for name in ("float32", "bfloat16")}
    results = {"machine": machine_info(device), "settings": {k: v for k, v in vars(args).items() if k != "out"},
               "peak_tflops": {k: v / 1e12 for k, v in peak.items()}, "presets": {}, "startup_s": {}}
    memory = PeakMemory(device)
    results["memory_before_presets_mb"] = memory.current()  # on CPU mostly torch's own libraries
    results["settings"]["peak_memory"] = ("cuda max_memory_allocated" if device.type == "cuda" else
                                          "VmHWM (peak RSS), reset per measurement" if memory.resettable else "ru_maxrss (process peak)")

    compile_too = args.compile if args.compile is not None else device.type == "cuda"
    for name in args.presets:
        config, cfg = load_preset(name, args.dtype, device)
        train_batch, eval_batch = batch_sizes(name, cfg, args, device)
        flops = step_flops(config)
        dtype_peak = peak["float32" if config.forward_dtype == "float32" else "bfloat16"]
        row = {"forward_dtype": config.forward_dtype, "params": sum(p.numel() for p in RecurrentReasoner(config).parameters()),
               "flops_per_row_forward": flops["forward"], "flops_per_row_train": flops["train"]}
        row.update(bench_preset(config, cfg, train_batch, eval_batch, args, device, memory, dtype_peak, compiled=False))
        row.update(bench_elastic(config, eval_batch, args, device))
        if compile_too:
            row["compiled"] = bench_preset(config, cfg, train_batch, eval_batch, args, device, memory, dtype_peak,
                                           compiled=True)
        results["presets"][name] = row
        print(f"{name}: train {row['train_step_s']:.3f} s/step (batch {train_batch}), "
              f"eval {row['eval_trajectory_steps_per_s']:.1f} trajectory-steps/s (batch {eval_batch})"
              + (f"; compiled: train {row['compiled']['train_step_s']:.3f} s/step, eval "
                 f"{row['compiled']['eval_trajectory_steps_per_s']:.1f} trajectory-steps/s" if compile_too else ""),
              file=sys.stderr)

    if args.startup_presets:
        with tempfile.TemporaryDirectory() as folder:
            data_dir = tiny_sudoku_set(folder)
            for preset in args.startup_presets:
                results["startup_s"][preset] = startup_time(preset, data_dir, device, args.threads)

    targets = {}
    sudoku = results["presets"].get("eqr_sudoku")
    if sudoku and device.type == "cpu":
        targets["eqr_sudoku eval MFU (CPU, of bf16 peak)"] = (sudoku["eval_mfu"], TARGETS["eval_mfu"], True)
        targets["eqr_sudoku train MFU (CPU, of bf16 peak)"] = (sudoku["train_mfu"], TARGETS["train_mfu"], True)
    if device.type == "cuda":
        for preset, row in results["presets"].items():
            default = row.get("compiled", row)
            if preset in GPU_TARGETS:
                targets[f"{preset} train MFU (CUDA, of bf16 peak)"] = (default["train_mfu"], GPU_TARGETS[preset], True)
                targets[f"{preset} eval MFU (CUDA, of bf16 peak)"] = (default["eval_mfu"], GPU_TARGETS[preset], True)
            targets[f"{preset} keyed RNG share of an eval step"] = (default["keyed_rng_share"], GPU_TARGETS["keyed_rng_share"], False)
    for preset, seconds in results["startup_s"].items():
        targets[f"start-up {preset} (s)"] = (seconds, TARGETS["startup_s"], False)
    results["load_average"] = {"before": load_before[0], "after": os.getloadavg()[0]}
    results["targets"] = {k: {"value": v, "target": t, "met": v >= t if higher else v <= t}
                          for k, (v, t, higher) in targets.items()}
    atomic_write(args.out, json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
