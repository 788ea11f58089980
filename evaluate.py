"""Evaluate a checkpoint over depth D (supervision steps) and breadth B (trajectories per puzzle).

    python evaluate.py checkpoint=PATH [key=value ...]          # one process (CPU or one GPU)
    torchrun --nproc-per-node N evaluate.py checkpoint=PATH ...  # the test split sharded over N ranks

One cell, as the reference:  halt_max_steps=64 different_init=128 convergence_top_k=1 global_batch_size=16
A grid, in ONE pass:         depths=[1,2,4,8,16,32,64] breadths=[1,4,16,64,128]   (or eval=paper_grid)
Halting rules in the grid:   halt=true [halt_threshold=[0,1] halt_confirm_steps=[0,2] halt_confirm_mode=consecutive]
Elastic inference (the pool): act_inference=true halt_max_steps=256 [halting keys as above]  (or eval=elastic)
The authors' form:           eval_yaml=config/eval/depth_breadth.yaml dataset_data_path=DATA   (scripts/eval.sh)
Keys and defaults: config/cfg_eval.yaml; metrics and outputs: docs/evaluation.md.
Writes results.json, results.csv and PNG plots to output_dir (save_outputs=true: also predictions.npz);
resume=true continues a killed sweep. With plots=true, render_examples=N also draws N solved and N failed
puzzles (examples_*.png).
"""
import math
import sys

from config import answer_help, help_text

HELP_PRESETS = {"eval": "eval=NAME"}
answer_help("evaluate", __doc__, "cfg_eval", HELP_PRESETS)  # before torch is imported

import os
import signal
import time
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.distributed as dist

from config import compose_eval_config
from dataset.common import DatasetError, load_metadata
from dataset.puzzle_dataset import iter_test_batches, num_test_batches, num_test_examples
from evaluation import predictions, render, report, residuals
from evaluation.grid import (GridSpec, fingerprint, fresh_init_std, memory_lower_bound, partial_path, remove_partial,
                             resume_partial, row_keys, run_batch, save_partial)
from evaluation.keyed_rng import KeyedSampler
from evaluation.pool import elastic_batches
from models.halting import rules_from
from models.checkpoint import load_for_eval
from models.eqr import ConfigError, TorchSampler, compile_core
from utils.constants import IGNORE_LABEL_ID
from utils.errors import CheckpointError, RunError
from utils.files import check_writable, hold_folder, os_error_line, release_folders
from utils.processes import broadcast, close_processes, free_memory, resolve_forward_dtype, report_error, setup_processes
from utils.typecheck import check_range, check_types

KILL_AFTER_ENV = "EQR_EVAL_KILL_AFTER_BATCHES"  # testing aid: SIGKILL this process after N batches


