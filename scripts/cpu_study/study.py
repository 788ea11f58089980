"""The CPU reproduction study as data: its datasets, training runs and evaluation sweeps, and the stages
(commands) that make them. The prose about it is docs/cpu_reproduction.template.md; the numbers are
collected by report.py.

Stage keys and output folders are stable: a finished stage is found by its folder, so renaming one
reruns it.
"""
import os
import sys
from dataclasses import dataclass, field

from cpu_study.runner import Stage

SEED = 0
DATA_DIR = "data/cpu_repro"
RUN_DIR = "checkpoints/cpu_repro"
WORK_DIR = "outputs/cpu_repro"
DEPTHS = [1, 2, 4, 8, 16, 32, 64]
BREADTHS = [1, 4, 16, 64]
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
    arm: str         # the group of runs it is compared within (and plotted with)
    task: str        # sudoku | maze: which dataset
    preset: str      # config/train/<preset>.yaml
    overrides: list  # extra pretrain.py overrides
    label: str       # what the run stands for in the report
    steps: int
    seed: int = SEED  # training seed (evaluation always uses SEED)

    @property
    def path(self):
        return f"{RUN_DIR}/{self.name}"

    @property
    def final_checkpoint(self):
        from utils.checkpoint import shard_name  # here, so that importing the study does not import torch
        return f"{self.path}/{shard_name(self.steps, 0)}"


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
    "maze": Dataset("maze-11", ["-m", "dataset.build_maze_unique_dataset", "--grid-size", "11", "--train-samples", "20000",
                                "--test-samples", "256", "--min-path-length", "8", "--max-path-length", "24",
                                "--seed", str(SEED)]),
}

# Arms: Sudoku at D=16 in bfloat16 (the construction path and the first RI/NI ablation), mazes at D=4
# (at D=16 no 11x11 maze model got past 3% of the test mazes, docs), and Sudoku again at D=4 in
# float32, where the training log and evaluate.py agree (no bf16 units on this CPU: 10x faster).
ARMS = {"sudoku": "Sudoku, trained at D=16, bfloat16", "maze": "Maze 11x11, trained at D=4, bfloat16",
        "sudoku-d4": "Sudoku, trained at D=4, float32"}
D16, D4, F32 = "arch.halt_max_steps=16", "arch.halt_max_steps=4", "arch.forward_dtype=float32"
BF16 = "arch.forward_dtype=bfloat16"
RI = ["arch.random_init=true", "arch.lambda_=1.0", "arch.noise_scale=0.0"]
# Sudoku presets do H_cycles 2 x (L_cycles 2 + 1) x L_layers 2 = 12 block applications per step; the
# feed-forward model gets 12 untied blocks applied once, so FF and the one-step weight-tied model
# spend the same 12 blocks per answer.
RUNS = [
    Run("sudoku-ff", "sudoku", "sudoku", "ff_sudoku_cpu", ["arch.L_layers=12"], "feed-forward, 12 untied blocks", 2000),
    Run("sudoku-tied", "sudoku", "sudoku", "trm_sudoku_cpu", ["arch.halt_max_steps=1"], "weight-tied, 1 step (12 blocks)",
        2000),
    Run("sudoku-tied-sup", "sudoku", "sudoku", "trm_sudoku_cpu", [D16, "arch.act_halting=false"],
        "+ supervision over 16 steps, no halting", 2000),
    Run("sudoku-trm", "sudoku", "sudoku", "trm_sudoku_cpu", [D16], "+ halting (TRM)", 2000),
    Run("sudoku-trm-ri", "sudoku", "sudoku", "trm_sudoku_cpu", [D16, *RI], "TRM + random init (RI)", 2000),
    Run("sudoku-eqr", "sudoku", "sudoku", "eqr_sudoku_cpu", [D16], "EqR (TRM + RI + path noise NI)", 2000),
]
RI_NI_KINDS = (("trm", "trm", [], "TRM"), ("trm-ri", "trm", RI, "TRM + random init (RI)"),
               ("eqr", "eqr", [], "TRM + RI + path noise (NI) = EqR"))
