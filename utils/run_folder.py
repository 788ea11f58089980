"""The training run folder and its checkpoint format: every file of it is read and written here.

    <run>/step_<N>.pt           rank 0's checkpoint of step N: format CHECKPOINT_FORMAT, step, world_size,
                                config, model, optimizer, ema, and rank 0's carry / rng / loader
    <run>/step_<N>.rank<r>.pt   rank r's carry / rng / loader (with several processes)
    <run>/latest                the name of the newest step whose every shard is on disk
    <run>/config.yaml, metrics.jsonl, .lock
    <run>/training_curves.png   drawn from metrics.jsonl (read here) by evaluation/curves.py

What goes into a checkpoint is pretrain.py's business; where it goes, how `latest` moves, which
checkpoint a resume may trust and what a released (slim) checkpoint keeps is this module's.

One writer per folder: `RunLock` holds an exclusive flock on `<run>/.lock` for the run's life, so a
second run pointed at the same folder (the same run_name, or two default names from the same
second) stops at start, naming the holder. The kernel drops the lock when the holder dies, so a
killed run never leaves the folder locked; a link to a run's folder locks that folder. (flock works
on local disks; on NFS it needs the server's lock support.)

metrics.jsonl is strict JSON, one object per line (non-finite numbers are written as null). A line
torn by a kill or a full disk can only be the last one; reading drops it with a warning.
"""
import fcntl
import json
import math
import os
import re
import socket
import sys
import time

from utils.errors import CheckpointError, RunError
from utils.files import atomic_save, atomic_write, check_archive, refused_global

CHECKPOINT_FORMAT = "eqr/1"
LOCK_NAME = ".lock"
SHARD_NAME = re.compile(r"step_(\d+)(\.rank\d+)?\.pt")  # shard_name's files
SLIM_KEYS = ("format", "step", "config", "model", "ema")  # what a released checkpoint keeps: enough to evaluate


def shard_name(step: int, rank: int) -> str:
    return f"step_{step}.pt" if rank == 0 else f"step_{step}.rank{rank}.pt"


def write_shard(run_dir: str, step: int, rank: int, state: dict) -> None:
    atomic_save(state, os.path.join(run_dir, shard_name(step, rank)))


def point_latest(run_dir: str, step: int) -> None:
    """Make step the one to resume from; call only once every rank's shard of it is written."""
    atomic_write(os.path.join(run_dir, "latest"), shard_name(step, 0) + "\n")


def prune_checkpoints(run_dir: str, keep: int | None) -> list[str]:
    """Delete the shards of all but the newest `keep` steps up to the one `latest` names (None: keep all); call
    only after `latest` has moved. Only this folder's step files are touched, never those of `latest`'s step or of
    a step past it, so a kill part-way leaves extra old files (the next save removes them) and loses nothing.
    Returns the paths deleted."""
    newest = latest_step(run_dir)
    if keep is None or newest is None:
        return []
    shards = {name: int(match.group(1)) for name in os.listdir(run_dir) if (match := SHARD_NAME.fullmatch(name))}
    older = sorted({step for step in shards.values() if step < newest})
    doomed = set(older[:max(len(older) - (keep - 1), 0)])
    deleted = [os.path.join(run_dir, name) for name, step in sorted(shards.items()) if step in doomed]
    for path in deleted:
        os.remove(path)
    return deleted


def latest_checkpoint(run_dir: str) -> str | None:
    pointer = os.path.join(run_dir, "latest")
    if not os.path.isfile(pointer):
        return None
    with open(pointer) as f:
        name = f.read().strip()
    path = os.path.join(run_dir, name)
    if not re.fullmatch(r"step_\d+\.pt", name) or not os.path.isfile(path):
        raise CheckpointError(f"{pointer}: points to {name!r}, which is not a checkpoint file in {run_dir}")
    return path


def latest_step(run_dir: str) -> int | None:
    path = latest_checkpoint(run_dir)
    return None if path is None else _step_of(os.path.basename(path))


def _step_of(name: str) -> int:
    return int(name.removeprefix("step_").removesuffix(".pt"))


