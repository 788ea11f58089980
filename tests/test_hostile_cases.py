"""The faults a hostile run found, one test each, named after the fault: every one is a single `error:` line
(or handled), exits non-zero where it is refused, and leaves nothing half-written. Real faults where this
machine allows them: a read-only mount (chmod does not stop root), a small tmpfs for a full disk, a real
memory limit, real kills; an OSError(ENOSPC) at the write call only where no tmpfs can be mounted."""
import errno
import os
import resource
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import diagnose
import evaluate
import launch
import pretrain
import solve
from dataset import build_sudoku_dataset, common
from dataset.common import single_example_split, write_dataset
from test_files import eval_files  # noqa: F401 (fixture)
from test_run_faults import TRM, one_error_line, start, wait_for
from test_solve import MAZE, PUZZLE, SUDOKU
from test_train import ROOT, overrides, read_metrics, sudoku_path  # noqa: F401 (fixture)
from utils import files
from utils.run_folder import TRAIN

SOLVE = ["forward_dtype=float32", "device=cpu", "halt_max_steps=2"]


def mount_tmpfs(folder, size: str) -> bool:
    folder.mkdir(exist_ok=True)
    return os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                                capture_output=True).returncode == 0


@pytest.fixture
def read_only(tmp_path):
    """(folder, freeze): a folder to fill, then freeze() makes it read-only to this process: every folder and file
    chmod-ed where that stops this user, or, as root, a tmpfs remounted read-only."""
    folder = tmp_path / "ro"
    if os.geteuid() != 0:
        folder.mkdir()

        def chmod(folder_mode, file_mode):
            for path in [folder, *folder.rglob("*")]:
                os.chmod(path, folder_mode if path.is_dir() else file_mode)

        yield folder, lambda: chmod(0o555, 0o444)
        chmod(0o755, 0o644)
        return
    if not mount_tmpfs(folder, "64m"):
        pytest.skip("root, where chmod does not stop writes, and no tmpfs can be mounted to make a read-only folder")
    try:
        yield folder, lambda: subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(folder)])


def train(data, run, *extra) -> int:
    return pretrain.main([*TRM, *overrides(data, run, *extra)])


# ----------------------------------------------------------------------------- the bug: solve.py on a big file

def test_solve_on_a_file_prints_each_batch_as_it_finishes_with_a_progress_bar(tmp_path, capsys, monkeypatch):
    puzzles = tmp_path / "puzzles.txt"
    puzzles.write_text((PUZZLE + "\n") * (solve.CHUNK + 6))
    printed_before_batch = []
    real_run_batch = solve.run_batch

    def counting_run_batch(*args, **kwargs):  # the real pass; it only notes how many answers were out before it
        printed_before_batch.append(capsys.readouterr().out.count("valid: "))
        return real_run_batch(*args, **kwargs)

    monkeypatch.setattr(solve, "run_batch", counting_run_batch)
    assert solve.main([f"checkpoint={SUDOKU}", f"puzzle={puzzles}", *SOLVE, "image=null"]) == 0
    captured = capsys.readouterr()
    assert printed_before_batch == [0, solve.CHUNK]  # the first 64 answers were out before the last batch ran
    assert captured.out.count("valid: ") == 6 and f"puzzle {solve.CHUNK + 6} of {solve.CHUNK + 6}" in captured.out
    assert f"{solve.CHUNK + 6}/{solve.CHUNK + 6}" in captured.err  # the progress bar


