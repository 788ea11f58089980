"""scripts/quickstart.sh, as a user runs it: Ctrl-C during training stops the whole script with a checkpoint
and the way to continue; the same command then continues the run."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ["scripts", "config", "dataset", "models", "evaluation", "utils", "pretrain.py", "evaluate.py",
         "requirements.txt"]


@pytest.fixture
def checkout(tmp_path):
    """The files the quickstart needs, with .venv the environment running the tests (nothing is downloaded)."""
    if not os.path.isfile(os.path.join(sys.prefix, "bin", "activate")):
        pytest.skip("the tests do not run in a venv, so there is none for the quickstart to reuse")
    for part in PARTS:
        source = os.path.join(ROOT, part)
        copy = shutil.copytree if os.path.isdir(source) else shutil.copy
        copy(source, tmp_path / part, **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}))
    os.symlink(sys.prefix, tmp_path / ".venv")
    return tmp_path


def run_until(checkout, ready, stop) -> tuple[int, str]:
    """Start the quickstart, wait until ready() (a few minutes at most), call stop(process); -> (status, stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(["bash", "scripts/quickstart.sh"], cwd=checkout, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not ready():
            assert process.poll() is None and time.time() < deadline, process.communicate()[1][-3000:]
            time.sleep(0.5)
        stop(process)
        _, stderr = process.communicate(timeout=120)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return process.returncode, stderr


@pytest.mark.slow
def test_ctrl_c_stops_the_quickstart_with_a_checkpoint_and_the_way_on(checkout):
    run_dir = checkout / "checkpoints" / "eqr" / "eqr_sudoku_quickstart_g50_d2"
    # Ctrl-C in a terminal signals the whole foreground process group; once training has logged a step
    status, stderr = run_until(checkout, lambda: last_logged_step(run_dir) > 0,
                               lambda process: os.killpg(process.pid, signal.SIGINT))
    assert status == 130, stderr[-3000:]
    assert "quickstart stopped by SIGINT; run 'bash scripts/quickstart.sh' again to continue" in stderr
    assert "== 4/4" not in stderr and not (checkout / "eval_results").exists()  # evaluation never started
    latest = (run_dir / "latest").read_text().strip()
    assert (run_dir / latest).is_file()
    step = int(latest.removeprefix("step_").removesuffix(".pt"))

    # The same command continues the run from that checkpoint (stopped again, by SIGTERM to the script alone).
    status, stderr = run_until(checkout, lambda: last_logged_step(run_dir) > step,
                               lambda process: process.send_signal(signal.SIGTERM))
    assert f"resuming at step {step}" in stderr and status == 130, stderr[-3000:]
    assert "quickstart stopped by SIGTERM" in stderr


def last_logged_step(run_dir) -> int:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return json.loads(lines[-1])["step"] if lines and lines[-1].endswith("}") else 0
