"""`pip install .` gives console commands that work from any folder (the config files travel as package data).

Offline: the fresh venv sees this interpreter's site-packages (torch, hydra, setuptools, pip) through a .pth
file, and a copy of the project is installed with --no-deps --no-build-isolation.
"""
import os
import signal
import shutil
import site
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ("pyproject.toml", "README.md", "LICENSE", "pretrain.py", "evaluate.py", "solve.py", "diagnose.py")
PACKAGES = ("config", "dataset", "models", "evaluation", "utils")
TINY = ["device=cpu", "wandb_mode=disabled", "global_batch_size=8", "eval_batch_size=8", "eval_max_examples=16",
        "arch.hidden_size=32", "arch.num_heads=2", "arch.L_layers=1", "arch.H_cycles=2", "arch.L_cycles=1",
        "arch.halt_max_steps=3", "arch.forward_dtype=float32", "arch.mlp_t=true"]


def make_venv(path) -> str:
    """A venv without pip of its own whose python also sees this interpreter's packages; returns its bin folder."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = str(path / "bin" / "python")
    packages = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(packages, "parent.pth"), "w") as f:
        f.write("\n".join(site.getsitepackages()) + "\n")
    return str(path / "bin")


@pytest.mark.slow  # a pip install and seven commands, each importing torch: about a minute
def test_console_commands_of_a_plain_install_run_from_another_folder(tmp_path):
    pytest.importorskip("setuptools")
    source = tmp_path / "source"
    source.mkdir()
    for name in FILES:
        shutil.copy(os.path.join(ROOT, name), source)
    for name in PACKAGES:
        shutil.copytree(os.path.join(ROOT, name), source / name, ignore=shutil.ignore_patterns("__pycache__"))
    bin_dir = make_venv(tmp_path / "venv")
    subprocess.run([os.path.join(bin_dir, "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    str(source)], check=True, capture_output=True)
    shutil.rmtree(source)  # the commands must not need the files they were installed from

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled", HF_HUB_OFFLINE="1")

    def run(command, *args):
        done = subprocess.run([os.path.join(bin_dir, command), *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, f"{command} {' '.join(args)}:\n{done.stderr[-3000:]}"
        return done.stdout + done.stderr

    assert "--min-givens" in run("eqr-build-sudoku", "--help")
    assert "--grid-size" in run("eqr-build-maze", "--help")
    run("eqr-build-sudoku", "--generate", "48", "--generate-test", "16", "--num-aug", "1", "--min-givens", "50",
        "--output-dir", "sudoku")
    assert "test: ok" in run("eqr-validate", "sudoku")
    assert "eqr_sudoku_cpu" in run("eqr-train", "--help")  # the presets are found in the installed config
    run("eqr-train", "--config-name", "train/eqr_sudoku", "data_path=sudoku", "checkpoint_path=run", "max_steps=2", *TINY)
    assert os.path.isfile(work / "run" / "step_2.pt")
    out = run("eqr-evaluate", "checkpoint=run/step_2.pt", "output_dir=results", "progress=false", "plots=false")
    assert "HEADLINE" in out and os.path.isfile(work / "results" / "results.json")
    out = run("eqr-solve", "checkpoint=run/step_2.pt", "data_path=sudoku", "index=0", "image=board.png")
    assert "valid" in out and os.path.isfile(work / "board.png")
    run("eqr-diagnose", "checkpoint=run/step_2.pt", "output_dir=diagnostics", "max_examples=2", "depth=2",
        "lyapunov_k=1", "progress=false")
    assert os.path.isfile(work / "diagnostics" / "diagnostics.csv")


def test_training_help_lists_the_presets_and_the_chosen_presets_defaults(capsys):
    import pretrain
    assert pretrain.main(["--help", "--config-name", "train/eqr_sudoku_cpu", "lr=0.5"]) == 0
    out = capsys.readouterr().out
    assert "eqr_sudoku_cpu, eqr_sudoku_quickstart, ff_maze_cpu, ff_maze_unique, ff_sudoku" in out and "maze_unique, sudoku" in out
    for line in ("  max_steps=3000", "  arch.hidden_size=64", "  lr=0.5", "  ema=true", "  run_name=null"):
        assert line + "\n" in out


def test_evaluation_help_lists_the_presets_and_defaults(capsys):
    import evaluate
    assert evaluate.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "elastic, headline, paper_grid" in out and "  different_init=1\n" in out and "  checkpoint=???\n" in out


@pytest.mark.parametrize("module, default", [("build_sudoku_dataset", "--num-aug NUM_AUG     augmented copies per "
                                                                      "training puzzle (default: 1000)"),
                                             ("build_maze_unique_dataset", "random seed (default: 42)")])
def test_builder_help_shows_defaults_and_the_example_as_written(module, default, capsys):
    import importlib
    with pytest.raises(SystemExit):
        importlib.import_module(f"dataset.{module}").parse_args(["--help"])
    out = capsys.readouterr().out
    assert default in out
    assert f"python -m dataset.{module} --output-dir" in out and " \\\n        --" in out  # line continuation kept


@pytest.mark.parametrize("entry", ["pretrain.py", "evaluate.py", "solve.py", "diagnose.py"])
def test_help_does_not_import_torch(entry):
    """--help answers before torch is imported (it takes seconds): the usage, with nothing of torch loaded."""
    probe = ("import runpy, sys; sys.argv = [sys.argv[1], '--help']\n"
             "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
             "except SystemExit as e:\n    assert e.code == 0, e.code\n"
             "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded')")
    done = subprocess.run([sys.executable, "-c", probe, entry], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "torch not loaded" and f"python {entry}" in done.stdout


@pytest.mark.slow  # two processes under torchrun, each starting torch
@pytest.mark.parametrize("script", ["train.sh", "torchrun"])
def test_a_missing_dataset_under_torchrun_is_one_error_line(script, tmp_path):
    """Two processes find the same missing dataset: one `error:` line that says how to get it, exit status 2, and
    none of torchrun's report of a failed worker (scripts/train.sh launches through utils/torchrun.py)."""
    env = {**os.environ, "NPROC_PER_NODE": "2", "OMP_NUM_THREADS": "1"}
    missing = tmp_path / "nowhere"
    launcher = (["bash", "scripts/train.sh", "eqr_sudoku_cpu"] if script == "train.sh" else
                [sys.executable, "-m", "utils.torchrun", "--standalone", "--nproc-per-node", "2", "pretrain.py",
                 "--config-name", "train/eqr_sudoku_cpu"])
    done = subprocess.run([*launcher, f"data_path={missing}"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, start_new_session=True)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: {missing}/train/dataset.json: missing (expected a dataset split folder with dataset.json); build the "
        f"set with python -m dataset.build_sudoku_dataset or dataset.build_maze_unique_dataset --output-dir {missing}, "
        f"or download the authors' with bash scripts/download_artifacts.sh (docs/datasets.md)"]


