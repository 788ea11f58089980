"""Train EqR / TRM / the feed-forward baseline.

    python pretrain.py --config-name train/eqr_sudoku [key=value ...]
    torchrun --standalone --nproc-per-node 8 pretrain.py --config-name train/eqr_sudoku

The config is composed with Hydra from config/ (overrides use Hydra's syntax: `lr=3e-4`,
`arch=trm`, `arch.hidden_size=256`; the authors' `+max_steps=...` and their other keys are taken as
config/reference_keys.py says, an unknown key is refused).

The loop: every row of the batch keeps its carry (latents, step count, puzzle) across
optimizer steps; each step the loader hands out a fresh global batch, and only rows whose
carry halted take their row of it. Loss = sum over rows / global batch; AdamATan2 with
linear warm-up then cosine to lr_min_ratio; EMA of the weights after every step.

A run folder holds the checkpoints (their format: utils/checkpoint.py), config.yaml, metrics.jsonl and,
once the run ends, training_curves.png. With resume=true the run continues from `latest`; on CPU with
one process the continuation is bit-exact.
"""
import sys

from config import answer_help, help_text

HELP_PRESETS = {"train": "--config-name train/NAME", "arch": "arch=NAME", "dataset": "dataset=NAME"}
answer_help("pretrain", __doc__, "cfg_pretrain", HELP_PRESETS)  # before torch is imported

import contextlib
import copy
import inspect
import os
import random
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from tqdm import tqdm

from config import compose_train_config
from config.reference_keys import typed_keys
from dataset.common import DatasetError, Split, open_split
from dataset.puzzle_dataset import TrainLoader, iter_test_batches, num_test_examples
from evaluation.curves import plot_training_curves
from evaluation.grid import FIELDS, GridSpec, run_batch
from models.ema import EMA
from models.eqr import TORCH_SAMPLER, Carry, ConfigError, ModelConfig, RecurrentReasoner, compile_core
from models.losses import LOSSES, ACTLossHead, summarize_metrics
from models.optim import lr_at, make_optimizer
from utils.checkpoint import (intact_checkpoint, latest_checkpoint, load_checkpoint, save_checkpoint, set_rng_state,
                              shard_name)
from utils.entry import run_entry
from utils.errors import CheckpointError, RunError, first_line
from utils.files import atomic_write, remove_stale_temp_files
from utils.processes import StopRequests, broadcast, exit_process, free_memory, resolve_forward_dtype
from utils.run_folder import EVAL, STEP, RunLock, eval_line, read_metrics, train_line, truncate_metrics
from utils.typecheck import at_least, check_fields, choice, from_config, must, positive, ranged
from utils.wandb_logger import Logger

METRIC_KEYS = ("count", "accuracy", "exact_accuracy", "q_halt_accuracy", "steps", "lm_loss", "q_halt_loss")


# ----------------------------------------------------------------------------- config

@dataclass
class TrainConfig:
    """Top-level keys of config/cfg_pretrain.yaml, in its order (that of the saved config.yaml); `arch` and
    `dataset` are checked separately."""
    arch: dict
    dataset: dict
    project_name: str
    run_name: str | None
    checkpoint_path: str | None
    resume: bool
    seed: int
    device: str | None
    data_path: str = must(lambda v: v != "", "a dataset folder")
    global_batch_size: int = positive()
    epochs: int = positive()
    max_steps: int | None = positive()
    lr: float = ranged(0, low_open=True)
    lr_min_ratio: float = ranged(0, 1)
    lr_warmup_steps: int = at_least(0)
    beta1: float = ranged(0, 1, high_open=True)
    beta2: float = ranged(0, 1, high_open=True)
    weight_decay: float = ranged(0)
    ema: bool
    ema_rate: float = ranged(0, 1, high_open=True)
    log_interval_steps: int = positive()
    eval_interval_steps: int | None = positive()
    eval_max_examples: int | None = positive()
    eval_batch_size: int | None = positive()
    early_stop_patience: int | None = positive()
    checkpoint_interval_steps: int | None = positive()
    checkpoint_keep: int | None = positive()
    threads: int | None = positive()
    compile: bool | None
    wandb_mode: str | None = choice("online", "offline", "disabled")

    def __post_init__(self):
        check_fields(self)
        if self.resume and not self.run_name and not self.checkpoint_path:
            raise ConfigError("resume: needs run_name (or checkpoint_path) to know which run to continue")
        unknown = sorted(set(self.dataset) - {"name", "data_path"})
        if unknown:
            raise ConfigError(f"dataset.{unknown[0]}: unknown config key (dataset takes name and data_path)")
        if not isinstance(self.arch.get("loss"), dict) or self.arch["loss"].get("loss_type") not in LOSSES:
            raise ConfigError(f"arch.loss.loss_type: expected one of {', '.join(LOSSES)}")


