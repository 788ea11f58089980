"""Training curves of a run folder: metrics.jsonl (read through utils/run_folder.py) -> training_curves.png.

Three panels over the optimizer step: the training losses, exact accuracy (train batches against
the periodic test evaluation, token accuracy dashed) and the learning rate. pretrain.py draws it at the
end of a run; `python scripts/plot_run.py RUN_DIR` draws it for any run folder, finished or not.
"""
import os

from evaluation import render
from utils.errors import RunError
from utils.run_folder import EVAL, LR, STEP, TRAIN, read_metrics

CURVES_NAME = "training_curves.png"


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r[STEP], r[key]) for r in records if r.get(key) is not None]
    return [s for s, _ in points], [v for _, v in points]


def plot_training_curves(run_dir: str, path: str | None = None) -> str:
    """Draw the curves of `run_dir`'s metrics.jsonl to `path` (default: <run_dir>/training_curves.png)."""
    metrics = os.path.join(run_dir, "metrics.jsonl")
    records = read_metrics(metrics)
    if not records:
        raise RunError(f"{metrics}: no metrics to plot (is {run_dir} a training run folder?)")
    path = path or os.path.join(run_dir, CURVES_NAME)

    plt = render.pyplot()
    fig, (loss, accuracy, lr) = plt.subplots(3, 1, figsize=(7, 8), sharex=True)
    for key, label in ((TRAIN["lm_loss"], "answer loss (train)"), (TRAIN["q_halt_loss"], "halting loss (train)")):
        loss.plot(*_series(records, key), label=label)
    loss.set_yscale("log")
    loss.set_ylabel("loss per puzzle")
    for key, label, style in ((TRAIN["exact_accuracy"], "exact, train batches", "-"),
                              (EVAL["exact_accuracy"], "exact, test evaluation", "o-"),
                              (TRAIN["accuracy"], "token, train batches", "--"),
                              (EVAL["accuracy"], "token, test evaluation", "o--")):
        steps, values = _series(records, key)
        accuracy.plot(steps, [100 * v for v in values], style, label=label, markersize=4)
    accuracy.set_ylabel("accuracy (%)")
    accuracy.set_ylim(0, 100)
    lr.plot(*_series(records, LR))
    lr.set_ylabel("learning rate")
    lr.set_xlabel("optimizer step")
    for ax in (loss, accuracy, lr):
        ax.grid(True, alpha=0.3)
    for ax in (loss, accuracy):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    last = records[-1][STEP]
    fig.suptitle(f"{os.path.basename(os.path.abspath(run_dir))}: training curves to step {last}", fontsize=10)
    render.save_figure(fig, path)
    return path
