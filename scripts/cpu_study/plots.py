"""The study's figures, drawn from results.json's dict alone (docs/cpu_reproduction/*.png)."""
import os

from cpu_study import study
from cpu_study.report import acc, b1, cell


def arm_runs(res: dict, arm: str) -> list:
    return [n for n, r in res["runs"].items() if r["arm"] == arm]


def axis(ax, title: str, xlabel: str, ylabel: str, log2: bool = True) -> None:
    if log2:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def plot_all(res: dict, folder: str) -> list:
    """Write every figure into `folder`; returns their file names."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    written = []

    def save(fig, name):
        path = os.path.join(folder, name)
        fig.savefig(path + ".tmp.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        os.replace(path + ".tmp.png", path)
        written.append(name)

    arms = list(study.ARMS.items())
    # construction path and RI/NI ablations, exact accuracy at D = 1, 16, 64 (the D=4 arm: its trained D, 16)
    panels = [(study.CONSTRUCTION, "Sudoku: construction path (FF: D=1 only)", (1, 16, 64)),
              (study.RI_NI["sudoku"], "Sudoku D=16: RI and NI", (1, 16, 64)),
              (study.RI_NI["maze"], "Maze 11x11: RI and NI", (1, 16, 64)),
              ([n for names in study.RI_NI_D4.values() for n in names], "Sudoku D=4, float32: RI and NI, seeds 0, 1",
               (1, 4, 16))]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4))
    for ax, (names, title, depths) in zip(axes, panels):
        names = [n for n in names if n in res["runs"]]
        for i, depth in enumerate(depths):
            vals = [100 * (acc(res, b1(n), depth) or 0) for n in names]
            ax.bar([j + (i - 1) * 0.27 for j in range(len(names))], vals, width=0.27, label=f"D={depth}")
        ax.set_xticks(range(len(names)), [n.split("-d4-" if "-d4-" in n else "-", 1)[1] for n in names], rotation=20)
        ax.set_ylabel("exact accuracy (%)")
        ax.set_ylim(0, max(5, ax.get_ylim()[1]))  # an all-zero panel still shows a readable axis
        ax.set_title(title)
        ax.legend()
    save(fig, "ablations.png")

    # depth extrapolation, B = 1
    fig, axes = plt.subplots(1, len(arms), figsize=(6 * len(arms), 4))
    for ax, (arm, title) in zip(axes, arms):
        names = [n for n in arm_runs(res, arm) if n != "sudoku-ff" and b1(n) in res["sweeps"]]
        for n in names:
            ax.plot(study.DEPTHS, [None if acc(res, b1(n), d) is None else 100 * acc(res, b1(n), d) for d in study.DEPTHS],
                    marker="o", label=n)
        for trained in sorted({res["runs"][n]["train_halt_max_steps"] for n in names}):
            ax.axvline(trained, color="grey", ls=":", lw=1)
        axis(ax, title, "depth D (supervision steps at test time; trained depth dotted)", "exact accuracy (%), B=1")
    save(fig, "depth.png")

    # breadth and selection rules, EqR grids
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for col, (task, title) in enumerate((("sudoku", "Sudoku"), ("maze", "Maze 11x11"))):
        sweep = f"{task}-eqr-grid"
        if sweep not in res["sweeps"]:
            continue
        ax = axes[0, col]
        for b in study.BREADTHS:
            rule = "traj1" if b == 1 else "conv_top1"
            ax.plot(study.DEPTHS, [100 * (acc(res, sweep, d, b, rule) or 0) for d in study.DEPTHS], marker="o",
                    label=f"B={b}")
        ax.set_title(f"{title}: EqR, top-1 by convergence")
        ax = axes[1, col]
        b = max(study.BREADTHS)
        for rule, label in (("traj1", "one trajectory (B=1)"), ("conv_top1", f"top-1 by convergence (B={b})"),
                            ("majority", f"majority vote (B={b})"), (f"pass@{b}", f"pass@{b}")):
            ax.plot(study.DEPTHS, [100 * (acc(res, sweep, d, 1 if rule == "traj1" else b, rule) or 0)
                                   for d in study.DEPTHS], marker="o", label=label)
        ax.set_title(f"{title}: EqR, selection rules")
        for ax in axes[:, col]:
            axis(ax, ax.get_title(), "depth D", "exact accuracy (%)")
    save(fig, "breadth_selection.png")

    # elastic halting, B = 1: accuracy against block applications per puzzle
    fig, axes = plt.subplots(1, len(arms), figsize=(6 * len(arms), 4))
    for ax, (arm, title) in zip(axes, arms):
        for n in arm_runs(res, arm):
            if n in ("sudoku-ff", "sudoku-tied") or b1(n) not in res["sweeps"]:
                continue
            for rule, ls in (("traj1", "-"), ("traj1+halt", "--")):
                rows = [x for x in (cell(res, b1(n), d, 1, rule) for d in study.DEPTHS) if x]
                ax.plot([x["nfe_per_puzzle"] for x in rows], [100 * x["accuracy"] for x in rows], ls=ls, marker="o",
                        ms=3, label=f"{n}{' + halting' if 'halt' in rule else ''}")
        axis(ax, title, "block applications per puzzle (NFE)", "exact accuracy (%), B=1")
    save(fig, "halting.png")

    # training curves (the runs' own evaluation at the trained depth, EMA weights)
    fig, axes = plt.subplots(1, len(arms), figsize=(6 * len(arms), 4))
    for ax, (arm, title) in zip(axes, arms):
        for n in arm_runs(res, arm):
            curve = res["runs"][n]["eval_curve"]
            ax.plot([e["step"] for e in curve], [100 * e["exact"] for e in curve], marker="o", label=n)
        axis(ax, title, "training step", "exact accuracy (%) at the trained depth", log2=False)
    save(fig, "training.png")
    return written
