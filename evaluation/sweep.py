"""The resumable, sharded pass over a test split (evaluate.py's grid and elastic pool, diagnose.py's traces), and
the one reader and writer of its partial-results files.

Each rank runs its shard's batches in order and, every `save_every_batches` batches (or `save_every_seconds`),
saves its progress in one file (torch.save of plain data and CPU tensors, written whole or not at all):

    output_dir/partial/rank<r>-of-<world_size>.pt
        format       "eqr-partial/1"; a file without this key was written before it existed and is read as this format
        fingerprint  16 hex digits: the sha256 of `identity` as JSON with sorted keys
        identity     everything that decides the results (checkpoint sha256, data, split, batch size, world size,
                     seed, the grid or trace settings, the model config), as JSON-plain data
        next_batch   the number of this rank's batches done: where a resumed run starts
        seconds      the pass's wall time so far
        and what the pass carries: the grid its int64 `counts` and `depth_seconds` (seconds to each depth), the
        diagnostics its per-trajectory `records` (a dict of tensors)

resume=true reads this rank's file back and refuses one of another format or identity (naming the file and the first
setting that differs); without resume, a folder holding partial files is refused. evaluation/predictions.py keeps its
chunks in the same folder. Once the outputs are written every rank removes its file.
"""
import hashlib
import json
import math
import os
import signal
import time

import torch

from dataset.common import Split
from dataset.puzzle_dataset import iter_test_batches
from utils.errors import ConfigError
from utils.files import atomic_save, check_writable, hold_folder

FORMAT = "eqr-partial/1"
KILL_AFTER_ENV = "EQR_EVAL_KILL_AFTER_BATCHES"  # testing aid: SIGKILL this process after N batches


def _plain(identity: dict) -> dict:
    return json.loads(json.dumps(identity, default=str))


def fingerprint(identity: dict) -> str:
    """Short hash of everything that decides the results (config, checkpoint, data, sharding)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def partial_path(output_dir: str, rank: int, world_size: int) -> str:
    return os.path.join(output_dir, "partial", f"rank{rank}-of-{world_size}.pt")


def save_partial(path: str, identity: dict, next_batch: int, seconds: float, carried: dict) -> None:
    atomic_save({"format": FORMAT, "fingerprint": fingerprint(identity), "identity": _plain(identity),
                 "next_batch": next_batch, "seconds": seconds, **carried}, path)


def load_partial(path: str, identity: dict) -> dict:
    """A rank's saved progress; refuses a file of another format or written under any other configuration."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"{path}: unreadable partial result ({type(e).__name__}); delete it to start over") from None
    if not isinstance(state, dict) or state.get("format", FORMAT) != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ConfigError(f"{path}: a partial result of format {found!r}, expected {FORMAT}; delete it to start over")
    if state.get("fingerprint") != fingerprint(identity):
        saved, now = state.get("identity", {}), _plain(identity)
        diff = next((k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)), "?")
        raise ConfigError(f"{path}: written with {diff}={saved.get(diff)!r}, this run has {diff}={now.get(diff)!r}; "
                          f"resume with the same settings or use another output_dir")
    return state


class Sweep:
    """One rank's resumable pass: opening it checks and holds output_dir and reads back this rank's progress
    (`state`, empty when starting); `batches` yields the shard from there; `advance` after each batch counts
    it, saves now and then and, under the test hook, kills the process; `finish` drops the file."""

    def __init__(self, output_dir: str, identity: dict, rank: int, world_size: int, resume: bool, finished: str,
                 what: str = "evaluation"):
        self.identity, self.rank, self.world_size = identity, rank, world_size
        self.path = partial_path(output_dir, rank, world_size)
        check_writable(output_dir, "output_dir")  # now, not after the pass
        if rank == 0:
            hold_folder(output_dir, "output_dir")
        self.state = {}
        if resume and os.path.isfile(self.path):
            self.state = load_partial(self.path, identity)
        elif os.path.isfile(os.path.join(output_dir, finished)):
            raise ConfigError(f"output_dir: {output_dir} holds the results of a finished {what}; choose another output_dir")
        elif not resume and os.path.isdir(os.path.dirname(self.path)) and os.listdir(os.path.dirname(self.path)):
            raise ConfigError(f"output_dir: {output_dir} holds partial results of an unfinished {what}; "
                              f"pass resume=true to continue it or choose another output_dir")
        self.start_batch = self.state.get("next_batch", 0)
        self.seconds_before = self.state.get("seconds", 0.0)

    def batches(self, split: Split, global_batch_size: int, max_examples: int | None, device,
                num_batches: int, examples: int, save_every_batches: int, save_every_seconds: float = math.inf,
                progress: bool = True, desc: str = ""):
        """(batch index, batch on `device`) of this rank's shard from `start_batch`, with rank 0's progress bar."""
        from tqdm import tqdm
        self.num_batches, self.examples, self.global_batch_size = num_batches, examples, global_batch_size
        self.every, self.every_seconds = save_every_batches, save_every_seconds
        self.bar = tqdm(total=examples, initial=min(self.start_batch * global_batch_size, examples), unit="puzzle",
                        desc=desc, disable=self.rank != 0 or not progress, dynamic_ncols=True, smoothing=0.1)
        self.kill_after = int(os.environ.get(KILL_AFTER_ENV, 0))
        self.started = self.last_save = time.time()
        for i, batch in enumerate(iter_test_batches(split, global_batch_size, self.rank, self.world_size, max_examples,
                                                    start_batch=self.start_batch), start=self.start_batch):
            yield i, {k: v.to(device) for k, v in batch.items()}
        self.bar.close()

    @property
    def seconds(self) -> float:
        """The pass's wall time, resumed runs included."""
        return self.seconds_before + time.time() - self.started

    def advance(self, batch_index: int, carried) -> None:
        """Batch `batch_index` is done; when a save is due, carried() -> the pass's state to save with it."""
        gbs = self.global_batch_size
        self.bar.update(max(0, min(gbs, self.examples - batch_index * gbs)))
        done = batch_index + 1
        if done < self.num_batches and (done % self.every == 0 or time.time() - self.last_save > self.every_seconds):
            save_partial(self.path, self.identity, done, self.seconds, carried(done))
            self.last_save = time.time()
        if self.kill_after and done - self.start_batch >= self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    def finish(self) -> None:
        """Once the outputs are written: every rank drops its partial file, then rank 0 the empty folder."""
        import torch.distributed as dist
        if self.world_size > 1:
            dist.barrier()
        if os.path.isfile(self.path):
            os.remove(self.path)
        if self.world_size > 1:
            dist.barrier()
        folder = os.path.dirname(self.path)
        if self.rank == 0 and os.path.isdir(folder) and not os.listdir(folder):
            os.rmdir(folder)