# The maze RI/NI ablation with training seeds 0 and 1, so its ranking is not one seed's luck.
RUNS += [Run(f"maze-{kind}{'-s1' if seed else ''}", "maze", "maze", f"{model}_maze_cpu", [D4, *extra],
             label + (", seed 1" if seed else ""), 3000, seed)
         for seed in (0, 1) for kind, model, extra, label in RI_NI_KINDS]
# 1000 steps: at step 500 every Sudoku run of the D=16 arm still solved no test puzzle.
RUNS += [Run(f"sudoku-d4-{kind}{'-s1' if seed else ''}", "sudoku-d4", "sudoku", f"{model}_sudoku_cpu", [D4, F32, *extra],
             f"{label}, D=4, float32" + (", seed 1" if seed else ""), 1000, seed)
         for seed in (0, 1) for kind, model, extra, label in RI_NI_KINDS]
# HRM beside them, a subject of docs/diagnostics.md: its own recipe shrunk like TRM's (no EMA, lr 1e-3), with the
# token-mixing MLP of the TRM presets (ours: HRM's code has attention only). With attention it solved no test
# puzzle after 3000 steps (71% of the cells right), the copy-the-input plateau of the maze presets' note.
RUNS.append(Run("sudoku-d4-hrm", "sudoku-d4", "sudoku", "hrm_sudoku_cpu",
                [D4, F32, "arch.mlp_t=true", "arch.pos_encodings=none"], "HRM (token MLP), D=4, float32", 1000))
# and on mazes (hrm_maze_cpu has the token MLP itself), in float32 like the Sudoku HRM (this CPU has no bf16 units).
RUNS.append(Run("maze-hrm", "maze", "maze", "hrm_maze_cpu", [D4, F32], "HRM (token MLP), float32", 3000))
RUNS_BY_NAME = {r.name: r for r in RUNS}

CONSTRUCTION = ["sudoku-ff", "sudoku-tied", "sudoku-tied-sup", "sudoku-trm", "sudoku-eqr"]
# (what, [TRM, TRM + RI, EqR]) triples compared for RI and NI
RI_NI = {"sudoku": ["sudoku-trm", "sudoku-trm-ri", "sudoku-eqr"],
         "maze": ["maze-trm", "maze-trm-ri", "maze-eqr"],
         "maze, training seed 1": ["maze-trm-s1", "maze-trm-ri-s1", "maze-eqr-s1"]}
RI_NI_D4 = {"sudoku D=4, training seed 0": ["sudoku-d4-trm", "sudoku-d4-trm-ri", "sudoku-d4-eqr"],
            "sudoku D=4, training seed 1": ["sudoku-d4-trm-s1", "sudoku-d4-trm-ri-s1", "sudoku-d4-eqr-s1"]}
D4_DEPTHS = [1, 2, 4, 8, 16]  # a one-pass sweep costs its deepest D; 64 would cost 4x

SWEEPS = [Sweep("sudoku-ff-d1", "sudoku-ff", [1], [1], 64)]
SWEEPS += [Sweep(f"{r.name}-b1", r.name, D4_DEPTHS if r.arm == "sudoku-d4" else DEPTHS, [1], 64, extra=["halt=true"])
           for r in RUNS if r.name != "sudoku-ff"]
# The breadth grid costs 64 trajectories per puzzle: the first 32 Sudoku puzzles and 96 mazes (a maze
# trajectory is cheaper).
SWEEPS += [Sweep(f"{name}-grid", name, DEPTHS, BREADTHS, 8, max_eval_steps=batches, extra=["halt=true"])
           for name, batches in (("sudoku-eqr", 4), ("maze-eqr", 12))]