def checkpoint_global(name: str) -> bool:
    """Whether a checkpoint of this format may name `name` in its pickle: tensors and their storages only."""
    module, _, attr = name.rpartition(".")
    return (name == "collections.OrderedDict" or (module == "torch._utils" and attr.startswith("_rebuild_"))
            or (module == "torch" and attr.endswith("Storage")))


def check_shard(path: str) -> None:
    """A shard that resume may load: every CRC right, and a pickle that names nothing but tensors."""
    check_archive(path)
    refused = refused_global(path, checkpoint_global)
    if refused:
        raise CheckpointError(f"{path}: refused to unpickle {refused} (a checkpoint holds tensors and plain "
                              f"types only); not loaded")


def intact_checkpoint(run_dir: str, latest: str, world_size: int, rank: int) -> str:
    """`latest`, or, when one of its shards is damaged, missing or refused (check_shard), the newest older step
    whose every shard passes check_shard (with a warning); none intact is an error."""
    newest = _step_of(os.path.basename(latest))
    steps = sorted((_step_of(name) for name in os.listdir(run_dir) if re.fullmatch(r"step_\d+\.pt", name)
                    and _step_of(name) <= newest), reverse=True)
    problem = None
    for step in steps:
        try:
            for r in range(world_size):
                check_shard(os.path.join(run_dir, shard_name(step, r)))
        except CheckpointError as e:
            problem = problem or str(e)
            continue
        if step != newest and rank == 0:
            print(f"warning: {problem}; resuming from the newest intact checkpoint, {shard_name(step, 0)}", file=sys.stderr)
        return os.path.join(run_dir, shard_name(step, 0))
    raise CheckpointError(f"{run_dir}: no intact checkpoint to resume ({problem})")


def slim_checkpoint(state: dict) -> dict:
    """A released copy of a checkpoint: the weights, EMA and config, without optimizer, carry, RNG or loader."""
    return {key: state[key] for key in SLIM_KEYS if key in state}


class RunLock:
    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, LOCK_NAME)
        self.fd = None
        self.created = False  # whether acquire made the folder (release removes it if the lock is all it holds)

    def acquire(self) -> "RunLock":
        folder = os.path.dirname(self.path)
        self.created = not os.path.isdir(folder)
        try:
            os.makedirs(folder, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise RunError(f"{folder}: cannot write the run folder ({e.strerror or e}); pass a writable "
                           f"checkpoint_path (or run from a writable folder)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            real = os.path.realpath(folder)  # a link into another run's folder is that folder
            where = folder if real == os.path.abspath(folder) else f"{folder} (a link to {real})"
            raise RunError(f"{where}: in use by {holder}; two runs cannot share a run folder "
                           f"(pass another run_name or checkpoint_path)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            folder = os.path.dirname(self.path)
            if self.created and os.listdir(folder) == [LOCK_NAME]:  # a run that stopped before writing anything
                os.remove(self.path)
                os.rmdir(folder)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def strict_json(record: dict) -> str:
    """One JSON line; NaN and infinities become null (json.dumps would write bare NaN, which is not JSON)."""
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value
    return json.dumps(clean(record), allow_nan=False)


def append_metrics(path: str, record: dict) -> None:
    try:
        with open(path, "a") as f:
            f.write(strict_json(record) + "\n")
    except OSError as e:
        raise RunError(f"{path}: could not append the step {record.get('step')} metrics ({e.strerror or e}); "
                       f"the checkpoints are unaffected, and a resume drops a torn last line") from None


def truncate_metrics(path: str, step: int) -> None:
    """After a resume, drop the lines the killed run logged past its last checkpoint (and a torn last line)."""
    if os.path.isfile(path):
        atomic_write(path, "".join(strict_json(r) + "\n" for r in read_metrics(path) if r["step"] <= step))


def read_metrics(path: str) -> list[dict]:
    """The records of metrics.jsonl; a torn last line is dropped with a warning, a damaged earlier one is an error."""
    if not os.path.isfile(path):
        return []
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("no integer step")
            records.append(record)
        except ValueError:
            if any(rest.strip() for rest in lines[number:]):
                raise RunError(f"{path}: line {number} is not a metrics record; the file is damaged") from None
            print(f"warning: {path}: dropped a torn last line ({len(line)} bytes; the run was cut off while writing it)",
                  file=sys.stderr)
    return records
