"""The study's shipped checkpoints: slim copies of the final EqR runs (checkpoints/shipped/) and their
card, checkpoints/README.md."""
import os

from cpu_study import study
from cpu_study.report import acc, b1, fmt_wall, md_table, pct
from utils.files import atomic_write

README = "checkpoints/README.md"


def export(res: dict, before: dict) -> dict:
    """Copy each final EqR checkpoint that reaches the floor, slimmed (no optimizer, carry, RNG or loader
    state). A run whose checkpoint is not in this checkout keeps its shipped file and its record in `before`."""
    from models.checkpoint import load_for_eval
    from utils.checkpoint import write_slim

    shipped = {}
    for name, dest in study.SHIPPED.items():
        run = study.RUNS_BY_NAME[name]
        score = acc(res, b1(name), 16)
        if score is None or score < study.SHIP_FLOOR:
            if os.path.exists(dest):
                os.remove(dest)
            continue
        if not os.path.isfile(run.final_checkpoint):
            if name in before and os.path.isfile(dest):
                shipped[name] = before[name]
            continue
        slim = write_slim(run.final_checkpoint, dest)
        load_for_eval(dest)  # must load through the evaluation path
        shipped[name] = {"path": dest, "bytes": os.path.getsize(dest), "step": slim["step"]}
    return shipped


def write_readme(res: dict) -> None:
    L = ["# Checkpoints\n",
         "`checkpoints/<project>/<run>/` holds training runs (git-ignored). `checkpoints/shipped/` holds small "
         "CPU-trained EqR checkpoints, written by `scripts/reproduce_cpu.py` (see "
         "[docs/cpu_reproduction.md](../docs/cpu_reproduction.md)). Each is a slim copy of a run's last checkpoint: "
         "the weights, EMA weights (which evaluation uses) and resolved training config, no optimizer, carry, RNG or "
         "loader state (the format: `utils/checkpoint.py`). Only tensors and plain data: they load with "
         "`torch.load(path, weights_only=True)`, `models.checkpoint.load_for_eval(path)` and `evaluate.py`.\n"]
    depths = study.DEPTHS
    for name, s in res["shipped"].items():
        info, ds = res["runs"][name], res["datasets"][study.RUNS_BY_NAME[name].task]
        L.append(f"## `{s['path']}`\n")
        L.append(f"EqR on {'Sudoku (min 40 givens)' if info['task'] == 'sudoku' else '11x11 unique mazes'}, "
                 f"{info['params']:,} parameters, {s['bytes'] / 1e6:.2f} MB, step {s['step']}, seed {study.SEED}, "
                 f"trained at D={info['train_halt_max_steps']} in {fmt_wall(info['wall_s'])} on one CPU thread.\n")
        L.append(f"- data: `{ds['command']}`")
        L.append(f"- training: `OMP_NUM_THREADS=1 WANDB_MODE=disabled {info['command']}`")
        L.append("- exported by: `python scripts/reproduce_cpu.py report`\n")
        if b1(name) in res["sweeps"]:
            sw = res["sweeps"][b1(name)]
            L.append(f"Exact accuracy on the first {sw['puzzles']} test puzzles, B=1 (`{sw['command']}`):\n")
            L.append(md_table([f"D={d}" for d in depths], [[pct(acc(res, b1(name), d)) for d in depths]]) + "\n")
        grid = f"{name}-grid"
        if grid in res["sweeps"]:
            sw = res["sweeps"][grid]
            L.append(f"\nD=64 B=64 top-1 by convergence on {sw['puzzles']} puzzles: "
                     f"{pct(acc(res, grid, 64, 64, 'conv_top1'))} (`{sw['command']}`).\n")
        L.append("Evaluate it (build the data first with the command above; no network needed):\n")
        L.append(f"```bash\npython evaluate.py checkpoint={s['path']} data_path={ds['path']} "
                 f"depths=[1,4,16,64] breadths=[1,4] halt=true global_batch_size=64 max_eval_steps=1 "
                 f"output_dir=eval_results/{os.path.basename(s['path']).removesuffix('.pt')}\n```\n")
        L.append("(64 puzzles, D up to 64, B up to 4, with and without halting: about 30 s on one CPU core.)\n")
    for name in study.SHIPPED:
        if name not in res["shipped"]:
            L.append(f"`{name}` is not shipped: its exact accuracy at D=16, B=1, is below the shipping "
                     f"floor ({pct(study.SHIP_FLOOR)}%); see docs/cpu_reproduction.md.\n")
    L.append("`tests/test_shipped_checkpoints.py` builds a small fixed test slice offline, evaluates each shipped "
             "file through `evaluate.main` and checks it beats a floor that a freshly initialised model of the same "
             "config does not reach.\n")
    atomic_write(README, "\n".join(L))
