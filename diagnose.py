"""Trajectory diagnostics: finite-time Lyapunov exponents and state displacement per puzzle, by outcome.

    python diagnose.py checkpoint=PATH data_path=DATA [key=value ...]          # one process
    torchrun --nproc-per-node N diagnose.py checkpoint=PATH data_path=DATA ...  # puzzles sharded over N ranks

Per (puzzle, trajectory), along `depth` segments: the top `lyapunov_k` exponents of the segment map
(evaluation/lyapunov.py), the displacement of (z_H, z_L) after every segment, q_halt and correctness.
Writes diagnostics.csv, summary.json (AUCs, settling, matched and early-prediction measures) and PNG
plots to output_dir; resume=true continues a killed run; summary_only=true output_dir=OUT recomputes
the summary and plots from OUT/diagnostics.csv (another settling rule, more resamples) without tracing.
Keys and defaults: config/cfg_diagnose.yaml; the measures: docs/diagnostics.md. The model runs in
float32 here, tangents included.
"""
import json
import sys

from config import answer_help, help_text

HELP_PRESETS = {}
answer_help("diagnose", __doc__, "cfg_diagnose", HELP_PRESETS)  # before torch is imported

import os
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.distributed as dist

from config import compose_config
from dataset.common import open_split
from dataset.puzzle_dataset import num_test_batches, num_test_examples
from evaluation import diagnostics_summary as summary_file
from evaluation.grid import fresh_init_std
from evaluation.keyed_rng import KeyedSampler, trajectory_keys
from evaluation.lyapunov import trace_batch
from evaluation.report import write_json
from evaluation.setup import checkpoint_name, dataset_for, load_model, train_setting
from evaluation.sweep import Sweep
from utils.constants import IGNORE_LABEL_ID
from utils.entry import run_entry
from utils.errors import ConfigError
from utils.processes import broadcast, exit_process
from utils.typecheck import check_fields, choice, from_config, must, positive, ranged


SUMMARY_FORMAT = "eqr-diagnostics/2"
SUMMARY_KEYS = ("settle_measure", "settle_window", "settle_threshold", "match_segment", "bootstrap_resamples")
# the keys summary_only=true may change; prefix_segments stays the run's (lyap1_prefix was traced over it)
RUN_KEYS = ("checkpoint", "data", "config", "breadth", "noise", "dtype", "world_size", "wall_time_s", "device")


@dataclass
class DiagnoseConfig:
    checkpoint: str = must(bool, "a file path or hf:// URI")
    trust_checkpoint: bool
    data_path: str | None
    split: str
    output_dir: str | None
    device: str | None
    threads: int | None = positive()
    depth: int | None = positive()
    lyapunov_k: int = positive()
    breadth: int = positive()
    different_init_reset_std: float | None = ranged(0, low_open=True)
    max_examples: int | None = positive()
    noise: str = choice("fixed", "off")
    settle_threshold: float | None = ranged(0)
    settle_window: int = positive()
    settle_measure: str = choice("reldisp", "disp")
    match_segment: int | None = positive()
    prefix_segments: int = positive()
    bootstrap_resamples: int = positive()
    summary_only: bool
    global_batch_size: int = positive()
    seed: int | None
    resume: bool
    save_every_batches: int = positive()
    plots: bool
    progress: bool

    def __post_init__(self):
        check_fields(self)
        if self.summary_only and not self.output_dir:
            raise ConfigError("summary_only: needs output_dir=<the folder of the run whose diagnostics.csv to summarise>")
        if self.resume and not self.output_dir:
            raise ConfigError("resume: needs output_dir=<the folder of the run to continue>")


def parse_config(cfg: dict) -> DiagnoseConfig:
    return from_config(DiagnoseConfig, cfg, "config/cfg_diagnose.yaml", "key")


def batch_records(batch: dict, traced: dict, breadth: int) -> dict[str, torch.Tensor]:
    """The real rows of one batch as CPU tensors: puzzle and trajectory numbers, givens and the traced values."""
    real = batch["mask"].repeat_interleave(breadth)
    labelled = (batch["labels"] != IGNORE_LABEL_ID).sum(-1).repeat_interleave(breadth)
    puzzles, trajectories = trajectory_keys(batch["index"], breadth)
    records = {"puzzle": puzzles, "trajectory": trajectories, "givens": labelled - traced["to_fill"], **traced}
    return {name: value[real].cpu() for name, value in records.items()}


