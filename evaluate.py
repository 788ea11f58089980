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
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.distributed as dist

from config import compose_eval_config
from dataset.common import open_split
from dataset.puzzle_dataset import num_test_batches, num_test_examples
from evaluation import predictions, render, report
from evaluation.grid import GridSpec, fresh_init_std, memory_lower_bound, row_keys, run_batch
from evaluation.keyed_rng import KeyedSampler
from evaluation.pool import elastic_batches
from evaluation.setup import checkpoint_name, dataset_for, load_model, train_setting
from evaluation.sweep import Sweep
from models.halting import rules_from
from models.eqr import TorchSampler, compile_core
from utils.constants import IGNORE_LABEL_ID
from utils.entry import run_entry
from utils.errors import ConfigError
from utils.processes import broadcast, exit_process, free_memory
from utils.typecheck import at_least, check_fields, choice, from_config, must, positive, ranged


@dataclass
class EvalConfig:
    checkpoint: str = must(bool, "a file path or hf:// URI")
    trust_checkpoint: bool
    data_path: str | None
    split: str
    output_dir: str | None
    device: str | None
    forward_dtype: str | None
    threads: int | None = positive()
    compile: bool | None
    halt_max_steps: int | None = positive()
    different_init: int | None = positive()
    different_init_reset_std: float | None = ranged(0, low_open=True)
    depths: list | None = must(lambda v: v and all(isinstance(x, int) and x >= 1 for x in v),
                               "a list of positive integers such as [1,2,4]")
    breadths: list | None = must(lambda v: v and all(isinstance(x, int) and x >= 1 for x in v),
                                 "a list of positive integers such as [1,2,4]")
    convergence_top_k: int = positive()
    convergence_window: int = positive()
    halt: bool
    act_inference: bool | None
    halt_threshold: float | list | None
    halt_confirm_steps: int | list | None
    halt_confirm_mode: str | list | None
    halt_min_steps: int | list
    pool_size: int | None = positive()
    global_batch_size: int | None = positive()
    max_eval_steps: int | None = positive()
    seed: int | None
    rng: str = choice("keyed", "torch")
    resume: bool
    save_every_batches: int = positive()
    save_every_seconds: float = ranged(0, low_open=True)
    plots: bool
    render_examples: int = at_least(0)
    progress: bool
    save_outputs: bool

    def __post_init__(self):
        check_fields(self)
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
    return from_config(EvalConfig, cfg, "config/cfg_eval.yaml")


# ----------------------------------------------------------------------------- set-up

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
    opened = open_split(cfg.data_path, cfg.split) if cfg.data_path else None
    head, info = load_model(cfg.checkpoint, cfg.trust_checkpoint, cfg.forward_dtype, device, world_size,
                            opened.meta if opened else None)
    model_config = head.model.config
    inner = head.model.inner.to(device).eval()
    broken = [name for name, p in head.named_parameters() if not torch.isfinite(p).all()]
    if broken and rank == 0:
        print(f"warning: {cfg.checkpoint}: {len(broken)} weight tensor(s) hold NaN or inf ({broken[0]} first); "
              f"the training run diverged before this checkpoint and its answers are meaningless", file=sys.stderr)
    compiled = compile_core(inner, cfg.compile, device)
    train_config = info["train_config"]

    data = dataset_for(opened, train_config, cfg.split, model_config)
    data_path = data.data_path
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
    num_batches = num_test_batches(data, global_batch_size, max_examples)
    examples = num_test_examples(data, max_examples)
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
    sweep = Sweep(output_dir, identity, rank, world_size, cfg.resume, report.RESULTS_FILE)
    counts = torch.zeros(spec.size, dtype=torch.long, device=device)
    depth_seconds = sweep.state.get("depth_seconds", [0.0] * len(spec.depths))
    if sweep.state:
        counts += sweep.state["counts"].to(device)
    start_batch = sweep.start_batch
    if cfg.rng == "torch":
        torch.manual_seed(seed + rank)
    writer = (predictions.ShardWriter(output_dir, rank, world_size, start_batch, data.meta.vocab_size)
              if cfg.save_outputs else None)

    if rank == 0:
        print(f"evaluating {info['uri']} (step {info['step']}, sha256 {info['sha256'][:12]}, "
              f"{'EMA' if info['ema'] else 'raw'} weights) on {data_path}/{cfg.split}: {examples} puzzles, "
              f"depths {list(spec.depths)} x breadths {list(spec.breadths)}, {model_config.forward_dtype}, "
              f"{world_size} process(es) on {device.type}"
              + (f" with {torch.get_num_threads()} thread(s)" if device.type == "cpu" else "")
              + (f", elastic pool of {pool_size} slots, {len(spec.halting_rules)} halting rule(s)" if pool_size else "")
              + (", compiled" if compiled else ", eager")
              + (f", resuming at batch {start_batch}/{num_batches}" if start_batch else ""), file=sys.stderr)
    task = render.task_of(model_config.vocab_size, model_config.seq_len)
    shown = {"task": task, "solved": [], "failed": []}  # rank 0's first answers at the largest cell, to draw
    want_shown = rank == 0 and cfg.plots and cfg.render_examples > 0 and task is not None
    cpu_started = time.process_time()
    batches = sweep.batches(data, global_batch_size, max_examples, device, num_batches, examples,
                            cfg.save_every_batches, cfg.save_every_seconds, cfg.progress,
                            f"eval D{spec.max_depth} B{spec.max_breadth}")
    pool_stats = {}
    if spec.elastic:
        slots = torch.zeros(pool_size, dtype=torch.long, device=device)
        sampler = TorchSampler() if cfg.rng == "torch" else KeyedSampler(seed, slots, slots)
        outcomes = ((i, batch, cells, hist, [0.0], None)
                   for i, batch, cells, hist in elastic_batches(inner, batches, spec, pool_size, sampler, pool_stats))
    else:
        outcomes = ((i, batch, *run_batch(inner, batch, spec, make_sampler(cfg, seed, batch, spec),
                                          residuals=spec.residual_parts(counts))) for i, batch in batches)

    def carried(done: int) -> dict:
        if writer:  # first the predictions, then the counts that say how far they go
            writer.flush(done)
        return {"counts": counts.cpu(), "depth_seconds": list(depth_seconds)}

    for batch_index, batch, cells, hist, seconds, headline in outcomes:
        if want_shown and headline and min(len(shown["solved"]), len(shown["failed"])) < cfg.render_examples:
            keep_examples(shown, batch, headline, cfg.render_examples)
        for total, part in zip(spec.split(counts), (cells, hist)):  # run_batch adds the residuals itself
            total += part
        if writer:
            writer.add(batch, headline)
        depth_seconds = [a + b for a, b in zip(depth_seconds, seconds)]
        sweep.advance(batch_index, carried)
    wall = sweep.seconds
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
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        results = report.write_outputs(output_dir, checkpoint_name(cfg.checkpoint), asdict(cfg), spec, counts.cpu(), info,
                                       identity, wall, depth_seconds, device_name, shown,
                                       {**pool_stats, "pool_size": pool_size})
    sweep.finish()  # the finished results replace the partial counts
    return results


def main(argv: list[str] | None = None) -> int:
    return run_entry(argv, lambda args: help_text(__doc__, args, "cfg_eval", HELP_PRESETS),
                     lambda _, overrides: parse_config(compose_eval_config(overrides)),
                     lambda cfg, p: evaluate(cfg, p.rank, p.world_size, p.device))


if __name__ == "__main__":
    exit_process(main())