def test_a_worker_child_holding_stderr_does_not_hold_the_launch_open(tmp_path):
    """A worker that leaves a child of its own holding stderr (here `sleep 120`) and fails with its `error:`
    line: utils/torchrun.py returns the worker's status once torchrun exits, without waiting for that child."""
    script = tmp_path / "worker.py"
    pid_file = tmp_path / "sleeper.pid"
    script.write_text(f"import subprocess, sys\nsleeper = subprocess.Popen(['sleep', '120'])\n"
                      f"open({str(pid_file)!r}, 'w').write(str(sleeper.pid))\n"
                      f"sys.stderr.write('error: a bad input\\n')\nsys.exit(2)\n")
    launch = subprocess.Popen([sys.executable, "-m", "utils.torchrun", "--standalone", "--nproc-per-node", "1",
                               str(script)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        _, err = launch.communicate(timeout=90)  # a hang guard: the sleeper holds the pipe for 120 s
    finally:
        launch.kill()
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert launch.returncode == 2
    assert err.splitlines() == ["error: a bad input"]


@pytest.mark.parametrize("worker_said_error", [True, False])
def test_a_launcher_failure_after_a_workers_error_line_stays_quiet(worker_said_error):
    """torchrun's agent itself failing (as torch 2.4.1's once did under load while tearing down workers that had
    exited with their `error:` line): after such a line the launcher's traceback is dropped and the status is the
    worker's 2; without one, the traceback shows in full and the status is 1."""
    said = "print('error: a bad input', file=sys.stderr, flush=True); " if worker_said_error else ""
    probe = ("import sys\nfrom utils import torchrun\n"
             f"def launch(argv):\n    {said}raise RuntimeError('the agent failed')\n"
             "torchrun.launch = launch\nsys.exit(torchrun.main([]))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    if worker_said_error:
        assert (done.returncode, done.stderr.splitlines()) == (2, ["error: a bad input"])
    else:
        assert done.returncode == 1
        lines = done.stderr.splitlines()
        assert lines[0] == "Traceback (most recent call last):" and lines[-1] == "RuntimeError: the agent failed"


def test_a_launch_from_a_python_without_torch_says_so_in_one_line():
    """scripts/train.sh run with a `python` that lacks torch (the venv not activated): one line that says what is
    missing and how to get it, not a silent exit 1."""
    probe = ("import sys; sys.modules['torch'] = None\n"  # what a Python without torch finds
             "from utils import torchrun; sys.exit(torchrun.main(['--standalone', 'pretrain.py']))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith("error: torch") and "not installed for" in line and ". .venv/bin/activate" in line
