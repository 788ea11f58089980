"""One place maps processes to devices: every combination a user can bring either works or is one error line."""
import os
import re
import subprocess
import sys
import time

import pytest
import torch

import launch
import utils.processes
from utils.errors import ConfigError
from utils.processes import (ProcessSetupError, check_torch_version, choose_device, launch_env, native_forward_dtype,
                             report_error, resolve_forward_dtype)

# (device=, GPUs visible, local rank, processes on the node, processes in all) -> device, or a phrase of the error
CASES = [
    (None, 0, 0, 1, 1, "cpu"),
    (None, 1, 0, 1, 1, "cuda:0"),
    (None, 8, 7, 8, 8, "cuda:7"),
    (None, 8, 3, 4, 8, "cuda:3"),  # two nodes of four
    (None, 1, 0, 2, 2, "2 processes on this node but only 1 GPU(s) visible"),  # rank 0 refuses too
    (None, 1, 1, 2, 2, "2 processes on this node but only 1 GPU(s) visible"),
    ("cpu", 8, 5, 8, 8, "cpu"),
    ("cpu", 0, 1, 2, 2, "cpu"),
    ("cuda", 0, 0, 1, 1, "no CUDA GPU is visible"),
    ("cuda", 2, 1, 2, 2, "cuda:1"),
    ("cuda", 2, 0, 3, 3, "3 processes on this node but only 2 GPU(s)"),
    ("cuda:3", 8, 0, 1, 1, "cuda:3"),
    ("cuda:1", 1, 0, 1, 1, "only 1 GPU(s) visible"),
    ("cuda:0", 8, 1, 2, 2, "would put all 2 processes on one GPU"),
    ("cuda:0", 0, 0, 1, 1, "no CUDA GPU is visible"),
    ("tpu", 1, 0, 1, 1, "expected cpu, cuda or cuda:N"),
    ("cuda:x", 1, 0, 1, 1, "expected cpu, cuda or cuda:N"),
    ("cpu:1", 0, 0, 1, 1, "expected cpu, cuda or cuda:N"),
    ("mps", 0, 0, 1, 1, "'mps' is not supported"),
]


@pytest.mark.parametrize("requested,gpus,local_rank,local_world,world,expected", CASES)
def test_choose_device(requested, gpus, local_rank, local_world, world, expected):
    if expected in ("cpu",) or expected.startswith("cuda:"):
        assert choose_device(requested, local_rank, local_world, world, gpus) == torch.device(expected)
    else:
        with pytest.raises(ProcessSetupError, match=re.escape(expected)):
            choose_device(requested, local_rank, local_world, world, gpus)


def test_launch_env():
    assert launch_env({}) == (0, 1, 0, 1)
    assert launch_env({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}) == (5, 8, 1, 4)
    for bad in ({"RANK": "2", "WORLD_SIZE": "2"}, {"WORLD_SIZE": "two"}, {"LOCAL_RANK": "4", "LOCAL_WORLD_SIZE": "4"}):
        with pytest.raises(ProcessSetupError, match="torchrun environment"):
            launch_env(bad)


def test_torch_version_check():
    for version in ("2.4.0", "2.4.1+cu121", "2.13.0+cpu", "2.14.0a0+git1234", "3.0.0"):
        check_torch_version(version)
    for version in ("2.3.1", "1.13.1+cu117"):
        with pytest.raises(ProcessSetupError, match=re.escape(f"torch {version} is older than 2.4")):
            check_torch_version(version)


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


