"""Which process runs on which device: the one place that maps torchrun's ranks to devices.

Every entry point calls `setup_processes` (through utils/entry.py). torchrun sets RANK,
WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE; without them this is one process. On CUDA
process i of a node takes cuda:<LOCAL_RANK>, so a node needs at least as many visible GPUs
as processes; anything that cannot work is refused before a process group exists, so no
process is left waiting for a peer that will never come.

CPU threads (`threads=`): torch's default is one thread per core, and one OpenMP thread that
another process keeps off its core stalls every parallel op (2 threads on a 2-core machine with
one other busy process ran up to 60x slower than 1). So on CPU, unless OMP_NUM_THREADS or
threads=N says otherwise, a process takes the cores idle at its start (`choose_threads`).
"""
import os
import resource
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from utils.errors import ConfigError

OLDEST_TORCH = (2, 4)  # the suite runs on this one and on the pinned one (.ci/run)

# Collectives give up after this long (a peer that died without torchrun noticing), instead of waiting forever.
TIMEOUT_ENV = "EQR_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800


class ProcessSetupError(ConfigError):
    """A device or process-count problem that every rank of a node finds alike; only local rank 0 reports it."""


@dataclass(frozen=True)
class Processes:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    threads: int  # torch's CPU threads in this process

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launch_env(environ=None) -> tuple[int, int, int, int]:
    """(rank, world size, local rank, local world size) from torchrun's variables (1 process without them)."""
    env = os.environ if environ is None else environ
    try:
        world_size = int(env.get("WORLD_SIZE", 1))
        rank = int(env.get("RANK", 0))
        local_rank = int(env.get("LOCAL_RANK", 0))
        local_world_size = int(env.get("LOCAL_WORLD_SIZE", local_rank + 1))
    except ValueError as e:
        raise ProcessSetupError(f"torchrun environment: expected integers in RANK/WORLD_SIZE/LOCAL_RANK ({e})") from None
    if world_size < 1 or not 0 <= rank < world_size or not 0 <= local_rank < local_world_size:
        raise ProcessSetupError(f"torchrun environment: RANK={rank} WORLD_SIZE={world_size} LOCAL_RANK={local_rank} "
                                f"LOCAL_WORLD_SIZE={local_world_size} do not fit together")
    return rank, world_size, local_rank, local_world_size


def choose_device(requested: str | None, local_rank: int, local_world_size: int, world_size: int,
                  gpus: int) -> torch.device:
    """The device of one process. `requested` is the `device=` setting (None: cuda when a GPU is visible,
    else cpu); `gpus` is how many CUDA devices this process sees. Raises ProcessSetupError."""
    if requested is None:
        requested = "cuda" if gpus > 0 else "cpu"
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError):
        raise ProcessSetupError(f"device: expected cpu, cuda or cuda:N, got {requested!r}") from None
    if device.type == "cpu":
        if device.index not in (None, 0):
            raise ProcessSetupError(f"device: expected cpu, cuda or cuda:N, got {requested!r}")
        return torch.device("cpu")
    if device.type != "cuda":
        raise ProcessSetupError(f"device: {requested!r} is not supported; expected cpu, cuda or cuda:N")
    if gpus == 0:
        build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a CPU-only build")
        raise ProcessSetupError(f"device={requested}: no CUDA GPU is visible to this process ({build}); use device=cpu")
    if device.index is not None:
        if world_size > 1:
            raise ProcessSetupError(f"device={requested}: would put all {world_size} processes on one GPU; "
                                    f"use device=cuda (process i of a node takes cuda:<LOCAL_RANK>)")
        if device.index >= gpus:
            raise ProcessSetupError(f"device={requested}: only {gpus} GPU(s) visible (cuda:0..cuda:{gpus - 1})")
        return device
    if local_world_size > gpus:
        raise ProcessSetupError(f"{local_world_size} processes on this node but only {gpus} GPU(s) visible: "
                                f"use --nproc-per-node {gpus}, or device=cpu")
    return torch.device("cuda", local_rank)


def torch_version(version: str = torch.__version__) -> tuple[int, int]:
    """(major, minor) of a torch version string such as 2.4.1+cu121."""
    major, minor = (int("".join(c for c in part if c.isdigit()) or 0) for part in version.split(".")[:2])
    return major, minor


