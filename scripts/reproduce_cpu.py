"""CPU-scale reproduction study: small EqR / TRM / feed-forward models on easy Sudoku and 11x11 mazes.

    python scripts/reproduce_cpu.py            # everything: data, training, evaluation, report
    python scripts/reproduce_cpu.py run        # only data, training and evaluation
    python scripts/reproduce_cpu.py report     # only the report, the shipped checkpoints (from finished stages)
    python scripts/reproduce_cpu.py --list     # the stages, their commands and whether they are done

Every stage is one command (a dataset build, a `pretrain.py` run, an `evaluate.py` sweep), run one
after another with one CPU thread and seed 0. Rerunning skips finished stages, resumes an interrupted
training run from its latest checkpoint (`resume=true`) and an interrupted sweep from its partial
counts (`resume=true`). Commands, wall times and outcomes go to outputs/cpu_repro/ledger.json;
logs to outputs/cpu_repro/logs/. The report (docs/cpu_reproduction.md, docs/cpu_reproduction/*.png,
docs/cpu_reproduction/results.json) and the shipped checkpoints (checkpoints/shipped/) are written
only from finished stages.
"""
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 0
DATA_DIR = "data/cpu_repro"
RUN_DIR = "checkpoints/cpu_repro"
WORK_DIR = "outputs/cpu_repro"
LEDGER = os.path.join(WORK_DIR, "ledger.json")
DEPTHS = [1, 2, 4, 8, 16, 32, 64]
BREADTHS = [1, 4, 16, 64]
TRAIN_STEPS = 2000
TRAIN_DEPTH = 16

# One CPU thread: the numbers repeat exactly on a rerun, and a busy second core cannot stall the job.
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}


@dataclass
class Dataset:
    name: str
    args: list

    @property
    def path(self):
        return f"{DATA_DIR}/{self.name}"


@dataclass
class Run:
    name: str
    task: str        # sudoku | maze
    preset: str      # config/train/<preset>.yaml
    overrides: list  # extra pretrain.py overrides
    label: str       # what the run stands for in the report

    @property
    def path(self):
        return f"{RUN_DIR}/{self.name}"


@dataclass
class Sweep:
    name: str
    run: str
    depths: list
    breadths: list
    global_batch_size: int
    max_eval_steps: int | None = None
    extra: list = field(default_factory=list)

    @property
    def path(self):
        return f"{WORK_DIR}/eval/{self.name}"


DATASETS = {
    "sudoku": Dataset("sudoku-g40", ["-m", "dataset.build_sudoku_dataset", "--generate", "1000", "--generate-test", "256",
                                     "--num-aug", "7", "--min-givens", "40", "--seed", str(SEED)]),
    "maze": Dataset("maze-11", ["-m", "dataset.build_maze_unique_dataset", "--grid-size", "11", "--train-samples", "1000",
                                "--test-samples", "256", "--min-path-length", "8", "--max-path-length", "24",
                                "--seed", str(SEED)]),
}

D = f"arch.halt_max_steps={TRAIN_DEPTH}"
# Sudoku presets do H_cycles 2 x (L_cycles 2 + 1) x L_layers 2 = 12 block applications per step; the
# feed-forward model gets 12 untied blocks applied once, so FF and the one-step weight-tied model
# spend the same 12 blocks per answer.
RUNS = [
    Run("sudoku-ff", "sudoku", "ff_sudoku_cpu", ["arch.L_layers=12"], "feed-forward, 12 untied blocks"),
    Run("sudoku-tied", "sudoku", "trm_sudoku_cpu", ["arch.halt_max_steps=1"], "weight-tied, 1 step (12 blocks)"),
    Run("sudoku-tied-sup", "sudoku", "trm_sudoku_cpu", [D, "arch.act_halting=false"],
        "+ supervision over 16 steps, no halting"),
    Run("sudoku-trm", "sudoku", "trm_sudoku_cpu", [D], "+ halting (TRM)"),
    Run("sudoku-eqr", "sudoku", "eqr_sudoku_cpu", [D], "EqR"),
    Run("maze-trm", "maze", "trm_maze_cpu", [D], "TRM"),
    Run("maze-trm-ri", "maze", "trm_maze_cpu", [D, "arch.random_init=true", "arch.lambda_=1.0", "arch.noise_scale=0.0"],
        "TRM + random init (RI)"),
    Run("maze-eqr", "maze", "eqr_maze_cpu", [D], "TRM + RI + path noise (NI) = EqR"),
]
RUNS_BY_NAME = {r.name: r for r in RUNS}

SWEEPS = [Sweep("sudoku-ff-d1", "sudoku-ff", [1], [1], 64)]
SWEEPS += [Sweep(f"{r.name}-b1", r.name, DEPTHS, [1], 64, extra=["halt=true"]) for r in RUNS if r.name != "sudoku-ff"]
# The breadth grid costs 64 trajectories per puzzle: 32 puzzles for the two EqR models. TRM with its
# fixed initial state runs the same trajectory B times, so it gets no breadth grid.
SWEEPS += [Sweep(f"{name}-grid", name, DEPTHS, BREADTHS, 8, max_eval_steps=4, extra=["halt=true"])
           for name in ("sudoku-eqr", "maze-eqr")]


# ----------------------------------------------------------------------------- ledger and stages

def load_ledger() -> dict:
    if not os.path.isfile(LEDGER):
        return {}
    with open(LEDGER) as f:
        return json.load(f)