@dataclass
class EvalConfig:
    checkpoint: str
    trust_checkpoint: bool
    data_path: str | None
    split: str
    output_dir: str | None
    device: str | None
    forward_dtype: str | None
    threads: int | None
    compile: bool | None
    halt_max_steps: int | None
    different_init: int | None
    different_init_reset_std: float | None
    depths: list | None
    breadths: list | None
    convergence_top_k: int
    convergence_window: int
    halt: bool
    act_inference: bool | None
    halt_threshold: float | list | None
    halt_confirm_steps: int | list | None
    halt_confirm_mode: str | list | None
    halt_min_steps: int | list
    pool_size: int | None
    global_batch_size: int | None
    max_eval_steps: int | None
    seed: int | None
    rng: str
    resume: bool
    save_every_batches: int
    save_every_seconds: float
    plots: bool
    render_examples: int
    progress: bool
    save_outputs: bool

    def __post_init__(self):
        check_types(self)
        check_range("", "save_every_seconds", self.save_every_seconds, low=0, low_open=True)
        if self.different_init_reset_std is not None:
            check_range("", "different_init_reset_std", self.different_init_reset_std, low=0, low_open=True)
        if not isinstance(self.checkpoint, str) or not self.checkpoint:
            raise ConfigError(f"checkpoint: expected a file path or hf:// URI, got {self.checkpoint!r}")
        if self.rng not in ("keyed", "torch"):
            raise ConfigError(f"rng: expected keyed or torch, got {self.rng!r}")
        for key in ("halt_max_steps", "different_init", "global_batch_size", "max_eval_steps", "threads", "pool_size"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{key}: expected a positive integer or null, got {value!r}")
        if not isinstance(self.render_examples, int) or self.render_examples < 0:
            raise ConfigError(f"render_examples: expected an integer >= 0, got {self.render_examples!r}")
        for key in ("convergence_top_k", "convergence_window", "save_every_batches"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ConfigError(f"{key}: expected a positive integer, got {getattr(self, key)!r}")
        for key in ("depths", "breadths"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, list) or not value
                                      or any(not isinstance(v, int) or v < 1 for v in value)):
                raise ConfigError(f"{key}: expected a list of positive integers such as [1,2,4], got {value!r}")
        if self.depths and self.halt_max_steps is not None and self.halt_max_steps != max(self.depths):
            raise ConfigError(f"halt_max_steps: {self.halt_max_steps} disagrees with max(depths) = {max(self.depths)}")
        if self.breadths and self.different_init not in (None, 1, max(self.breadths)):
            raise ConfigError(f"different_init: {self.different_init} disagrees with max(breadths) = {max(self.breadths)}")
        if self.act_inference and self.depths and len(self.depths) > 1:
            raise ConfigError(f"depths: act_inference runs to one depth cap (halt_max_steps), got depths={self.depths}")
        if self.act_inference and self.save_outputs:
            raise ConfigError("save_outputs: not available with act_inference (run the grid with halt=true instead)")
        if self.resume and not self.output_dir:
            raise ConfigError("resume: needs output_dir=<the folder of the sweep to continue>")


def parse_config(cfg: dict) -> EvalConfig:
    cfg.pop("eval", None)
    known = {f.name for f in fields(EvalConfig)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown config key (see config/cfg_eval.yaml for the known keys)")
    return EvalConfig(**cfg)


# ----------------------------------------------------------------------------- set-up

def checkpoint_name(uri: str) -> str:
    """'hf://locuslab/EqR-model/sudoku-extreme/eqr.pth' -> 'sudoku-extreme_eqr'."""
    parts = uri.rstrip("/").split("/")
    stem = os.path.splitext(parts[-1])[0]
    parent = parts[-2] if len(parts) > 1 and parts[-2] not in ("", ".", "hf:") else ""
    return f"{parent}_{stem}" if parent else stem


def train_setting(train_config: dict, key: str):
    """A training config value, in our layout or the reference's (dataset.data_path)."""
    if train_config.get(key) is not None:
        return train_config[key]
    if key == "data_path":
        return (train_config.get("dataset") or {}).get("data_path")
    return None


def dataset_for(data_path: str | None, train_config: dict, split: str, model_config):
    """The dataset to run on (the one given, else the checkpoint's), checked against the model's shapes
    -> (its path, its split's metadata)."""
    data_path = data_path or train_setting(train_config, "data_path")
    if not data_path:
        raise ConfigError("data_path: the checkpoint does not record its dataset; pass data_path=<dataset folder>")
    meta = load_metadata(data_path, split)
    for key in ("seq_len", "vocab_size"):
        if getattr(meta, key) != getattr(model_config, key):
            raise ConfigError(f"data_path: {data_path} has {key} {getattr(meta, key)}, "
                              f"the checkpoint's model {getattr(model_config, key)}")
    return data_path, meta


def elastic(cfg: EvalConfig, model_config) -> bool:
    """Whether to run the elastic pool: act_inference, else the checkpoint's arch.act_inference."""
    return bool(model_config.act_inference if cfg.act_inference is None else cfg.act_inference)


def grid_spec(cfg: EvalConfig, model_config) -> GridSpec:
    depths = cfg.depths or [cfg.halt_max_steps or model_config.halt_max_steps]
    breadths = cfg.breadths or [cfg.different_init or 1]
    pool = elastic(cfg, model_config)
    own = lambda key: getattr(model_config, key) if getattr(cfg, key) is None else getattr(cfg, key)  # null: arch's
    rules = rules_from(own("halt_threshold"), own("halt_confirm_steps"), own("halt_confirm_mode"),
                       cfg.halt_min_steps) if cfg.halt or pool else ()
    return GridSpec(depths=tuple(sorted(set(depths))), breadths=tuple(sorted(set(breadths))),
                    blocks_per_step=model_config.blocks_per_step, top_k=cfg.convergence_top_k,
                    window=cfg.convergence_window, halt=bool(rules), halt_rules=rules, elastic=pool,
                    fresh_init_std=fresh_init_std(model_config, cfg.different_init_reset_std))


def pool_rows(cfg: EvalConfig, spec: GridSpec, global_batch_size: int, world_size: int) -> int:
    """The elastic pool's slots per process: pool_size, else as many rows as a grid batch runs."""
    return cfg.pool_size or global_batch_size // world_size * spec.rows_per_puzzle


def check_memory(model_config, spec: GridSpec, global_batch_size: int, world_size: int, device: torch.device,
                 pool_size: int | None = None) -> None:
    """Refuse, before allocating, a batch x breadth (or an elastic pool) whose latents alone exceed the free memory."""
    free = free_memory(device)
    per_puzzle = memory_lower_bound(model_config, spec.rows_per_puzzle)
    need = per_puzzle * (global_batch_size // world_size)
    if pool_size and memory_lower_bound(model_config, pool_size) > (free or math.inf):
        raise ConfigError(f"pool_size: {pool_size} slots need at least {memory_lower_bound(model_config, pool_size) / 2**30:.1f} "
                          f"GiB, {free / 2**30:.1f} GiB is free on {device}")
    if free is None or need <= free:
        return
    fits = free // per_puzzle * world_size
    advice = (f"the largest global_batch_size that could fit is {fits}" if fits >= world_size else
              f"even one puzzle per process does not fit at breadth {spec.max_breadth}; lower the breadth")
    raise ConfigError(f"global_batch_size: {global_batch_size} puzzles x {spec.max_breadth} trajectories need at least "
                      f"{need / 2**30:.1f} GiB per process, {free / 2**30:.1f} GiB is free on {device}; {advice}")


def load_model(checkpoint: str, trust: bool, forward_dtype: str | None, device: torch.device, world_size: int,
               data_meta=None):
    """load_for_eval in the dtype to run: forward_dtype as given (auto: the device's native one), or the checkpoint's,
    except that a bfloat16 checkpoint on a device without bf16 units runs in float32 (one notice says so)."""
    def load(dtype):
        return load_for_eval(checkpoint, trust_checkpoint=trust, data_seq_len=data_meta.seq_len if data_meta else None,
                             data_vocab_size=data_meta.vocab_size if data_meta else None,
                             overrides={"forward_dtype": dtype} if dtype else None)

    head, info = load(resolve_forward_dtype(forward_dtype, device, world_size))
    if forward_dtype is None and head.model.config.forward_dtype == "bfloat16":
        dtype = resolve_forward_dtype("bfloat16", device, world_size, typed=False)
        if dtype != "bfloat16":
            head, info = load(dtype)
    return head, info


def make_sampler(cfg: EvalConfig, seed: int, batch: dict, spec: GridSpec):
    if cfg.rng == "torch":
        return TorchSampler()
    return KeyedSampler(seed, *row_keys(spec, batch["index"]))


def keep_examples(shown: dict, batch: dict, answers: dict, limit: int) -> None:
    """Add this batch's first solved and failed puzzles to shown["solved"] / ["failed"], up to `limit` each."""
    labels = batch["labels"].cpu().numpy()
    for row in torch.nonzero(batch["mask"]).flatten().tolist():
        answer = answers["answer"][row].cpu().numpy()
        label = labels[row]
        label = np.where(label == IGNORE_LABEL_ID, answer, label)  # unlabelled cells count as right
        wrong = int((answer != label).sum())
        kept = shown["failed" if wrong else "solved"]
        if len(kept) < limit:
            kept.append({"inputs": batch["inputs"][row].cpu().numpy(), "answer": answer, "label": label,
                         "caption": f"#{int(batch['index'][row])}: " + (f"{wrong} cell{'s' * (wrong > 1)} wrong" if wrong else "solved")})


# ----------------------------------------------------------------------------- the run

def evaluate(cfg: EvalConfig, rank: int, world_size: int, device: torch.device) -> dict | None:
    """Run the grid; rank 0 writes the outputs and returns the results dict (other ranks: None)."""
    data_meta = load_metadata(cfg.data_path, cfg.split) if cfg.data_path else None
    head, info = load_model(cfg.checkpoint, cfg.trust_checkpoint, cfg.forward_dtype, device, world_size, data_meta)
    model_config = head.model.config
    inner = head.model.inner.to(device).eval()
    broken = [name for name, p in head.named_parameters() if not torch.isfinite(p).all()]
    if broken and rank == 0:
        print(f"warning: {cfg.checkpoint}: {len(broken)} weight tensor(s) hold NaN or inf ({broken[0]} first); "
              f"the training run diverged before this checkpoint and its answers are meaningless", file=sys.stderr)
    compiled = compile_core(inner, cfg.compile, device)
    train_config = info["train_config"]

    data_path, meta = dataset_for(cfg.data_path, train_config, cfg.split, model_config)
    global_batch_size = cfg.global_batch_size or train_setting(train_config, "global_batch_size")
    if not global_batch_size:
        raise ConfigError("global_batch_size: the checkpoint does not record one; pass global_batch_size=N")
    if global_batch_size % world_size:
        raise ConfigError(f"global_batch_size: {global_batch_size} does not split over {world_size} processes")
    seed = cfg.seed if cfg.seed is not None else int(train_setting(train_config, "seed") or 0)
    spec = grid_spec(cfg, model_config)
    pool_size = pool_rows(cfg, spec, global_batch_size, world_size) if spec.elastic else None
    check_memory(model_config, spec, global_batch_size, world_size, device, pool_size)
    max_examples = cfg.max_eval_steps * global_batch_size if cfg.max_eval_steps else None
    num_batches = num_test_batches(data_path, global_batch_size, cfg.split, max_examples)
    examples = num_test_examples(data_path, cfg.split, max_examples)
    if examples == 0:
        raise ConfigError(f"data_path: {data_path}/{cfg.split} holds no puzzles; there is nothing to evaluate")

    identity = {"checkpoint_sha256": info["sha256"], "data_path": os.path.abspath(data_path), "split": cfg.split,
                "examples": examples, "global_batch_size": global_batch_size, "world_size": world_size,
                "seed": seed, "rng": cfg.rng, "spec": spec.to_dict(), "model": model_config.to_dict(),
                "device_type": device.type, "save_outputs": cfg.save_outputs,
                "counts_size": spec.size}  # a partial file of another count layout is refused, not misread
    output_dir = broadcast(cfg.output_dir or os.path.join(
        "eval_results", f"{checkpoint_name(cfg.checkpoint)}_{time.strftime('%Y%m%d-%H%M%S')}"), world_size)

    # Resume this rank's shard of the sweep, or refuse to overwrite one.
    counts = torch.zeros(spec.size, dtype=torch.long, device=device)
    start_batch, seconds_before, depth_seconds = 0, 0.0, [0.0] * len(spec.depths)
    check_writable(output_dir, "output_dir")  # now, not after the sweep
    if rank == 0:
        hold_folder(output_dir, "output_dir")
    own_partial = partial_path(output_dir, rank, world_size)
    state = resume_partial(output_dir, rank, world_size, identity, cfg.resume, "results.json")
    if state is not None:
        counts += state["counts"].to(device)
        start_batch, seconds_before, depth_seconds = state["next_batch"], state["seconds"], state["depth_seconds"]
    if cfg.rng == "torch":
        torch.manual_seed(seed + rank)
    writer = predictions.ShardWriter(output_dir, rank, world_size, start_batch, meta.vocab_size) if cfg.save_outputs else None

    if rank == 0:
        print(f"evaluating {info['uri']} (step {info['step']}, sha256 {info['sha256'][:12]}, "
              f"{'EMA' if info['ema'] else 'raw'} weights) on {data_path}/{cfg.split}: {examples} puzzles, "
              f"depths {list(spec.depths)} x breadths {list(spec.breadths)}, {model_config.forward_dtype}, "
              f"{world_size} process(es) on {device.type}"
              + (f" with {torch.get_num_threads()} thread(s)" if device.type == "cpu" else "")
              + (f", elastic pool of {pool_size} slots, {len(spec.halting_rules)} halting rule(s)" if pool_size else "")
              + (", compiled" if compiled else ", eager")
              + (f", resuming at batch {start_batch}/{num_batches}" if start_batch else ""), file=sys.stderr)
    from tqdm import tqdm
    bar = tqdm(total=examples, initial=min(start_batch * global_batch_size, examples), unit="puzzle",
               desc=f"eval D{spec.max_depth} B{spec.max_breadth}", disable=rank != 0 or not cfg.progress,
               dynamic_ncols=True, smoothing=0.1)
    kill_after = int(os.environ.get(KILL_AFTER_ENV, 0))
    task = render.task_of(model_config.vocab_size, model_config.seq_len)
    shown = {"task": task, "solved": [], "failed": []}  # rank 0's first answers at the largest cell, to draw
    want_shown = rank == 0 and cfg.plots and cfg.render_examples > 0 and task is not None
    started = last_save = time.time()
    cpu_started = time.process_time()
    batch_index = start_batch
    batches = ((i, {k: v.to(device) for k, v in batch.items()}) for i, batch in enumerate(iter_test_batches(
        data_path, global_batch_size, rank, world_size, cfg.split, max_examples, start_batch=start_batch), start=start_batch))
    pool_stats = {}
    if spec.elastic:
        slots = torch.zeros(pool_size, dtype=torch.long, device=device)
        sampler = TorchSampler() if cfg.rng == "torch" else KeyedSampler(seed, slots, slots)
        outcomes = ((i, batch, cells, hist, [0.0], None)
                   for i, batch, cells, hist in elastic_batches(inner, batches, spec, pool_size, sampler, pool_stats))
    else:
        outcomes = ((i, batch, *run_batch(inner, batch, spec, make_sampler(cfg, seed, batch, spec),
                                          residuals=spec.residual_parts(counts))) for i, batch in batches)
    for batch_index, batch, cells, hist, seconds, headline in outcomes:
        if want_shown and headline and min(len(shown["solved"]), len(shown["failed"])) < cfg.render_examples:
            keep_examples(shown, batch, headline, cfg.render_examples)
        for total, part in zip(spec.split(counts), (cells, hist)):  # run_batch adds the residuals itself
            total += part
        if writer:
            writer.add(batch, headline)
        depth_seconds = [a + b for a, b in zip(depth_seconds, seconds)]
        bar.update(max(0, min(global_batch_size, examples - batch_index * global_batch_size)))
        done = batch_index + 1
        if done < num_batches and (done % cfg.save_every_batches == 0 or time.time() - last_save > cfg.save_every_seconds):
            if writer:  # first the predictions, then the counts that say how far they go
                writer.flush(done)
            save_partial(own_partial, identity, done, counts, seconds_before + time.time() - started, depth_seconds)
            last_save = time.time()
        if kill_after and done - start_batch >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    bar.close()
    wall = seconds_before + time.time() - started
    pool_stats["cpu_time_s"] = time.process_time() - cpu_started  # this process's share (since a resume)
    if writer:
        writer.flush(num_batches)

    if world_size > 1:  # the one reduction of the run (every rank has flushed its predictions before it)
        dist.all_reduce(counts)
    results = None
    if rank == 0:
        if writer:
            d, b = spec.max_depth, spec.max_breadth
            predictions.merge(output_dir, world_size, examples, d, b, spec.headline_rule(d, b))
        results = write_outputs(output_dir, cfg, spec, counts.cpu(), info, identity, wall, depth_seconds, device, shown,
                                {**pool_stats, "pool_size": pool_size})
    remove_partial(output_dir, rank, world_size)  # the finished results replace the partial counts
    return results


def write_outputs(output_dir, cfg, spec, counts, info, identity, wall, depth_seconds, device, shown, pool) -> dict:
    cells, hist = spec.split(counts)
    rows = report.build_rows(spec, cells, hist, depth_seconds)
    res_parts = spec.residual_parts(counts)
    res_rows = residuals.rows(spec, *res_parts) if res_parts else None
    puzzles = int(cells[0, 0, 0, 1])
    d, b = spec.max_depth, spec.max_breadth
    rule = spec.headline_rule(d, b)
    head = report.find(rows, d, b, rule)
    results = {
        "format": "eqr-eval/1",
        "headline": {"metric": "exact_accuracy", "depth": d, "breadth": b, "rule": rule,
                     "description": report.rule_text(spec, rule), "accuracy": head["accuracy"],
                     "correct": head["correct"], "total": head["total"]},
        "checkpoint": {k: info[k] for k in ("uri", "source", "sha256", "format", "step", "ema")},
        "data": {"path": identity["data_path"], "split": identity["split"], "puzzles": puzzles},
        "config": asdict(cfg),
        "grid": spec.to_dict(),
        "rules": spec.rules,
        "halt_rules": [dict(r.to_dict(), suffix=suffix, label=r.label) for r, suffix in zip(spec.halting_rules, spec.halt_suffixes)],
        "cpu_time_s": pool.pop("cpu_time_s"),  # rank 0's CPU time in the loop (all threads), since a resume
        "elastic": pool if spec.elastic else None,  # rank 0's pool: steps, slot_steps (rows run), busy_steps (rows with work)
        "config_fingerprint": fingerprint(identity),
        "identity": identity,
        "world_size": identity["world_size"],
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "wall_time_s": wall,
        "puzzles_per_s": puzzles / wall if wall > 0 else None,
        "time_to_depth_s": dict(zip(map(str, spec.depths), depth_seconds)),
        "predictions": predictions.FILE_NAME if cfg.save_outputs else None,
        "notes": "B>1 figures count real puzzles only (the reference also counts the padding rows of the last "
                 "test batch as solved); token accuracy is pooled over labelled tokens.",
        "rows": rows,
        "residuals": res_rows,  # per (depth, breadth, group): docs/evaluation.md, "Fixed-point residuals"
        "counts": {"fields": ["correct", "total", "token_correct", "token_total", "nfe"],
                   "cells": cells.tolist(), "pass_histograms": hist.tolist()},
    }
    if res_parts:
        results["counts"].update(residual_fields=list(residuals.FIELDS), residual_scale=residuals.SCALE,
                                 residual_sums=res_parts[0].tolist(),
                                 residual_histograms=residuals.sparse_histograms(res_parts[1]))
    extra = {"checkpoint_sha256": info["sha256"], "config_fingerprint": results["config_fingerprint"],
             "pass_wall_time_s": wall}
    os.makedirs(output_dir, exist_ok=True)
    report.write_csv(os.path.join(output_dir, "results.csv"), rows, extra)
    if cfg.plots:
        report.write_plots(output_dir, spec, rows, checkpoint_name(cfg.checkpoint), puzzles)
        cell = f"{checkpoint_name(cfg.checkpoint)}: D={spec.max_depth} B={spec.max_breadth}, {report.rule_text(spec, rule)}"
        for outcome in ("solved", "failed"):
            if shown[outcome]:
                render.save_examples_png(os.path.join(output_dir, f"examples_{outcome}.png"), shown["task"],
                                         shown[outcome], f"{cell}: {outcome} puzzles")
    # Last: results.json marks the folder finished, so a write that fails before it leaves a resumable sweep.
    report.write_json(os.path.join(output_dir, "results.json"), results)
    print(report.format_table(spec, rows, puzzles))
    if res_rows:
        print("\n" + residuals.format_table(spec, res_rows))
    print(f"\n{puzzles} puzzles in {wall:.1f} s ({results['puzzles_per_s'] or 0:.2f} puzzles/s) on "
          f"{identity['world_size']} process(es); results in {output_dir}/")
    return results


def run_entry(argv: list[str] | None, usage, configure, run) -> int:
    """An entry point's life: --help (usage(overrides) -> text), the checked config (configure(overrides)), its
    processes, run(cfg, rank, world_size, device), and a known error as one `error:` line and exit status 2.
    Shared with diagnose.py and solve.py."""
    argv = sys.argv[1:] if argv is None else argv
    processes = None
    try:
        if any(a in ("-h", "--help") for a in argv):
            print(usage([a for a in argv if not a.startswith("-")]))
            return 0
        flags = [a for a in argv if a.startswith("-")]
        if flags:
            raise ConfigError(f"{flags[0]}: unknown flag (this entry point takes key=value overrides only)")
        cfg = configure(argv)
        processes = setup_processes(cfg.device, cfg.threads)
        run(cfg, processes.rank, processes.world_size, processes.device)
    except (ConfigError, DatasetError, CheckpointError, RunError) as e:
        report_error(e)
        return 2
    except OSError as e:  # a file no check foresaw (a disk that filled, a mount that went away)
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 2
    finally:
        release_folders()
        close_processes(processes)
    return 0


def main(argv: list[str] | None = None) -> int:
    usage = lambda overrides: help_text(__doc__, overrides, "cfg_eval", HELP_PRESETS)
    return run_entry(argv, usage, lambda overrides: parse_config(compose_eval_config(overrides)), evaluate)


if __name__ == "__main__":
    sys.exit(main())
