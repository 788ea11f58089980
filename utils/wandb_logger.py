"""A training run's metrics: one JSON line per log step in <run folder>/metrics.jsonl, plus W&B when it can be
started (never required: no key, no server or no wandb package and the run goes on with the file alone)."""
import os
import sys

from tqdm import tqdm

from utils.network import reachable
from utils.run_folder import STEP, append_metrics


class Logger:
    def __init__(self, run_dir: str, project: str, run_name: str, mode: str | None, config: dict):
        """mode: online, offline or disabled; None: $WANDB_MODE, else online with an API key, offline without."""
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.wandb = None
        mode = mode or os.environ.get("WANDB_MODE")
        if mode is None:
            mode = "online" if os.environ.get("WANDB_API_KEY") or _netrc_has_wandb() else "offline"
        if mode == "disabled":
            return
        server = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
        if mode == "online" and not reachable(server):
            tqdm.write(f"warning: the W&B server {server} cannot be reached; logging to W&B offline "
                       f"(`wandb sync {run_dir}/wandb/offline-run-*` uploads it later)", file=sys.stderr)
            mode = "offline"
        try:
            import wandb
            self.wandb = wandb.init(project=project, name=run_name, id=_wandb_id(run_name), resume="allow",
                                    dir=run_dir, mode=mode, config=config, settings=wandb.Settings(init_timeout=10))
        except Exception as e:
            self.warn(f"wandb could not start ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}); "
                      f"logging to {self.path} only")

    def warn(self, message: str) -> None:
        tqdm.write(f"warning: {message}", file=sys.stderr)
        self.wandb = None

    def log(self, metrics: dict) -> None:
        append_metrics(self.path, metrics)
        if self.wandb is not None:
            try:
                self.wandb.log(metrics, step=metrics[STEP])
            except Exception as e:
                self.warn(f"wandb.log failed ({type(e).__name__}); W&B logging is off for the rest of the run")

    def finish(self) -> None:
        if self.wandb is not None:
            try:
                self.wandb.finish()
            except Exception:
                pass


def _netrc_has_wandb() -> bool:
    path = os.path.expanduser("~/.netrc")
    try:
        with open(path) as f:
            return "api.wandb.ai" in f.read()
    except OSError:
        return False


def _wandb_id(run_name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in run_name)[:64]