def build_table(records: dict[str, torch.Tensor], depth: int, k: int) -> dict[str, np.ndarray]:
    """Per-row records (any order) -> the columns of diagnostics.csv, sorted by (puzzle, trajectory)."""
    order = np.lexsort((records["trajectory"].numpy(), records["puzzle"].numpy()))
    r = {name: value.numpy()[order] for name, value in records.items()}
    table = {"puzzle": r["puzzle"], "trajectory": r["trajectory"], "solved": r["solved"][:, -1].astype(np.int64),
             "givens": r["givens"], "to_fill": r["to_fill"]}
    table.update({f"lyap_{i + 1}": r["lyap"][:, i] for i in range(k)})
    table["lyap_sum"] = r["lyap"].sum(1)  # the growth rate of k-dimensional volumes
    table["lyap1_prefix"] = r["lyap1_prefix"]
    for name in ("disp", "reldisp", "q_halt"):
        table.update({f"{name}_{t + 1}": r[name][:, t] for t in range(depth)})
    table.update({f"solved_{t + 1}": r["solved"][:, t].astype(np.int64) for t in range(depth)})
    assert list(table) == summary_file.columns(depth, k)
    return table


def summarise_table(cfg: DiagnoseConfig, table: dict, depth: int, seed: int) -> dict:
    return summary_file.summarise(table, depth, cfg.prefix_segments, cfg.settle_threshold, cfg.settle_window,
                                  cfg.settle_measure, cfg.match_segment, resamples=cfg.bootstrap_resamples, seed=seed)


def write_summary(cfg: DiagnoseConfig, output_dir: str, result: dict, table: dict, depth: int) -> None:
    if cfg.plots:
        summary_file.write_plots(output_dir, table, depth, cfg.prefix_segments)
    write_json(os.path.join(output_dir, "summary.json"), result)  # last: it marks the folder finished
    print(summary_file.format_summary(result))


def resummarise(cfg: DiagnoseConfig) -> dict:
    """summary_only=true: the summary and plots again from output_dir/diagnostics.csv (e.g. with another
    settling rule), the run's description kept from its summary.json; nothing is traced."""
    table, depth, k = summary_file.read_csv(os.path.join(cfg.output_dir, "diagnostics.csv"))
    if cfg.match_segment is not None and cfg.match_segment > depth:
        raise ConfigError(f"match_segment: expected at most depth ({depth}), got {cfg.match_segment}")
    old_path = os.path.join(cfg.output_dir, "summary.json")
    old = {}
    if os.path.exists(old_path):
        try:
            with open(old_path) as f:
                old = json.load(f)
        except (OSError, ValueError) as e:
            raise ConfigError(f"{old_path}: not readable JSON ({e}); move it away to summarise without it") from None
    cfg = replace(cfg, prefix_segments=int(old.get("config", {}).get("prefix_segments", cfg.prefix_segments)))
    seed = cfg.seed if cfg.seed is not None else int(old.get("seed") or 0)
    result = summarise_table(cfg, table, depth, seed)
    result.update({key: old[key] for key in RUN_KEYS if key in old})
    result.update({"format": SUMMARY_FORMAT, "seed": seed, "lyapunov_k": k,
                   "summary_config": {key: getattr(cfg, key) for key in SUMMARY_KEYS}})
    write_summary(cfg, cfg.output_dir, result, table, depth)
    return result