def check_torch_version(version: str = torch.__version__) -> None:
    if torch_version(version) < OLDEST_TORCH:
        raise ProcessSetupError(f"torch {version} is older than {'.'.join(map(str, OLDEST_TORCH))}, the oldest this "
                                f"project supports; install a newer torch (requirements.txt pins the tested one)")


def idle_cores(interval_s: float = 0.2) -> float | None:
    """How many of the CPUs this process may use sat idle over the next `interval_s` (from /proc/stat,
    capped by the cgroup's CPU quota); None where that cannot be read (not Linux)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []

    def idle_and_total() -> dict[int, tuple[int, int]]:
        times = {}
        with open("/proc/stat") as f:
            for line in f:
                name, *fields = line.split()
                if name.startswith("cpu") and name[3:].isdigit():
                    ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
                    times[int(name[3:])] = (ticks[3] + ticks[4], sum(ticks))
        return times

    try:
        before = idle_and_total()
        time.sleep(interval_s)
        after = idle_and_total()
    except (OSError, ValueError, IndexError):
        return None
    idle = 0.0
    for cpu in cpus:
        if cpu in before and cpu in after and after[cpu][1] > before[cpu][1]:
            idle += (after[cpu][0] - before[cpu][0]) / (after[cpu][1] - before[cpu][1])
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()
        if quota != "max":
            idle = min(idle, int(quota) / int(period))
    except (OSError, ValueError):
        pass
    return idle


def choose_threads(requested: int | None, device: torch.device, local_world_size: int) -> int | None:
    """torch's CPU threads for one process; None leaves torch's own choice. An explicit `threads=N` is N.
    Otherwise, on CPU without OMP_NUM_THREADS: the cores at least 80% idle at start, shared by this node's
    processes, at least 1 (the count is fixed for the run; a job that starts later can still slow it)."""
    if requested is not None:
        return requested
    if device.type != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        return None
    idle = idle_cores()
    if idle is None:
        return None
    return max(1, int(idle / local_world_size + 0.2))


BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # /proc/cpuinfo flags of CPUs that multiply bfloat16 in hardware


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    try:
        with open(cpuinfo) as f:
            return {word for line in f if line.startswith(("flags", "Features")) for word in line.split()}
    except OSError:
        return set()


def native_forward_dtype(device: torch.device, flags: set[str] | None = None) -> str:
    """`forward_dtype: auto`: bfloat16 where `device` multiplies it in hardware (CUDA compute capability 8+, a CPU
    whose `flags` (default: this machine's /proc/cpuinfo) name avx512_bf16, AMX or Arm's bf16), float32 otherwise,
    where bfloat16 is emulated and several times slower (10x for a training step of the *_cpu presets on an AVX2 CPU)."""
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.get_device_capability(device)[0] >= 8 else "float32"
    return "bfloat16" if (cpu_flags() if flags is None else flags) & BF16_CPU_FLAGS else "float32"


def resolve_forward_dtype(requested: str | None, device: torch.device, world_size: int = 1, typed: bool = True,
                          key: str = "forward_dtype", native: str | None = None) -> str | None:
    """The forward dtype to run: `auto` is the one `device` multiplies natively (native_forward_dtype, or `native`
    where given); bfloat16 that the user did not type (a preset's, a checkpoint's) on a device without bf16 units
    is float32, said in one notice; anything else as given. Rank 0 decides, so that every process runs the same
    dtype (a collective for auto and bfloat16: every rank calls it)."""
    if requested != "auto" and (requested != "bfloat16" or typed):
        return requested
    native = broadcast(native or native_forward_dtype(device), world_size)
    if requested == "auto" or native == "bfloat16":
        return native
    if os.environ.get("RANK", "0") == "0":
        unit = "GPU" if device.type == "cuda" else "CPU"
        print(f"notice: {key}: bfloat16 runs in float32 here (this {unit} has no bfloat16 units, so bfloat16 would be "
              f"emulated, about 10x slower; answers may differ slightly); type {key}=bfloat16 to keep it", file=sys.stderr)
    return "float32"


def setup_processes(requested_device: str | None, requested_threads: int | None = None) -> Processes:
    """Pick this process's device and CPU threads and, under torchrun, join the process group (nccl on CUDA,
    gloo on CPU)."""
    check_torch_version()
    rank, world_size, local_rank, local_world_size = launch_env()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = choose_device(requested_device, local_rank, local_world_size, world_size, gpus)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if device.type == "cpu" and cpus and local_world_size > cpus:
        raise ProcessSetupError(f"{local_world_size} processes on this node but only {cpus} CPU(s) for them: use "
                                f"--nproc-per-node {cpus} or fewer (a process without a core of its own stalls every "
                                f"step of the others)")
    threads = choose_threads(requested_threads, device, local_world_size)
    if threads is not None:
        torch.set_num_threads(threads)
    if world_size > 1:
        try:
            timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
        except ValueError:
            raise ProcessSetupError(f"{TIMEOUT_ENV}: expected a number of seconds") from None
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    return Processes(rank, world_size, local_rank, device, torch.get_num_threads())


def _proc_bytes(path: str, key: str) -> int | None:
    """A `key: N kB` line of a /proc file, in bytes (None where there is none)."""
    try:
        with open(path) as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))
    except (OSError, StopIteration, ValueError):
        return None


def free_memory(device: torch.device) -> int | None:
    """Bytes free for this process's tensors (None if unknown): the GPU's free memory, or on CPU the least of the
    machine's MemAvailable, what the cgroup's memory.max leaves and what `ulimit -v` (RLIMIT_AS) leaves."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    limits = [_proc_bytes("/proc/meminfo", "MemAvailable:")]
    try:
        with open("/sys/fs/cgroup/memory.max") as f, open("/sys/fs/cgroup/memory.current") as g:
            cap, used = f.read().strip(), int(g.read())
        if cap != "max":
            limits.append(max(int(cap) - used, 0))
    except (OSError, ValueError):
        pass
    address_space, mapped = resource.getrlimit(resource.RLIMIT_AS)[0], _proc_bytes("/proc/self/status", "VmSize:")
    if address_space != resource.RLIM_INFINITY and mapped is not None:
        limits.append(max(address_space - mapped, 0))
    limits = [limit for limit in limits if limit is not None]
    return min(limits) if limits else None


