"""A training run's folder: its lock and metrics.jsonl (its checkpoints and `latest`: utils/checkpoint.py;
config.yaml, the resolved config, is written by pretrain.py; training_curves.png is drawn from
metrics.jsonl by evaluation/curves.py).

One writer per folder: `RunLock` holds an exclusive flock on `<run>/.lock` for the run's life, so a
second run pointed at the same folder (the same run_name, or two default names from the same
second) stops at start, naming the holder. The kernel drops the lock when the holder dies, so a
killed run never leaves the folder locked; a link to a run's folder locks that folder. (flock works
on local disks; on NFS it needs the server's lock support.)

metrics.jsonl is strict JSON, one object per line (non-finite numbers are written as null). A line
torn by a kill or a full disk can only be the last one; reading drops it with a warning. Every line holds
`step`, the optimizer step (from 1) it was logged at, and is one of two kinds, written by train_line / eval_line
with the key names below (readers index records with STEP, LR, TIME_S, TRAIN[name], EVAL[name]):
- a training line, every log_interval_steps, at the last step and at a stop: `lr`, the learning rate of that step;
  `train/<name>` for each name of TRAIN, over the steps since the line before: lm_loss (the answer's mean token
  cross-entropy) and q_halt_loss (the halting head's), each per row of the global batch and step; over the rows
  that halted in those steps: accuracy (token accuracy, per row), exact_accuracy (the whole answer right),
  q_halt_accuracy (q > 0 agreed with it), steps (supervision steps the row took) and count (the number of such
  rows, a float); grad_norm, the mean over the steps of the global gradient norm; last `time_s`, seconds since
  this process started its loop (a resumed run counts from its resume).
- an evaluation line: `eval/<name>` for each name of EVAL, on the test split (the first eval_max_examples):
  exact_accuracy, accuracy (token accuracy pooled over the labelled cells) and count (puzzles, a float).
"""
import fcntl
import json
import math
import os
import socket
import sys
import time

from utils.errors import RunError
from utils.files import atomic_write

LOCK_NAME = ".lock"
STEP, LR, TIME_S = "step", "lr", "time_s"
TRAIN = {name: f"train/{name}" for name in ("lm_loss", "q_halt_loss", "accuracy", "exact_accuracy", "q_halt_accuracy",
                                            "steps", "count", "grad_norm")}
EVAL = {name: f"eval/{name}" for name in ("exact_accuracy", "accuracy", "count")}


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


def train_line(step: int, lr: float, means: dict, seconds: float) -> dict:
    """A training line; `means` holds a value for each name of TRAIN and no other."""
    if means.keys() != TRAIN.keys():
        raise ValueError(f"a training line takes the means {', '.join(TRAIN)}, got {', '.join(means)}")
    return {STEP: step, LR: lr, **{TRAIN[name]: means[name] for name in TRAIN}, TIME_S: seconds}


def eval_line(step: int, results: dict) -> dict:
    """An evaluation line; `results` holds a value for each name of EVAL and no other."""
    if results.keys() != EVAL.keys():
        raise ValueError(f"an evaluation line takes {', '.join(EVAL)}, got {', '.join(results)}")
    return {STEP: step, **{EVAL[name]: results[name] for name in EVAL}}


def append_metrics(path: str, record: dict) -> None:
    try:
        with open(path, "a") as f:
            f.write(strict_json(record) + "\n")
    except OSError as e:
        raise RunError(f"{path}: could not append the step {record.get(STEP)} metrics ({e.strerror or e}); "
                       f"the checkpoints are unaffected, and a resume drops a torn last line") from None


def truncate_metrics(path: str, step: int) -> None:
    """After a resume, drop the lines the killed run logged past its last checkpoint (and a torn last line)."""
    if os.path.isfile(path):
        atomic_write(path, "".join(strict_json(r) + "\n" for r in read_metrics(path) if r[STEP] <= step))


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
            if not isinstance(record, dict) or not isinstance(record.get(STEP), int):
                raise ValueError("no integer step")
            records.append(record)
        except ValueError:
            if any(rest.strip() for rest in lines[number:]):
                raise RunError(f"{path}: line {number} is not a metrics record; the file is damaged") from None
            print(f"warning: {path}: dropped a torn last line ({len(line)} bytes; the run was cut off while writing it)",
                  file=sys.stderr)
    return records