def diagnose(cfg: DiagnoseConfig, rank: int, world_size: int, device: torch.device) -> dict | None:
    """Trace every puzzle; rank 0 writes the outputs and returns the summary (other ranks: None)."""
    if cfg.summary_only:
        return resummarise(cfg) if rank == 0 else None
    opened = open_split(cfg.data_path, cfg.split) if cfg.data_path else None
    head, info = load_model(cfg.checkpoint, cfg.trust_checkpoint, "float32", device, world_size,
                            opened.meta if opened else None, {"noise_scale": 0.0} if cfg.noise == "off" else None)
    inner = head.model.inner.to(device).eval()
    model_config = inner.config
    data = dataset_for(opened, info["train_config"], cfg.split, model_config)
    data_path = data.data_path
    if cfg.global_batch_size % world_size:
        raise ConfigError(f"global_batch_size: {cfg.global_batch_size} does not split over {world_size} processes")
    depth = cfg.depth or model_config.halt_max_steps
    if cfg.match_segment is not None and cfg.match_segment > depth:
        raise ConfigError(f"match_segment: expected at most depth ({depth}), got {cfg.match_segment}")
    fresh_std = fresh_init_std(model_config, cfg.different_init_reset_std) if cfg.breadth > 1 else None
    state_size = 2 * model_config.seq_len * model_config.hidden_size
    if cfg.lyapunov_k > state_size:
        raise ConfigError(f"lyapunov_k: {cfg.lyapunov_k} exceeds the joint state's dimension {state_size}")
    seed = cfg.seed if cfg.seed is not None else int(train_setting(info["train_config"], "seed") or 0)
    examples = num_test_examples(data, cfg.max_examples)
    if examples == 0:
        raise ConfigError(f"data_path: {data_path}/{cfg.split} holds no puzzles; there is nothing to diagnose")
    num_batches = num_test_batches(data, cfg.global_batch_size, examples)

    identity = {"checkpoint_sha256": info["sha256"], "data_path": os.path.abspath(data_path), "split": cfg.split,
                "examples": examples, "global_batch_size": cfg.global_batch_size, "world_size": world_size,
                "seed": seed, "depth": depth, "lyapunov_k": cfg.lyapunov_k, "breadth": cfg.breadth,
                "fresh_init_std": fresh_std, "noise": cfg.noise, "prefix_segments": cfg.prefix_segments,
                "model": model_config.to_dict(), "device_type": device.type}
    output_dir = broadcast(cfg.output_dir or os.path.join(
        "eval_results", f"{checkpoint_name(cfg.checkpoint)}_diagnostics_{time.strftime('%Y%m%d-%H%M%S')}"), world_size)
    sweep = Sweep(output_dir, identity, rank, world_size, cfg.resume, "summary.json", "diagnostics run")
    parts = [sweep.state["records"]] if sweep.state else []  # per-trajectory records, in batches
    start_batch = sweep.start_batch

    if rank == 0:
        print(f"diagnosing {info['uri']} (step {info['step']}, sha256 {info['sha256'][:12]}) on {data_path}/{cfg.split}: "
              f"{examples} puzzles x {cfg.breadth} trajectories, {depth} segments, {cfg.lyapunov_k} exponents, "
              f"noise {cfg.noise}, float32, {world_size} process(es) on {device.type}"
              + (f", resuming at batch {start_batch}/{num_batches}" if start_batch else ""), file=sys.stderr)

    def carried(done: int) -> dict:
        parts[:] = [{name: torch.cat([p[name] for p in parts]) for name in parts[0]}]
        return {"records": parts[0]}

    for batch_index, batch in sweep.batches(data, cfg.global_batch_size, examples, device, num_batches,
                                            examples, cfg.save_every_batches, progress=cfg.progress,
                                            desc=f"diagnose D{depth} k{cfg.lyapunov_k}"):
        sampler = KeyedSampler(seed, *trajectory_keys(batch["index"], cfg.breadth))
        traced = trace_batch(inner, batch, depth, cfg.lyapunov_k, cfg.breadth, sampler, seed, cfg.prefix_segments,
                             fresh_std)
        parts.append(batch_records(batch, traced, cfg.breadth))
        sweep.advance(batch_index, carried)
    wall = sweep.seconds
    records = {name: torch.cat([p[name] for p in parts]) for name in parts[0]} if parts else {}

    gathered = [records]
    if world_size > 1:
        gathered = [None] * world_size
        dist.all_gather_object(gathered, records)
    result = None
    if rank == 0:
        merged = {name: torch.cat([g[name] for g in gathered if g]) for name in next(g for g in gathered if g)}
        table = build_table(merged, depth, cfg.lyapunov_k)
        result = summarise_table(cfg, table, depth, seed)
        result.update({"format": SUMMARY_FORMAT, "checkpoint": {k: info[k] for k in ("uri", "sha256", "step", "ema")},
                       "data": {"path": identity["data_path"], "split": cfg.split}, "config": asdict(cfg),
                       "lyapunov_k": cfg.lyapunov_k, "breadth": cfg.breadth, "noise": cfg.noise, "dtype": "float32",
                       "seed": seed, "world_size": world_size, "wall_time_s": wall,
                       "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                       "summary_config": {key: getattr(cfg, key) for key in SUMMARY_KEYS}})
        os.makedirs(output_dir, exist_ok=True)
        summary_file.write_csv(os.path.join(output_dir, "diagnostics.csv"), table)
        write_summary(cfg, output_dir, result, table, depth)
        print(f"\n{len(table['puzzle'])} trajectories in {wall:.1f} s on {world_size} process(es); "
              f"results in {output_dir}/")
    sweep.finish()
    return result


def main(argv: list[str] | None = None) -> int:
    return run_entry(argv, lambda args: help_text(__doc__, args, "cfg_diagnose", HELP_PRESETS),
                     lambda _, overrides: parse_config(compose_config("cfg_diagnose", overrides)),
                     lambda cfg, p: diagnose(cfg, p.rank, p.world_size, p.device))


if __name__ == "__main__":
    exit_process(main())