def parse_train_config(cfg: dict) -> TrainConfig:
    return from_config(TrainConfig, cfg, "config/cfg_pretrain.yaml")


def saved_config(tc: TrainConfig, model_config: ModelConfig) -> dict:
    """What a run saves (config.yaml, each checkpoint's `config`): the keys of tc in cfg_pretrain.yaml's order,
    `arch` holding every ModelConfig field (seq_len/vocab_size from the dataset, forward_dtype resolved)."""
    return {**asdict(tc), "arch": {**tc.arch, **model_config.to_dict()}}


def model_config_for(arch: dict, train: Split) -> ModelConfig:
    """ModelConfig from the arch config and the training split's metadata; explicit values must agree."""
    meta = train.meta
    for key in ("seq_len", "vocab_size"):
        if arch.get(key) is not None and arch[key] != getattr(meta, key):
            raise ConfigError(f"arch.{key}: set to {arch[key]} but the dataset {train.data_path} has {key} "
                              f"{getattr(meta, key)}")
    given = {k: v for k, v in arch.items() if k not in ("seq_len", "vocab_size")}
    return ModelConfig.from_dict(given, seq_len=meta.seq_len, vocab_size=meta.vocab_size)


def open_test_split(train: Split) -> Split:
    """The test split, opened at start with every value checked, so that a bad one stops the run before step 1
    rather than at its first evaluation."""
    data_path = train.data_path
    test = open_split(data_path, "test")
    if test.num_examples == 0:
        raise DatasetError(f"{os.path.join(data_path, 'test')}: holds no puzzles, so every evaluation would score 0 of 0; "
                           f"rebuild it with test puzzles, or remove the folder to train without evaluation")
    for key in ("seq_len", "vocab_size"):
        if getattr(test.meta, key) != getattr(train.meta, key):
            raise DatasetError(f"{os.path.join(data_path, 'test', 'dataset.json')}: {key} {getattr(test.meta, key)}, "
                               f"but the training split has {getattr(train.meta, key)}")
    return test


def check_model_fits(config: ModelConfig, tc: TrainConfig, world_size: int, device: torch.device) -> None:
    """Refuse, before allocating, a model whose training state alone exceeds the memory this process may use:
    float32 weights, gradients and Adam's two moments (plus EMA and the evaluation copy), counted on the meta
    device from one- and two-layer copies, and the latents and one step's layer inputs of the batch."""
    def count(layers: int) -> int:
        with torch.device("meta"):
            return sum(p.numel() for p in RecurrentReasoner(replace(config, L_layers=layers)).parameters())

    one, two = count(1), count(2)
    params = one + (two - one) * (config.L_layers - 1)
    copies = 4 + tc.ema + bool(tc.eval_interval_steps)  # weights, gradients, Adam m and v, EMA, evaluation copy
    rows = tc.global_batch_size // world_size
    layer_inputs = 2 + (0 if config.feedforward else config.L_cycles + 1) * config.L_layers
    activations = rows * config.seq_len * config.hidden_size * 4 * layer_inputs
    need, free = params * 4 * copies + activations, free_memory(device)
    if free is not None and need > free:
        raise ConfigError(f"arch: this model needs at least {need / 2**30:.1f} GiB per process ({params / 1e6:,.0f}M "
                          f"parameters x {copies} float32 copies, {activations / 2**30:.1f} GiB of activations at "
                          f"{rows} rows), {free / 2**30:.1f} GiB is free for it on {device}; lower arch.hidden_size, "
                          f"arch.L_layers or global_batch_size")