def test_solve_refuses_a_file_over_the_size_limit_with_one_line(tmp_path, capsys):
    big = tmp_path / "big.txt"
    line = (PUZZLE + "\n").encode()
    big.write_bytes(line * (solve.MAX_FILE_BYTES // len(line) + 1))
    assert solve.main([f"checkpoint={SUDOKU}", f"puzzle={big}", *SOLVE, "image=null"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert f"puzzle: {big} is 4.0 MiB; solve.py reads files up to 4 MiB" in captured.err


def test_solve_refuses_a_bad_puzzle_by_line_number_before_the_model_runs(tmp_path, capsys):
    puzzles = tmp_path / "puzzles.txt"
    puzzles.write_text((PUZZLE + "\n") * 69 + PUZZLE[:-1] + "x\n" + (PUZZLE + "\n") * 30)
    assert solve.main([f"checkpoint={SUDOKU}", f"puzzle={puzzles}", *SOLVE, "image=null"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1  # no answer printed: the model never ran
    assert captured.err.startswith(f"error: {puzzles} line 70: unexpected character 'x'")


def test_solve_refuses_a_binary_file_with_one_line(tmp_path, capsys):
    binary = tmp_path / "binary.txt"
    binary.write_bytes(bytes(range(256)) * 4)
    assert solve.main([f"checkpoint={SUDOKU}", f"puzzle={binary}", *SOLVE, "image=null"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: puzzle: {binary} is not a text file (byte 0x80 at offset 128 is not UTF-8)\n"
    binary.write_bytes(b"\0" * 81)
    assert solve.main([f"checkpoint={SUDOKU}", f"puzzle={binary}", *SOLVE, "image=null"]) == 2
    assert capsys.readouterr().err == f"error: puzzle: {binary} is not a text file (a NUL byte at offset 0)\n"


MAZE_11 = ["###########", "#S        #", "# ####### #", "#       # #", "####### # #", "#       # #",
           "# ####### #", "#         #", "# ####### #", "#        G#", "###########"]


@pytest.mark.parametrize("change, message", [
    (lambda rows: [rows[0], rows[1].replace("S", " "), *rows[2:]], "0 S's in the maze, expected exactly one (the start)"),
    (lambda rows: [rows[0], rows[1].replace("S ", "SS"), *rows[2:]], "2 S's in the maze, expected exactly one"),
    (lambda rows: [*rows[:3], rows[3][:-1], *rows[4:]], "row 4 has 10 characters, the longest 11"),
])
def test_solve_refuses_a_maze_without_one_start_or_with_a_short_row(tmp_path, capsys, change, message):
    mazes = tmp_path / "mazes.txt"
    mazes.write_text("\n".join(MAZE_11) + "\n\n" + "\n".join(change(MAZE_11)) + "\n")
    assert solve.main([f"checkpoint={MAZE}", f"puzzle={mazes}", *SOLVE, "image=null"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith(f"error: {mazes} maze 2 (line 13): {message}"), captured.err


def test_solve_image_never_overwrites_an_existing_file(tmp_path, capsys):
    image = tmp_path / "answer.png"
    image.write_bytes(b"someone's picture")
    assert solve.main([f"checkpoint={SUDOKU}", f"puzzle={PUZZLE}", *SOLVE, f"image={image}"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (f"error: image: {image} exists; solve.py does not overwrite a file "
                                                   f"(choose another image= path, or image=null)\n")
    assert image.read_bytes() == b"someone's picture"


def test_solve_names_a_full_width_digit_in_one_line(capsys):
    wide = "１" + PUZZLE[1:]
    assert solve.main([f"checkpoint={SUDOKU}", f"puzzle={wide}", *SOLVE, "image=null"]) == 2
    assert capsys.readouterr().err == ("error: puzzle: unexpected character '１' (a non-ASCII digit; expected digits "
                                       "1-9, 0 or . for blanks)\n")


# ----------------------------------------------------------------------------- tracebacks instead of one line

def test_a_read_only_run_folder_is_one_line_for_training_and_resume(sudoku_path, read_only, capsys):
    folder, freeze = read_only
    assert train(sudoku_path, folder / "run", "max_steps=2") == 0
    before = {p.name: p.read_bytes() for p in (folder / "run").iterdir() if p.is_file()}
    freeze()
    capsys.readouterr()
    assert train(sudoku_path, folder / "run", "max_steps=4", "resume=true") == 2
    assert f"{folder / 'run'}: cannot write the run folder (" in one_error_line(capsys)
    assert train(sudoku_path, folder / "new", "max_steps=2") == 2
    assert f"{folder / 'new'}: cannot write the run folder (" in one_error_line(capsys)
    assert {p.name: p.read_bytes() for p in (folder / "run").iterdir() if p.is_file()} == before


def test_a_read_only_output_folder_is_one_line_for_evaluate_and_diagnose(eval_files, read_only, capsys):  # noqa: F811
    data, ckpt = eval_files
    folder, freeze = read_only
    freeze()
    common_args = [f"checkpoint={ckpt}", "device=cpu", "progress=false"]
    assert evaluate.main([*common_args, f"output_dir={folder / 'eval'}", "plots=false"]) == 2
    assert f"error: output_dir: cannot write in {folder / 'eval'} (" in one_error_line(capsys)
    assert diagnose.main([*common_args, f"output_dir={folder / 'diag'}", "plots=false", "depth=2"]) == 2
    assert f"error: output_dir: cannot write in {folder / 'diag'} (" in one_error_line(capsys)


def test_a_read_only_folder_is_one_line_for_the_dataset_builder(read_only, capsys):
    folder, freeze = read_only
    freeze()
    with pytest.raises(SystemExit) as stop:
        build_sudoku_dataset.main(["--generate", "8", "--generate-test", "4", "--output-dir", str(folder / "data")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert stop.value.code == 2 and len(err) == 1 and f"{folder / 'data'}: could not write the dataset (" in err[0]


def test_a_model_too_large_for_the_memory_limit_is_one_line_and_leaves_no_run_folder(sudoku_path, tmp_path):
    limit = 8 * 2**30  # the hostile run's `ulimit -v` 8 GB: a real limit on this process's address space
    for size in ("arch.hidden_size=32768", "arch.L_layers=200000"):
        run = tmp_path / "run"
        done = subprocess.run([sys.executable, "pretrain.py", *TRM, *overrides(sudoku_path, run, "max_steps=2", size)],
                              cwd=ROOT, capture_output=True, text=True, timeout=120,
                              preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
        err = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(err) == 1, done.stderr[-2000:]
        assert err[0].startswith("error: arch: this model needs at least") and "lower arch.hidden_size" in err[0]
        assert not run.exists()


def test_a_run_refused_after_it_made_its_folder_leaves_no_folder_holding_only_the_lock(sudoku_path, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(sudoku_path, run, "max_steps=2", "resume=true") == 2  # refused once the folder is claimed
    assert "no checkpoint to resume" in one_error_line(capsys)
    assert not run.exists()


def test_the_dataset_builder_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    disk = tmp_path / "disk"
    if not mount_tmpfs(disk, "64k"):  # no tmpfs to fill: the error the write call gets on a full disk
        def no_space(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(common.np, "save", no_space)
    try:
        with pytest.raises(SystemExit) as stop:
            build_sudoku_dataset.main(["--generate", "400", "--generate-test", "100", "--output-dir", str(disk / "d")])
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
        assert stop.value.code == 2 and len(err) == 1 and err[0].startswith(f"error: {disk / 'd'}: could not write")
        assert os.listdir(disk) == []  # neither the dataset nor its temp folder
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_resume_from_weights_that_do_not_fit_their_config_is_one_line(sudoku_path, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(sudoku_path, run, "max_steps=2") == 0
    ckpt = torch.load(run / "step_2.pt", weights_only=True)
    name = "model.inner.embed_tokens.embedding_weight"
    ckpt["model"][name] = torch.zeros(11, 40)  # the config says hidden_size 32
    files.atomic_save(ckpt, str(run / "step_2.pt"))
    capsys.readouterr()
    assert train(sudoku_path, run, "max_steps=4", "resume=true") == 2
    assert f"step_2.pt: parameter {name} has shape (11, 40), architecture expects (11, 32)" in one_error_line(capsys)


def test_resume_refuses_a_malicious_checkpoint_by_name_and_falls_back_to_the_previous_one(sudoku_path, tmp_path,
                                                                                           capsys):
    marker = tmp_path / "unpickling-ran-code"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    run, full = tmp_path / "run", tmp_path / "full"
    args = ["checkpoint_interval_steps=2", "lr=1e-3"]
    assert train(sudoku_path, full, "max_steps=6", *args) == 0
    assert train(sudoku_path, run, "max_steps=4", *args) == 0
    ckpt = torch.load(run / "step_4.pt", weights_only=True)
    torch.save({**ckpt, "carry": Payload()}, run / "step_4.pt")
    capsys.readouterr()
    assert train(sudoku_path, run, "max_steps=6", *args, "resume=true") == 0
    err = capsys.readouterr().err
    assert f"warning: {run / 'step_4.pt'}: refused to unpickle posix.system (a checkpoint holds tensors and plain " \
           f"types only); not loaded; resuming from the newest intact checkpoint, step_2.pt" in err
    assert "weights_only=False" not in err and not marker.exists()
    from test_train import train_losses
    assert train_losses(run) == train_losses(full)


# ----------------------------------------------------------------------------- half-done states

def test_a_killed_builders_temp_folders_are_removed_by_the_next_build_and_a_live_ones_kept(tmp_path, capsys):
    out = tmp_path / "data"
    for name in (".data.tmp-dead0001", ".data.tmp-dead0002.old", ".data.tmp-alive003", ".other.tmp-dead0004"):
        (tmp_path / name / "train").mkdir(parents=True)  # what kills during the write and during the swap leave
    alive = files.try_flock(str(tmp_path / ".data.tmp-alive003"))  # as a builder that is still writing holds it
    try:
        build_sudoku_dataset.main(["--generate", "8", "--generate-test", "4", "--output-dir", str(out)])
    finally:
        os.close(alive)
    assert sorted(os.listdir(tmp_path)) == [".data.tmp-alive003", ".other.tmp-dead0004", "data"]
    assert capsys.readouterr().err.count("left by an interrupted build of") == 2


def test_a_disk_that_fills_while_results_csv_is_written_leaves_a_resumable_sweep(eval_files, tmp_path, monkeypatch,
                                                                                 capsys):  # noqa: F811
    data, ckpt = eval_files
    out = tmp_path / "out"
    args = [f"checkpoint={ckpt}", f"output_dir={out}", "device=cpu", "progress=false", "plots=false"]
    real_replace = os.replace

    def full_at_csv(src, dst):  # the disk fills as results.csv is renamed into place
        if str(dst).endswith("results.csv"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", full_at_csv)
    assert evaluate.main(args) == 2
    assert "results.csv: could not write (No space left on device)" in one_error_line(capsys, at_start=False)
    assert not (out / "results.json").exists()
    monkeypatch.setattr(files.os, "replace", real_replace)
    assert evaluate.main([*args, "resume=true"]) == 0
    assert (out / "results.json").exists() and (out / "results.csv").exists()


def test_sigterm_logs_the_training_metrics_up_to_the_stopping_step(sudoku_path, tmp_path):
    run = tmp_path / "run"
    proc = start([*TRM, *overrides(sudoku_path, run, "max_steps=100000", "checkpoint_interval_steps=100000"),
                  "log_interval_steps=100000"])
    try:
        wait_for(run / "config.yaml", proc)  # written just before the loop starts
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        launch.kill_group(proc)
    step = int((run / "latest").read_text().strip().removeprefix("step_").removesuffix(".pt"))
    records = read_metrics(run)
    assert [r["step"] for r in records] == [step]  # no log step was reached: the one line is the stop's
    assert records[0][TRAIN["lm_loss"]] > 0  # the steps since the start, summarised


def test_an_empty_test_split_is_refused_at_start(sudoku_path, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(sudoku_path, data)
    empty = single_example_split(np.zeros((0, 81), dtype=np.int64), np.zeros((0, 81), dtype=np.int64), 11)
    train_split = common.load_split(str(data), "train")
    shutil.rmtree(data)
    write_dataset(str(data), {"train": train_split, "test": empty})
    assert train(str(data), tmp_path / "run", "max_steps=2", "eval_interval_steps=1") == 2
    assert f"{data / 'test'}: holds no puzzles" in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- a test that depended on the shell

def test_scripts_started_by_tests_run_the_interpreter_running_the_tests():
    env = launch.interpreter_env()
    env["PATH"] = env["PATH"].split(os.pathsep)[0] + os.pathsep + "/usr/bin:/bin"  # as with the venv not activated
    done = subprocess.run(["bash", "-c", "python3 -c 'import sys, torch; print(sys.prefix)'"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == sys.prefix, done.stderr


# ----------------------------------------------------------------------------- wrong input accepted

@pytest.mark.parametrize("extra, expected", [
    ("lr=nan", "lr: expected a finite value in (0, inf), got nan"),
    ("lr=inf", "lr: expected a finite value in (0, inf), got inf"),
    ("weight_decay=inf", "weight_decay: expected a finite value in [0, inf), got inf"),
    ("ema_rate=nan", "ema_rate: expected a finite value in [0, 1), got nan"),
    ("arch.expansion=inf", "arch.expansion: expected a finite value in (0, inf), got inf"),
])
def test_lr_and_other_ranged_numbers_that_are_not_finite_are_refused_at_start(sudoku_path, tmp_path, capsys, extra,
                                                                               expected):
    assert train(sudoku_path, tmp_path / "run", "max_steps=2", extra) == 2
    assert expected in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- the two cases the hostile run did not try

def test_more_cpu_processes_than_cpus_on_a_node_are_refused(monkeypatch, capsys):
    cpus = len(os.sched_getaffinity(0))
    for key, value in (("RANK", 0), ("WORLD_SIZE", cpus + 1), ("LOCAL_RANK", 0), ("LOCAL_WORLD_SIZE", cpus + 1)):
        monkeypatch.setenv(key, str(value))  # what torchrun --nproc-per-node cpus+1 sets in its first process
    assert evaluate.main(["checkpoint=unused.pt", "device=cpu"]) == 2
    assert one_error_line(capsys) == (f"error: {cpus + 1} processes on this node but only {cpus} CPU(s) for them: use "
                                      f"--nproc-per-node {cpus} or fewer (a process without a core of its own stalls "
                                      f"every step of the others)")


@pytest.mark.slow
def test_torchrun_with_more_processes_than_cpus_is_one_line_per_node(sudoku_path, tmp_path):
    cpus = len(os.sched_getaffinity(0))
    done = launch.launch("pretrain.py", *TRM, *overrides(sudoku_path, tmp_path / "run", "max_steps=2"), nproc=cpus + 1,
                         env_extra={"WANDB_MODE": "disabled"}, timeout=300)
    assert done.returncode != 0 and done.stderr.count(f"error: {cpus + 1} processes on this node") == 1
    assert not (tmp_path / "run").exists()


def test_a_link_into_another_runs_folder_does_not_let_a_second_writer_in(sudoku_path, eval_files, tmp_path,
                                                                          capsys):  # noqa: F811
    run, link = tmp_path / "run", tmp_path / "link"
    link.symlink_to(run, target_is_directory=True)
    first = start([*TRM, *overrides(sudoku_path, run, "max_steps=100000", "checkpoint_interval_steps=100000")])
    try:
        wait_for(run / "metrics.jsonl", first)
        assert train(sudoku_path, link, "max_steps=100000", "resume=true") == 2
        assert f"{link} (a link to {run}): in use by pid {first.pid}" in one_error_line(capsys)
    finally:
        launch.kill_group(first)
        first.wait()

    data, ckpt = eval_files
    out, out_link = tmp_path / "out", tmp_path / "out-link"
    out.mkdir()
    out_link.symlink_to(out, target_is_directory=True)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from utils import files; "
                               f"files.hold_folder({str(out)!r}, 'output_dir'); print('held', flush=True); time.sleep(120)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:  # another evaluation holding the folder, as evaluate.py does for its whole sweep
        assert holder.stdout.readline().strip() == "held"
        assert evaluate.main([f"checkpoint={ckpt}", f"output_dir={out_link}", "device=cpu", "progress=false"]) == 2
        assert f"output_dir: {out_link} (a link to {out}) is in use by another process" in one_error_line(capsys)
    finally:
        launch.kill_group(holder)
        holder.wait()
    assert os.listdir(out) == []
