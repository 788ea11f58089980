"""Run an entry point as a user does (python or torchrun), and never leave a process behind.

torchrun's workers outlive a torchrun that is killed, and torchrun starts each of them in a session of its
own, so each launch carries a tag in its environment and every process with that tag is killed when the
launch times out or the test ends.
"""
import os
import signal
import subprocess
import sys
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAG_ENV = "EQR_TEST_LAUNCH"


def interpreter_env() -> dict:
    """os.environ with this interpreter's folder first on PATH, so that a script that calls `python3` runs the
    interpreter running the tests (`.venv/bin/python -m pytest` without the venv activated included)."""
    return {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}


def start(script: str, *args: str, nproc: int = 1, env_extra: dict | None = None) -> subprocess.Popen:
    """`python script args` (nproc 1) or `torchrun --standalone --nproc-per-node N script args`, started from the
    repository root with one thread per process, in a process group of its own (see kill_group)."""
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                     "--nproc-per-node", str(nproc)]
    tag = uuid.uuid4().hex
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {}), TAG_ENV: tag}
    process = subprocess.Popen([*launcher, script, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    process.launch_tag = tag
    return process


def launch(script: str, *args: str, nproc: int = 1, env_extra: dict | None = None,
           timeout: float = 300) -> subprocess.CompletedProcess:
    """start(), waited for; every process it started is gone when this returns."""
    process = start(script, *args, nproc=nproc, env_extra=env_extra)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(process)
        stdout, stderr = process.communicate(timeout=60)
        raise AssertionError(f"{script} {' '.join(args)} ran over {timeout} s and was killed; stderr:\n{stderr[-3000:]}")
    finally:
        kill_group(process)  # workers left behind by a launcher that exited
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def tagged_processes(tag: str) -> list[int]:
    """The pids whose environment holds TAG_ENV=tag."""
    needle = f"{TAG_ENV}={tag}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        pids.append(int(entry))
            except OSError:  # gone, or not ours
                pass
    return pids


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the launch's process group and every process that carries its tag (torchrun's workers)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in tagged_processes(getattr(process, "launch_tag", "")) if os.path.isdir("/proc") else ():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
