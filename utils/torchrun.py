"""torchrun without its failure wall; scripts/train.sh, eval.sh and eval_sweep.sh launch through it.

    python -m utils.torchrun [torchrun's flags] SCRIPT [args]

The same as `torchrun`, except on a bad input: every rank finds it and prints the same `error:` line, and
torchrun then adds its log lines, a traceback and a summary of the failure. Here the line is shown once, the rest
of torchrun's report of a failure that already printed its `error:` line is dropped, and the launch exits with
the worker's status. A worker's own traceback (a bug, not a bad input) still shows in full.
"""
import os
import re
import signal
import sys
import threading
import traceback

LOG_LINE = re.compile(rb"^[EWI]\d{4} \d\d:\d\d:\d\d")  # torch.distributed.elastic's log lines


# The launcher writes this line before a traceback of its own (torchrun's agent failing, not a worker)
AGENT_TRACEBACK = b"utils.torchrun: the launcher failed:"


def copy_filtered(source: int, sink: int) -> bool:
    """Copy the workers' stderr to `sink` as it comes (progress bars included); after the first `error:` line,
    drop repeats of it, torchrun's log lines and a traceback of the launcher's own (some torch versions' agent
    can fail while it tears down workers that have exited with their `error:` line). -> whether one was dropped."""
    shown, held, seen_error, dropping = set(), b"", False, False
    while chunk := os.read(source, 65536):
        held += chunk
        lines = held.split(b"\n")
        held = lines.pop()
        out = []
        for line in lines:
            bare = line.lstrip(b"\r")
            if bare == AGENT_TRACEBACK:
                dropping = dropping or seen_error
                continue
            if dropping:
                continue
            if bare.startswith(b"error: "):
                seen_error, duplicate = True, bare in shown
                shown.add(bare)
                if duplicate:
                    continue
            elif seen_error and LOG_LINE.match(bare):
                continue
            out.append(line + b"\n")
        if held and not held.lstrip(b"\r")[:1] in (b"e", b"E", b"W", b"I"):  # a progress bar: show it now
            out.append(held)
            held = b""
        os.write(sink, b"".join(out))
    if not dropping:
        os.write(sink, held)
    return dropping


DRAIN_S = 5.0  # after torchrun exits: how long to wait for the rest of its workers' output


def main(argv: list[str]) -> int:
    """Fork: the child is torchrun with its stderr on a pipe, the parent copies the pipe (copy_filtered) until
    torchrun has exited and the pipe is drained, then returns the child's status. A process that outlives
    torchrun while holding the pipe (a worker's own child) does not hold the launch open past DRAIN_S."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        os.dup2(write_end, 2)
        os.close(write_end)
        status = 1
        try:
            status = launch(argv)
        except ModuleNotFoundError as e:  # os._exit below would drop the traceback: say it in one line
            print(f"error: {e.name or e}: not installed for {sys.executable}; activate the project's venv "
                  f"(. .venv/bin/activate) or pip install -r requirements.txt", file=sys.stderr)
            status = 2
        except BaseException:
            print(AGENT_TRACEBACK.decode(), file=sys.stderr)
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(status)
    os.close(write_end)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(child, signal.SIGTERM))  # a scheduler's stop reaches torchrun
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches torchrun (the same process group) by itself
    dropped = []
    copier = threading.Thread(target=lambda: dropped.append(copy_filtered(read_end, 2)), daemon=True)
    copier.start()
    _, status = os.waitpid(child, 0)
    copier.join(DRAIN_S)
    if dropped and dropped[0]:  # the launcher failed after a worker's `error:` line: the worker's status (2) is the answer
        return 2
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def launch(argv: list[str]) -> int:
    """torchrun's main, returning the first failed worker's status instead of raising ChildFailedError."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        args = parse_args(argv)
        if str(args.nproc_per_node).isdigit() and int(args.nproc_per_node) > 1:
            os.environ.setdefault("OMP_NUM_THREADS", "1")  # what torchrun sets anyway, without its banner about it
        run(args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        status = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode
        if status != 2:  # 2: the worker printed its `error:` line
            print(f"error: rank {rank} exited with status {status} (its output is above)", file=sys.stderr)
        return status
    except SignalException as e:  # SIGTERM/SIGINT to torchrun: it has passed it on to the workers and waited for them
        return 128 + int(e.sigval)
    except SystemExit as e:  # torchrun's own usage errors
        return e.code if isinstance(e.code, int) else 2
    finally:
        sys.stderr.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