def broadcast(value, world_size: int):
    """Rank 0's `value` on every rank (a collective: every rank calls it); the value itself with one process."""
    if world_size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# Before torch 2.8 a gloo process group's destructor joins its worker threads while holding the GIL, and a worker
# that frees the last tensor of a finished collective needs the GIL: destroy_process_group (or the interpreter's own
# teardown) can then hang for ever or abort (seen here on torch 2.4.1 in 1 of 3 two-process runs; fixed upstream in
# 2.8 by releasing the GIL there). Such a group is left alone and the process ends with exit_process.
GLOO_TEARDOWN_SAFE = (2, 8)


def _gloo_teardown_unsafe() -> bool:
    return dist.get_backend() == "gloo" and torch_version() < GLOO_TEARDOWN_SAFE


def close_processes(processes: Processes | None) -> None:
    """Leave the process group (where it can be torn down safely; see exit_process)."""
    if processes is not None and processes.distributed and dist.is_initialized() and not _gloo_teardown_unsafe():
        dist.destroy_process_group()


def exit_process(code: int):
    """End an entry point with exit status `code`. A process still in a process group that cannot be torn down (gloo
    before torch 2.8) has finished its work and closed its files: it flushes its streams and leaves at once, without
    the interpreter teardown that would destroy the group."""
    if dist.is_available() and dist.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


# How long a rank that leaves a setup error to local rank 0 waits before exiting: torchrun stops a node's workers at
# the first exit, so a rank that exited at once could kill rank 0 before its line is written.
SILENT_RANK_WAIT_S = 30


def report_error(error: Exception) -> None:
    """Print `error:` for `error`, in one write so that the lines of several ranks do not interleave: a setup problem
    once per node (local rank 0; the node's other ranks wait for torchrun to stop them), anything else on every rank."""
    if isinstance(error, ProcessSetupError) and os.environ.get("LOCAL_RANK", "0") != "0":
        time.sleep(SILENT_RANK_WAIT_S)
        return
    sys.stderr.write(f"error: {error}\n")


class StopRequests:
    """Within this block SIGTERM (a scheduler's preemption) and SIGINT (Ctrl-C) are requests to stop:
    the training loop finishes its step, writes a checkpoint and exits 0. A second SIGINT interrupts at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signal_name = None
        self._previous = {}

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def agreed(self, device: torch.device) -> bool:
        """Whether any rank was asked to stop (a collective: every rank must call it at the same step)."""
        flag = torch.tensor([float(self.requested)], device=device)
        dist.all_reduce(flag)
        if flag.item() and self.signal_name is None:
            self.signal_name = "a stop request to another rank"
        return bool(flag.item())