def save_ledger(ledger: dict) -> None:
    os.makedirs(WORK_DIR, exist_ok=True)
    tmp = LEDGER + ".tmp"
    with open(tmp, "w") as f:
        json.dump(ledger, f, indent=1, sort_keys=True)
    os.replace(tmp, LEDGER)


def shown(cmd: list) -> str:
    """The command as a reader would type it (python instead of this interpreter's path)."""
    return " ".join(["python"] + [shlex.quote(a) for a in cmd[1:]])


def run_stage(ledger: dict, key: str, cmd: list) -> None:
    """Run one command with the study's environment; add its wall time to the ledger (over attempts)."""
    os.makedirs(os.path.join(WORK_DIR, "logs"), exist_ok=True)
    log_path = os.path.join(WORK_DIR, "logs", f"{key}.log")
    entry = ledger.setdefault(key, {"wall_s": 0.0, "attempts": []})
    print(f"[{key}] {shown(cmd)}  (log: {log_path})", flush=True)
    start = time.time()
    with open(log_path, "a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shown(cmd)}\n")
        log.flush()
        code = subprocess.call(cmd, cwd=ROOT, env={**os.environ, **ENV}, stdout=log, stderr=subprocess.STDOUT)
    wall = time.time() - start
    entry["wall_s"] += wall
    entry["attempts"].append({"command": shown(cmd), "wall_s": round(wall, 1), "exit_code": code,
                              "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")})
    save_ledger(ledger)
    if code != 0:
        raise SystemExit(f"error: stage {key} failed with exit code {code}; see {log_path}")
    print(f"[{key}] done in {wall:.0f} s", flush=True)


def dataset_done(ds: Dataset) -> bool:
    return all(os.path.isfile(os.path.join(ROOT, ds.path, s, "dataset.json")) for s in ("train", "test"))


def dataset_cmd(ds: Dataset) -> list:
    return [sys.executable] + ds.args + ["--output-dir", ds.path]


def latest_step(run: Run) -> int | None:
    latest = os.path.join(ROOT, run.path, "latest")
    if not os.path.isfile(latest):
        return None
    with open(latest) as f:
        name = f.read().strip()
    return int(name.removeprefix("step_").removesuffix(".pt"))


def final_checkpoint(run: Run) -> str:
    return f"{run.path}/step_{TRAIN_STEPS}.pt"


def train_cmd(run: Run, resume: bool) -> list:
    return [sys.executable, "pretrain.py", "--config-name", f"train/{run.preset}",
            f"data_path={DATASETS[run.task].path}", f"checkpoint_path={run.path}", f"run_name={run.name}",
            f"seed={SEED}", f"max_steps={TRAIN_STEPS}", "log_interval_steps=50", "eval_interval_steps=500",
            "checkpoint_interval_steps=500",
            *run.overrides, f"resume={'true' if resume else 'false'}"]


def sweep_done(sweep: Sweep) -> bool:
    return os.path.isfile(os.path.join(ROOT, sweep.path, "results.json"))


def sweep_cmd(sweep: Sweep, resume: bool) -> list:
    run = RUNS_BY_NAME[sweep.run]
    cmd = [sys.executable, "evaluate.py", f"checkpoint={final_checkpoint(run)}",
           f"data_path={DATASETS[run.task].path}", f"depths=[{','.join(map(str, sweep.depths))}]",
           f"breadths=[{','.join(map(str, sweep.breadths))}]", f"global_batch_size={sweep.global_batch_size}",
           f"seed={SEED}", f"output_dir={sweep.path}", "progress=false", "save_every_batches=1", *sweep.extra]
    if sweep.max_eval_steps:
        cmd.append(f"max_eval_steps={sweep.max_eval_steps}")
    return cmd + (["resume=true"] if resume else [])


def stages():
    """(key, done, command) for every stage, in the order they run."""
    out = []
    for task, ds in DATASETS.items():
        out.append((f"data-{task}", dataset_done(ds), dataset_cmd(ds)))
    for run in RUNS:
        step = latest_step(run)
        out.append((f"train-{run.name}", step == TRAIN_STEPS, train_cmd(run, resume=step is not None)))
    for sweep in SWEEPS:
        partial = os.path.isdir(os.path.join(ROOT, sweep.path, "partial"))
        out.append((f"eval-{sweep.name}", sweep_done(sweep), sweep_cmd(sweep, resume=partial)))
    return out


def run_all() -> None:
    ledger = load_ledger()
    for key, done, cmd in stages():
        if done:
            print(f"[{key}] finished earlier, skipped", flush=True)
            continue
        run_stage(ledger, key, cmd)
        ledger = load_ledger()
    # stages() is recomputed so that later stages see what earlier ones wrote
    if not all(done for _, done, _ in stages()):
        raise SystemExit("error: some stages did not finish; rerun this script to continue them")


def main(argv: list) -> int:
    os.chdir(ROOT)
    what = argv[0] if argv else "all"
    if what == "--list":
        ledger = load_ledger()
        for key, done, cmd in stages():
            wall = ledger.get(key, {}).get("wall_s")
            print(f"{'done' if done else 'todo'}  {key:28s} {f'{wall:7.0f} s' if wall else '':>9s}  {shown(cmd)}")
        return 0
    if what not in ("all", "run", "report"):
        print(f"error: unknown command {what!r} (expected run, report, --list or nothing)", file=sys.stderr)
        return 2
    if what in ("all", "run"):
        run_all()
    if what in ("all", "report"):
        from scripts.cpu_repro_report import write_report  # noqa: E402  (heavy imports only when reporting)
        write_report()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