# ----------------------------------------------------------------------------- seeds and devices

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def to_device(tree, device):
    if isinstance(tree, dict):
        return {k: to_device(v, device) for k, v in tree.items()}
    return tree.to(device, non_blocking=True) if isinstance(tree, torch.Tensor) else tree




# ----------------------------------------------------------------------------- evaluation

@torch.inference_mode()
def evaluate(inner, test: Split, tc: TrainConfig, device, rank: int, world_size: int) -> dict:
    """The evaluator's cell D = halt_max_steps, B = 1 (evaluation/grid.py) on the first eval_max_examples test
    examples: each rank counts its share, the counts are summed. Torch's generator is forked and seeded
    `seed + rank`, so that training's random streams go on undisturbed. -> the values of an evaluation line."""
    spec = GridSpec((inner.config.halt_max_steps,), (1,), inner.config.blocks_per_step)
    counts = torch.zeros(len(FIELDS), dtype=torch.long, device=device)
    batch_size = tc.eval_batch_size or tc.global_batch_size
    puzzles = num_test_examples(test, tc.eval_max_examples)
    bar = tqdm(total=puzzles, unit="puzzle", desc=f"eval D{spec.max_depth}", leave=False, disable=rank != 0,
               dynamic_ncols=True)
    with bar, torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(tc.seed + rank)
        for batch in iter_test_batches(test, batch_size, rank, world_size, max_examples=tc.eval_max_examples):
            cells = run_batch(inner.eval(), to_device(batch, device), spec, TORCH_SAMPLER)[0]
            counts += cells[0, 0, spec.rules.index("traj1")]
            bar.update(min(batch_size, puzzles - bar.n))
    if world_size > 1:
        dist.all_reduce(counts)
    correct, total, token_correct, token_total, _ = counts.tolist()
    return {"exact_accuracy": correct / max(total, 1), "accuracy": token_correct / max(token_total, 1),
            "count": float(total)}


# ----------------------------------------------------------------------------- training

def optimizer_and_ema(head: ACTLossHead, tc: TrainConfig):
    """AdamATan2 over the head's parameters and, with ema=true, the EMA of its weights."""
    optimizer = make_optimizer(head.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay)
    return optimizer, EMA(head, tc.ema_rate) if tc.ema else None


def train_step(step: int, carry: Carry | None, batch: dict, head: ACTLossHead, optimizer, ema: EMA | None,
               tc: TrainConfig, total_steps: int, world_size: int = 1, forward=None):
    """Training step `step` (1-based) on this process's rows of the global batch, as the loop runs it and
    scripts/compare_reference.py checks it against the authors' -> (carry, metrics, grad norm, finite, lr).
    forward: what runs the batch, head's DDP wrapper with several processes (default: head)."""
    if carry is None:
        carry = head.initial_carry(batch)
    lr = lr_at(step, tc.lr, tc.lr_warmup_steps, total_steps, tc.lr_min_ratio)
    for group in optimizer.param_groups:
        group["lr"] = lr
    carry, loss, metrics, _ = (forward or head)(carry, batch)
    # DDP averages gradients over ranks, so the world_size factor makes them those of sum / global batch.
    (loss * (world_size / tc.global_batch_size)).backward()
    grads = [p.grad for p in head.parameters() if p.grad is not None]
    grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).double()
    finite = torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if ema is not None:
        ema.update(head)
    return carry, metrics, grad_norm, finite, lr


def train(tc: TrainConfig, config_name: str, typed: set[str], processes) -> None:
    """`typed`: the keys set on the command line (a preset's bfloat16 on a CPU without bf16 units becomes float32)."""
    with contextlib.ExitStack() as cleanup, StopRequests() as stop:
        _train(tc, config_name, processes, cleanup, stop, typed)