# The float32 D=4 arm (trainable on a CPU without bf16 units) gets breadth grids for TRM and EqR alike: TRM
# starts each of its B trajectories from a fresh draw (evaluate.py's different_init_reset_std, as the authors'
# evaluator), so majority vote against top-1 by convergence can be compared for the un-shaped model too; the
# headline cell's per-puzzle answers are saved for paired intervals.
SWEEPS += [Sweep(f"sudoku-d4-{kind}-grid", f"sudoku-d4-{kind}", D4_DEPTHS, BREADTHS, 8, max_eval_steps=4,
                 extra=["save_outputs=true"]) for kind in ("trm", "eqr")]
# The agreement check: the trained depth on the first 256 training examples, against the training log.
SWEEPS += [Sweep(f"{r.name}-train", r.name, [4], [1], 64, max_eval_steps=4, extra=["split=train"])
           for r in RUNS if r.arm == "sudoku-d4"]

# Final EqR checkpoints copied, slimmed, into the repository when they reach SHIP_FLOOR exact accuracy
# at D=16, B=1 (tests/test_shipped_checkpoints.py checks the same floor).
SHIPPED = {"sudoku-eqr": "checkpoints/shipped/eqr_sudoku_cpu.pt", "maze-eqr": "checkpoints/shipped/eqr_maze_cpu.pt"}
SHIP_FLOOR = 0.25


def dataset_argv(ds: Dataset) -> list:
    return [sys.executable] + ds.args + ["--output-dir", ds.path]


def train_argv(run: Run, resume: bool) -> list:
    # A run without a dtype of its own trains in bfloat16, as measured: the presets' `auto` would pick float32
    # on a CPU without bf16 units.
    dtype = [] if any("forward_dtype" in o for o in run.overrides) else [BF16]
    return [sys.executable, "pretrain.py", "--config-name", f"train/{run.preset}",
            f"data_path={DATASETS[run.task].path}", f"checkpoint_path={run.path}", f"run_name={run.name}",
            f"seed={run.seed}", f"max_steps={run.steps}", "log_interval_steps=50", "eval_interval_steps=500",
            "checkpoint_interval_steps=500", *dtype, *run.overrides, f"resume={'true' if resume else 'false'}"]


def sweep_argv(sweep: Sweep) -> list:
    run = RUNS_BY_NAME[sweep.run]
    argv = [sys.executable, "evaluate.py", f"checkpoint={run.final_checkpoint}",
            f"data_path={DATASETS[run.task].path}", f"depths=[{','.join(map(str, sweep.depths))}]",
            f"breadths=[{','.join(map(str, sweep.breadths))}]", f"global_batch_size={sweep.global_batch_size}",
            f"seed={SEED}", f"output_dir={sweep.path}", "progress=false", "save_every_batches=1", *sweep.extra]
    return argv + ([f"max_eval_steps={sweep.max_eval_steps}"] if sweep.max_eval_steps else [])


def latest_step(run: Run) -> int | None:
    from utils.checkpoint import latest_step as run_folder_latest_step

    return run_folder_latest_step(run.path)


def stages() -> list:
    """Every stage in the order it runs: the data, then run by run its training and its sweeps (paths
    are relative to the repository root, the working directory)."""
    out = [Stage(f"data-{task}", dataset_argv(ds),
                 done=lambda ds=ds: all(os.path.isfile(f"{ds.path}/{s}/dataset.json") for s in ("train", "test")))
           for task, ds in DATASETS.items()]
    for r in RUNS:
        out.append(Stage(f"train-{r.name}", train_argv(r, resume=False), done=lambda r=r: latest_step(r) == r.steps,
                         resume_argv=train_argv(r, resume=True), started=lambda r=r: latest_step(r) is not None))
        out += [Stage(f"eval-{s.name}", sweep_argv(s), done=lambda s=s: os.path.isfile(f"{s.path}/results.json"),
                      resume_argv=sweep_argv(s) + ["resume=true"], started=lambda s=s: os.path.isdir(f"{s.path}/partial"))
                for s in SWEEPS if s.run == r.name]
    return out
