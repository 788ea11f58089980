"""Run a list of command stages in order: skip finished ones, continue interrupted ones, keep a ledger.

Knows nothing about the study: a stage is a key, a command and a test of whether it has finished.
The ledger (JSON, one entry per stage key) adds up each stage's wall time over the sessions it took since
its last fresh start.
"""
import fnmatch
import json
import os
import shlex
import subprocess
import time
from dataclasses import dataclass
from typing import Callable

from utils.errors import RunError
from utils.files import atomic_write


@dataclass
class Stage:
    key: str
    argv: list                     # the command of a fresh start; argv[0] is the interpreter
    done: Callable[[], bool]       # has it finished (its output is complete)?
    resume_argv: list | None = None         # the command that continues an interrupted attempt ...
    started: Callable[[], bool] = lambda: False  # ... used when an attempt left something to continue

    def command(self) -> list:
        return self.resume_argv if self.resume_argv is not None and self.started() else self.argv


def shown(argv: list) -> str:
    """The command as a reader would type it (python instead of this interpreter's path)."""
    return " ".join(["python"] + [shlex.quote(a) for a in argv[1:]])


def load_ledger(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def record_attempt(path: str, key: str, argv: list, wall_s: float, exit_code: int, fresh: bool = False) -> None:
    """fresh: the attempt started the stage from scratch, so the wall time of earlier attempts no longer counts."""
    ledger = load_ledger(path)  # read at the end, so entries another runner wrote meanwhile are kept
    entry = ledger.setdefault(key, {"wall_s": 0.0, "attempts": []})
    entry["wall_s"] = (0.0 if fresh else entry["wall_s"]) + wall_s
    entry["attempts"].append({"command": shown(argv), "wall_s": round(wall_s, 1), "exit_code": exit_code,
                              "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")})
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    atomic_write(path, json.dumps(ledger, indent=1, sort_keys=True))


def selected(stages: list, patterns: list) -> list:
    """The stages whose key matches one of the shell patterns (all stages when there are none)."""
    return [s for s in stages if not patterns or any(fnmatch.fnmatch(s.key, p) for p in patterns)]


def run_stage(stage: Stage, ledger: str, log_dir: str, env: dict, cwd: str) -> None:
    """Run one stage's command with `env` added to the environment, output appended to its log."""
    argv = stage.command()
    os.makedirs(log_dir, exist_ok=True)
    log_path = os.path.join(log_dir, f"{stage.key}.log")
    print(f"[{stage.key}] {shown(argv)}  (log: {log_path})", flush=True)
    start = time.time()
    with open(log_path, "a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shown(argv)}\n")
        log.flush()
        code = subprocess.call(argv, cwd=cwd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    wall = time.time() - start
    record_attempt(ledger, stage.key, argv, wall, code, fresh=argv == stage.argv)
    if code != 0:
        raise RunError(f"stage {stage.key} failed with exit code {code}; see {log_path}")
    print(f"[{stage.key}] done in {wall:.0f} s", flush=True)


def run_all(stages: list, ledger: str, log_dir: str, env: dict, cwd: str) -> None:
    """Run the stages one after another, skipping finished ones; stop at the first failure."""
    for stage in stages:
        if stage.done():
            print(f"[{stage.key}] finished earlier, skipped", flush=True)
            continue
        run_stage(stage, ledger, log_dir, env, cwd)
    unfinished = [s.key for s in stages if not s.done()]
    if unfinished:
        raise RunError(f"stages not finished after running: {', '.join(unfinished)}; rerun to continue them")


def listing(stages: list, ledger: str) -> list:
    """One line per stage: done or todo, key, wall time so far, the command it would run now."""
    entries = load_ledger(ledger)
    lines = []
    for s in stages:
        wall = entries.get(s.key, {}).get("wall_s")
        lines.append(f"{'done' if s.done() else 'todo'}  {s.key:30s} {f'{wall:7.0f} s' if wall else '':>9s}  "
                     f"{shown(s.command())}")
    return lines