def _train(tc: TrainConfig, config_name: str, processes, cleanup: contextlib.ExitStack,
           stop: StopRequests, typed: set[str]) -> None:
    device, rank, world_size = processes.device, processes.rank, processes.world_size
    if tc.global_batch_size % world_size:
        raise ConfigError(f"global_batch_size: {tc.global_batch_size} does not split over {world_size} processes")
    if (tc.eval_batch_size or tc.global_batch_size) % world_size:
        raise ConfigError(f"eval_batch_size: {tc.eval_batch_size} does not split over {world_size} processes")
    train_split = open_split(tc.data_path, "train")  # first: missing data is one error line, with no dtype notice before it
    arch = tc.arch
    if "forward_dtype" in arch:  # `auto` resolved here, so that the checkpoint says which it was
        arch = {**arch, "forward_dtype": resolve_forward_dtype(arch["forward_dtype"], device, world_size,
                                                                "arch.forward_dtype" in typed, "arch.forward_dtype")}
    model_config = model_config_for(arch, train_split)
    check_model_fits(model_config, tc, world_size, device)
    loader = TrainLoader(train_split, tc.global_batch_size, seed=tc.seed, rank=rank, world_size=world_size)
    total_steps = tc.epochs * max(loader.steps_per_epoch, 1)
    if tc.max_steps is not None:
        total_steps = min(total_steps, tc.max_steps)
    has_test = os.path.isfile(os.path.join(tc.data_path, "test", "dataset.json"))
    test_split = open_test_split(train_split) if has_test else None

    # Run folder: every rank needs the same name, and the default one holds a timestamp.
    named = tc.run_name or tc.checkpoint_path  # else a stopped run is resumed with run_name=<this one's>
    run_name = broadcast(tc.run_name or f"{os.path.basename(config_name)}-{time.strftime('%Y%m%d-%H%M%S')}", world_size)
    tc = replace(tc, arch=arch, run_name=run_name)
    cfg = saved_config(tc, model_config)
    run_dir = tc.checkpoint_path or os.path.join("checkpoints", tc.project_name, run_name)
    claim_run_folder(run_dir, rank, world_size, cleanup)
    latest = latest_checkpoint(run_dir) if os.path.isdir(run_dir) else None
    if tc.resume and latest is None:
        raise CheckpointError(f"{run_dir}: no checkpoint to resume (resume=true needs a run with a `latest` file)")
    if not tc.resume and latest is not None:
        raise CheckpointError(f"{run_dir}: already holds checkpoints; pass resume=true or another run_name")
    resume_from = intact_checkpoint(run_dir, latest, world_size, rank) if tc.resume else None
    if not tc.resume and os.path.isfile(os.path.join(run_dir, "metrics.jsonl")):
        raise CheckpointError(f"{run_dir}: holds metrics.jsonl of an earlier run but no checkpoint to resume; "
                              f"pass another run_name (or remove that file)")

    # Identical initial weights on every rank; then a separate random stream per rank.
    seed_everything(tc.seed)
    model = RecurrentReasoner(model_config).to(device)
    head = ACTLossHead(model, tc.arch["loss"]["loss_type"]).to(device)
    optimizer, ema = optimizer_and_ema(head, tc)
    eval_head = copy.deepcopy(head) if tc.eval_interval_steps and has_test else None
    seed_everything(tc.seed + rank)

    step, carry, saved_rng = 0, None, None
    if resume_from is not None:
        step, carry_state, saved_rng = load_checkpoint(resume_from, cfg, head, ema, optimizer, loader, device, rank, world_size)
        carry = None if carry_state is None else Carry.from_dict(to_device(carry_state, device))

    compiled = compile_core(head.model.inner, tc.compile, device)
    if compiled and eval_head is not None:
        compile_core(eval_head.model.inner, True, device)
    train_head = head
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel
        # Buffers (TRM's fixed latents, rotary tables) never change: synced once at init, not every forward
        # (forward_sync_buffers=False from torch 2.13, where broadcast_buffers is deprecated; the same before it).
        no_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                   else "broadcast_buffers")
        train_head = DistributedDataParallel(head, device_ids=[device.index] if device.type == "cuda" else None,
                                             gradient_as_bucket_view=True, **{no_sync: False})

    logger, bar = None, None
    if rank == 0:
        os.makedirs(run_dir, exist_ok=True)
        atomic_write(os.path.join(run_dir, "config.yaml"), OmegaConf.to_yaml(cfg))
        if resume_from is not None:
            truncate_metrics(os.path.join(run_dir, "metrics.jsonl"), step)
        logger = Logger(run_dir, tc.project_name, run_name, tc.wandb_mode, cfg)
        cleanup.callback(logger.finish)
        params = sum(p.numel() for p in head.parameters())
        print(f"run {run_dir}: {params / 1e6:.2f}M parameters in {model_config.forward_dtype}, {total_steps} steps "
              f"({loader.steps_per_epoch} per epoch), {world_size} process(es) on {device.type}"
              + (f" with {processes.threads} thread(s)" if device.type == "cpu" else "")
              + (", compiled" if compiled else ", eager")
              + (f", resuming at step {step}" if step else "")
              + ("" if has_test else "; no test split, so no evaluation"), file=sys.stderr)
        bar = tqdm(total=total_steps, initial=step, desc=run_name, dynamic_ncols=True)
        cleanup.callback(bar.close)  # before any error line, which must start a line of its own
    if saved_rng is not None:  # last, so nothing above shifts the random streams
        set_rng_state(saved_rng, device)

    head.train()
    sums = torch.zeros(len(METRIC_KEYS), dtype=torch.float64, device=device)
    grad_norm_sum = torch.zeros((), dtype=torch.float64, device=device)  # identical on every rank after DDP
    first_bad_step = torch.zeros((), dtype=torch.long, device=device)  # first step with a non-finite loss or gradient
    logged_steps, start_time, stopping = 0, time.time(), False
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    history = broadcast(eval_history(metrics_path) if rank == 0 else None, world_size) if resume_from else []
    plateau = plateaued(history, tc.early_stop_patience)

    def run_eval(step: int) -> None:  # the EMA weights (if any) on the test split; rank 0 logs and prints
        eval_head.load_state_dict(head.state_dict())
        if ema is not None:
            ema.copy_to(eval_head)
        results = evaluate(eval_head.model.inner, test_split, tc, device, rank, world_size)
        history.append((step, results["exact_accuracy"]))
        if rank == 0:
            logger.log(eval_line(step, results))
            bar.write(f"step {step}: eval exact {results['exact_accuracy']:.4f} token {results['accuracy']:.4f} "
                      f"({int(results['count'])} puzzles{', EMA' if ema else ''})")

    if eval_head is not None and step == total_steps and (not history or history[-1][0] < step):
        run_eval(step)  # a run killed during its final evaluation, resumed: the checkpoint is there, the numbers not
    while step < total_steps and not stopping and not plateau:
        step += 1
        batch = to_device(loader.next_batch(), device)
        carry, metrics, grad_norm, finite, lr = train_step(step, carry, batch, head, optimizer, ema, tc, total_steps,
                                                           world_size, train_head)
        grad_norm_sum += grad_norm
        first_bad_step = torch.where((first_bad_step == 0) & ~finite, step, first_bad_step)  # no host sync here
        sums += torch.stack([metrics[k].double() for k in METRIC_KEYS])
        logged_steps += 1

        if bar is not None:
            bar.update(1)
        stop_now = world_size == 1 and stop.requested  # then the metrics since the last line are logged at this step
        log_due = step % tc.log_interval_steps == 0 or step == total_steps or stop_now
        if log_due:
            if world_size > 1:
                dist.all_reduce(sums)
            summary = summarize_metrics(dict(zip(METRIC_KEYS, sums.tolist())), tc.global_batch_size * logged_steps)
            if rank == 0:
                logger.log(train_line(step, lr, {**summary, "grad_norm": grad_norm_sum.item() / logged_steps},
                                      round(time.time() - start_time, 3)))
                bar.set_postfix(loss=f"{summary['lm_loss']:.4f}", exact=f"{summary['exact_accuracy']:.3f}")
            sums.zero_()
            grad_norm_sum.zero_()
            logged_steps = 0
        # A stop request (SIGTERM/SIGINT) is acted on by every rank at the same step: at once with one
        # process, at the next log step with several (where they agree on it).
        stopping = stop_now if world_size == 1 else log_due and stop.agreed(device)
        eval_due = eval_head is not None and (step % tc.eval_interval_steps == 0 or step == total_steps)
        save_due = (tc.checkpoint_interval_steps and step % tc.checkpoint_interval_steps == 0) or step == total_steps
        if log_due or eval_due or save_due or stopping:
            check_finite(first_bad_step, run_dir)
        # The checkpoint first: a run killed during the (long) final evaluation resumes at its last step.
        if save_due or stopping:
            save_checkpoint(run_dir, step, cfg, head, ema, optimizer, carry, loader, device, rank, world_size)
        if eval_due:
            run_eval(step)
            plateau = plateaued(history, tc.early_stop_patience)
            if plateau and not (save_due or stopping):
                save_checkpoint(run_dir, step, cfg, head, ema, optimizer, carry, loader, device, rank, world_size)

    if rank == 0:
        bar.close()
        if plateau and step < total_steps:
            best_step, best = max(history, key=lambda h: h[1])
            print(f"stopped early after step {step}: the test exact accuracy has not risen for {tc.early_stop_patience} "
                  f"evaluations (best {best:.4f} at step {best_step}): {run_dir}/{shard_name(step, 0)}", file=sys.stderr)
        elif stopping and step < total_steps:
            print(f"stopped by {stop.signal_name} after step {step}: {run_dir}/{shard_name(step, 0)} written; continue with "
                  f"the same command plus resume=true" + ("" if named else f" run_name={run_name}"),
                  file=sys.stderr)
        else:
            print(f"done: {run_dir}/{shard_name(step, 0)}", file=sys.stderr)
        try:  # a convenience: a plotting problem must not fail a run whose checkpoint is written
            print(f"training curves: {plot_training_curves(run_dir)}", file=sys.stderr)
        except Exception as e:
            print(f"warning: {run_dir}: training curves not drawn ({first_line(e)})", file=sys.stderr)