@pytest.mark.slow
@pytest.mark.parametrize("script", ["pretrain.py", "evaluate.py"])
def test_impossible_device_is_one_line_from_one_process(script, tmp_path):
    """Two processes asked onto one GPU (or onto a GPU this machine lacks): one `error:` line, non-zero exit,
    no process left waiting for its peer (launch kills the whole group and would fail on a hang)."""
    args = (["--config-name", "train/eqr_sudoku", f"checkpoint_path={tmp_path / 'run'}"] if script == "pretrain.py"
            else [f"checkpoint={tmp_path / 'x.pt'}"])
    done = launch.launch(script, *args, "device=cuda:0", nproc=2, timeout=120)
    assert done.returncode != 0
    errors = error_lines(done.stdout + done.stderr)
    expected = "would put all 2 processes on one GPU" if torch.cuda.is_available() else "no CUDA GPU is visible"
    assert len(errors) == 1 and expected in errors[0], done.stderr[-2000:]
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_on_a_machine_without_one_is_one_line(tmp_path):
    done = launch.launch("evaluate.py", f"checkpoint={tmp_path / 'x.pt'}", "device=cuda", timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == error_lines(done.stderr) and "use device=cpu" in done.stderr


def test_threads_explicit_then_omp_num_threads_then_idle_cores(monkeypatch):
    from utils.processes import choose_threads
    cpu = torch.device("cpu")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads(5, cpu, 1) == 5
    assert choose_threads(None, cpu, 1) is None  # torch already follows OMP_NUM_THREADS
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert choose_threads(None, torch.device("cuda", 0), 1) is None
    assert 1 <= choose_threads(None, cpu, 1) <= len(os.sched_getaffinity(0))
    assert choose_threads(None, cpu, 10_000) == 1


def test_a_core_kept_busy_by_another_process_is_not_counted_idle(monkeypatch):
    from utils.processes import choose_threads, idle_cores
    own = os.sched_getaffinity(0)
    core = min(own)
    spinner = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{core}}})\nwhile True: pass"])
    try:
        os.sched_setaffinity(0, {core})
        time.sleep(0.3)
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert idle_cores() < 0.5
        assert choose_threads(None, torch.device("cpu"), 1) == 1
    finally:
        os.sched_setaffinity(0, own)
        spinner.kill()
        spinner.wait()


def test_bfloat16_on_a_device_without_bf16_units_runs_in_float32_with_one_notice(capsys):
    """The preset's or checkpoint's bfloat16 (not typed) on an AVX2-only CPU: float32 and one notice that says how
    to keep bfloat16; typed, or on a CPU with bf16 units, it stays; `auto` is the native dtype, silently."""
    cpu = torch.device("cpu")
    avx2, amx = {"avx2", "fma"}, {"avx2", "avx512_bf16", "amx_bf16"}
    assert (native_forward_dtype(cpu, avx2), native_forward_dtype(cpu, amx)) == ("float32", "bfloat16")
    assert native_forward_dtype(cpu, {"asimd", "bf16"}) == "bfloat16"  # Arm's flag, in /proc/cpuinfo's Features
    cases = [("bfloat16", False, "float32", "float32"), ("bfloat16", True, "float32", "bfloat16"),
             ("bfloat16", False, "bfloat16", "bfloat16"), ("auto", False, "float32", "float32"),
             ("auto", False, "bfloat16", "bfloat16"), ("float32", False, "bfloat16", "float32"), (None, False, "float32", None)]
    for requested, typed, native, expected in cases:
        assert resolve_forward_dtype(requested, cpu, typed=typed, key="arch.forward_dtype", native=native) == expected
        notices = capsys.readouterr().err.splitlines()
        if (requested, typed, native) == ("bfloat16", False, "float32"):
            assert len(notices) == 1 and notices[0].startswith("notice: arch.forward_dtype: bfloat16 runs in float32")
            assert "type arch.forward_dtype=bfloat16 to keep it" in notices[0]
        else:
            assert notices == []


def test_a_setup_error_is_printed_by_local_rank_0_while_the_others_wait_to_be_stopped(monkeypatch, capsys):
    waits = []
    monkeypatch.setattr(utils.processes.time, "sleep", waits.append)
    monkeypatch.setenv("LOCAL_RANK", "1")
    report_error(ProcessSetupError("3 processes on this node"))
    assert capsys.readouterr().err == "" and waits == [utils.processes.SILENT_RANK_WAIT_S]
    report_error(ConfigError("lr: expected a number"))  # not a node-wide problem: every rank says it
    assert capsys.readouterr().err == "error: lr: expected a number\n" and len(waits) == 1
    monkeypatch.setenv("LOCAL_RANK", "0")
    report_error(ProcessSetupError("3 processes on this node"))
    assert capsys.readouterr().err == "error: 3 processes on this node\n" and len(waits) == 1


def test_torch_versions_are_read_from_release_and_local_build_strings():
    assert utils.processes.torch_version("2.4.1+cu121") == (2, 4)
    assert utils.processes.torch_version("2.13.0+cpu") == (2, 13)
    assert utils.processes.torch_version("2.8.0a0+git1234") == (2, 8)