def eval_history(metrics_path: str) -> list[tuple[int, float]]:
    """(step, test exact accuracy) of every evaluation a resumed run logged before its checkpoint."""
    return [(r[STEP], r[EVAL["exact_accuracy"]]) for r in read_metrics(metrics_path) if EVAL["exact_accuracy"] in r]


def plateaued(history: list[tuple[int, float]], patience: int | None) -> bool:
    """Early stop: none of the last `patience` evaluations beat the best one before them."""
    if not patience or len(history) <= patience:
        return False
    return max(a for _, a in history[-patience:]) <= max(a for _, a in history[:-patience])


def check_finite(first_bad_step: torch.Tensor, run_dir: str) -> None:
    """Stop a diverged run before it evaluates or saves anything: the last checkpoint stays the last good one."""
    bad = int(first_bad_step.item())
    if bad:
        latest = latest_checkpoint(run_dir)
        raise RunError(f"step {bad}: the loss or gradient norm is not finite (NaN or inf); the run stopped without "
                       f"saving, its last checkpoint is {latest or 'none'} (lower lr, or check the data)")


def claim_run_folder(run_dir: str, rank: int, world_size: int, cleanup: contextlib.ExitStack) -> None:
    """Rank 0 locks the run folder for the run's life (every rank stops if another run holds it)."""
    refusal = None
    if rank == 0:
        try:
            cleanup.callback(RunLock(run_dir).acquire().release)
        except RunError as e:
            refusal = str(e)
        else:  # the folder is ours: temp files in it are from writers that were killed
            for path in remove_stale_temp_files(run_dir):
                print(f"warning: removed {path}, left by an interrupted write", file=sys.stderr)
    refusal = broadcast(refusal, world_size)
    if refusal:
        raise RunError(refusal)


def main(argv: list[str] | None = None) -> int:
    composed = {}  # what configure saw, for the run

    def configure(config_name: str, overrides: list[str]) -> TrainConfig:
        composed.update(config_name=config_name, typed=typed_keys("train", overrides))
        return parse_train_config(compose_train_config(config_name, overrides))

    return run_entry(argv, lambda args: help_text(__doc__, args, "cfg_pretrain", HELP_PRESETS), configure,
                     lambda tc, processes: train(tc, processes=processes, **composed), config_name="cfg_pretrain")


if __name__ == "__main__":
    exit_process(main())
