"""A training run under hostile conditions loses nothing already on disk and never fails silently:
a second writer, a torn metrics line, divergence, preemption (SIGTERM)."""
import json
import os
import signal
import struct
import subprocess
import time
import zipfile

import pytest

import launch
import pretrain
from test_train import overrides, read_metrics, sudoku_path, train_losses  # noqa: F401 (fixture)
from utils.run_folder import TRAIN, RunLock, eval_line, read_metrics as read_records, strict_json, train_line

TRM = ["--config-name", "train/trm_sudoku", "eval_interval_steps=null", "log_interval_steps=1"]


def start(args, nproc: int = 1) -> subprocess.Popen:
    return launch.start("pretrain.py", *args, nproc=nproc, env_extra={"WANDB_MODE": "disabled"})


def wait_for(path, proc, timeout=120):
    deadline = time.time() + timeout
    while not os.path.exists(path) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert os.path.exists(path), f"{path} never appeared; stderr: {proc.stderr.read() if proc.poll() is not None else ''}"


def one_error_line(capsys, at_start: bool = True) -> str:
    """The one `error:` line; a run refused at start prints nothing else (but warnings)."""
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("warning:")]
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and (not at_start or len(err) == 1), err
    return errors[0]


def test_a_second_writer_is_refused_while_the_first_runs(sudoku_path, tmp_path, capsys):
    run = tmp_path / "run"
    first = start([*TRM, *overrides(sudoku_path, run, "max_steps=100000", "checkpoint_interval_steps=100000")])
    try:
        wait_for(run / "metrics.jsonl", first)
        assert pretrain.main([*TRM, *overrides(sudoku_path, run, "max_steps=5")]) == 2
        line = one_error_line(capsys)
        assert f"in use by pid {first.pid}" in line and "two runs cannot share a run folder" in line
        assert pretrain.main([*TRM, *overrides(sudoku_path, run, "max_steps=5", "resume=true")]) == 2
        assert f"in use by pid {first.pid}" in one_error_line(capsys)
    finally:
        launch.kill_group(first)
        first.wait()
    steps = [m["step"] for m in read_metrics(run)]
    assert steps == sorted(set(steps))  # one writer's lines only
    RunLock(str(run)).acquire().release()  # the kernel dropped the dead holder's lock


def test_a_fresh_start_never_appends_to_an_earlier_runs_metrics(sudoku_path, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "train/lm_loss": 2.0}\n')
    assert pretrain.main([*TRM, *overrides(sudoku_path, run, "max_steps=2")]) == 2
    assert "holds metrics.jsonl of an earlier run" in one_error_line(capsys)
    assert (run / "metrics.jsonl").read_text() == '{"step": 1, "train/lm_loss": 2.0}\n'


def test_a_torn_last_metrics_line_is_dropped_on_resume(sudoku_path, tmp_path, capsys):
    run = tmp_path / "run"
    assert pretrain.main([*TRM, *overrides(sudoku_path, run, "max_steps=4", "checkpoint_interval_steps=2")]) == 0
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "train/lm_lo')  # a kill or a full disk in the middle of an append
    assert pretrain.main([*TRM, *overrides(sudoku_path, run, "max_steps=6", "checkpoint_interval_steps=2",
                                           "resume=true")]) == 0
    assert "dropped a torn last line" in capsys.readouterr().err
    assert [m["step"] for m in read_metrics(run)] == [1, 2, 3, 4, 5, 6]  # every line parses

    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    with pytest.raises(pretrain.RunError, match="line 2 is not a metrics record"):
        read_records(str(run / "metrics.jsonl"))


def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(sudoku_path, tmp_path, capsys):
    run = tmp_path / "run"
    assert pretrain.main([*TRM, *overrides(sudoku_path, run, "max_steps=4", "checkpoint_interval_steps=2")]) == 0
    good = (run / "step_4.pt").read_bytes()
    capsys.readouterr()
    rc = pretrain.main([*TRM, *overrides(sudoku_path, run, "max_steps=12", "checkpoint_interval_steps=2", "lr=1e6",
                                         "lr_warmup_steps=0", "resume=true")])
    line = one_error_line(capsys, at_start=False)
    assert rc == 2 and "the loss or gradient norm is not finite" in line and "step_4.pt" in line
    assert (run / "latest").read_text().strip() == "step_4.pt" and (run / "step_4.pt").read_bytes() == good
    assert sorted(p.name for p in run.glob("step_*.pt")) == ["step_2.pt", "step_4.pt"]
    with open(run / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]  # strict JSON: json.loads rejects nothing, and no bare NaN
    assert any(r.get(TRAIN["grad_norm"]) is None for r in records)


def test_the_metric_lines_keep_their_keys_and_order():
    """The bytes of metrics.jsonl's two line kinds, as every run so far wrote them (curves of old runs read them)."""
    means = {"grad_norm": 1.5, "count": 8.0, "steps": 3.0, "q_halt_accuracy": 0.75, "exact_accuracy": 0.125,
             "accuracy": 0.25, "q_halt_loss": 0.5, "lm_loss": 2.5}
    assert strict_json(train_line(7, 1e-4, means, 12.5)) == (
        '{"step": 7, "lr": 0.0001, "train/lm_loss": 2.5, "train/q_halt_loss": 0.5, "train/accuracy": 0.25, '
        '"train/exact_accuracy": 0.125, "train/q_halt_accuracy": 0.75, "train/steps": 3.0, "train/count": 8.0, '
        '"train/grad_norm": 1.5, "time_s": 12.5}')
    assert strict_json(eval_line(7, {"count": 16.0, "accuracy": 0.75, "exact_accuracy": 0.5})) == (
        '{"step": 7, "eval/exact_accuracy": 0.5, "eval/accuracy": 0.75, "eval/count": 16.0}')
    with pytest.raises(ValueError, match="takes the means"):  # a metric the schema does not name is not dropped
        train_line(7, 1e-4, {**means, "q_continue_loss": 0.1}, 12.5)


def test_strict_json_writes_null_for_non_finite_numbers():
    assert strict_json({"step": 3, "a": float("nan"), "b": [float("inf"), 1.5]}) == '{"step": 3, "a": null, "b": [null, 1.5]}'


@pytest.mark.slow
def test_sigterm_checkpoints_and_resume_repeats_the_uninterrupted_run(sudoku_path, tmp_path):
    common = ["--config-name", "train/eqr_sudoku", "max_steps=30", "log_interval_steps=1", "checkpoint_interval_steps=1000",
              "eval_interval_steps=null", "lr=1e-3", "lr_warmup_steps=5"]
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    assert start([*common, *overrides(sudoku_path, full)]).wait() == 0

    proc = start([*common, *overrides(sudoku_path, stopped)])
    wait_for(stopped / "metrics.jsonl", proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    err = proc.stderr.read()
    assert "stopped by SIGTERM after step" in err and "resume=true" in err
    at = int((stopped / "latest").read_text().strip().removeprefix("step_").removesuffix(".pt"))
    assert at < 30, "the run finished before the signal"

    resumed = start([*common, *overrides(sudoku_path, stopped), "resume=true"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert train_losses(stopped) == train_losses(full)  # exact float equality, step for step


@pytest.mark.slow
def test_sigterm_to_every_process_of_a_torchrun_job_checkpoints_all_ranks(sudoku_path, tmp_path):
    """A scheduler preempting a job signals every process; the ranks agree on the step at which they stop."""
    run = tmp_path / "run"
    args = [*TRM, *overrides(sudoku_path, run, "max_steps=100000", "checkpoint_interval_steps=100000"), "log_interval_steps=2"]
    job = start(args, nproc=2)
    try:
        wait_for(run / "metrics.jsonl", job)
        os.killpg(job.pid, signal.SIGTERM)
        _, err = job.communicate(timeout=120)
    finally:
        launch.kill_group(job)
    assert "stopped by SIGTERM after step" in err, err[-3000:]
    name = (run / "latest").read_text().strip()
    step = int(name.removeprefix("step_").removesuffix(".pt"))
    assert step % 2 == 0 and (run / f"step_{step}.rank1.pt").exists()
    assert read_metrics(run)[-1]["step"] == step


def test_evaluate_warns_about_non_finite_weights(tmp_path, capsys):
    import torch

    import evaluate
    from test_eval_grid import EQR, build_model, write_checkpoint, write_data

    head = build_model(EQR)
    data = write_data(str(tmp_path / "data"), head, n=4)
    with torch.no_grad():
        head.model.inner.lm_head.weight[0, 0] = float("nan")
    ckpt = write_checkpoint(str(tmp_path / "step_1.pt"), head, data)
    assert evaluate.main([f"checkpoint={ckpt}", f"output_dir={tmp_path / 'out'}", "device=cpu", "progress=false",
                          "plots=false", "depths=[1]"]) == 0
    assert "weight tensor(s) hold NaN or inf (model.inner.lm_head.weight first)" in capsys.readouterr().err


def flip_a_stored_byte(path) -> None:
    """Flip one byte in the middle of the largest record's stored data (the file's middle byte can fall in the
    alignment padding between records, which no CRC covers: it did on torch 2.4.1)."""
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.compress_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26: info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_resume_skips_a_damaged_latest_checkpoint(sudoku_path, tmp_path, capsys):
    """A flipped byte in `latest`'s file: resume warns, continues from the newest intact one, and repeats
    the run that never had the damage."""
    full, damaged = tmp_path / "full", tmp_path / "damaged"
    args = ["checkpoint_interval_steps=2", "lr=1e-3"]
    assert pretrain.main([*TRM, *overrides(sudoku_path, full, "max_steps=6", *args)]) == 0
    assert pretrain.main([*TRM, *overrides(sudoku_path, damaged, "max_steps=4", *args)]) == 0
    flip_a_stored_byte(damaged / "step_4.pt")
    capsys.readouterr()
    assert pretrain.main([*TRM, *overrides(sudoku_path, damaged, "max_steps=6", *args, "resume=true")]) == 0
    err = capsys.readouterr().err
    assert "step_4.pt: corrupt checkpoint (checksum mismatch" in err and "resuming from the newest intact checkpoint, step_2.pt" in err
    assert train_losses(damaged) == train_losses(full)

    for name in ("step_2.pt", "step_6.pt"):
        (damaged / name).write_bytes(b"PK\x03\x04 cut short")
    (damaged / "step_4.pt").unlink()
    assert pretrain.main([*TRM, *overrides(sudoku_path, damaged, "max_steps=8", *args, "resume=true")]) == 2
    assert "no intact checkpoint to resume" in one_error_line(capsys)


@pytest.mark.parametrize("damage,expected", [
    ("label", "labels.npy: token ids must lie in [0, 11)"),
    ("vocab", "test/dataset.json: vocab_size 12, but the training split has 11"),
    ("maze", "test/dataset.json: seq_len 121, but the training split has 81"),
])
def test_a_bad_test_split_stops_the_run_before_step_1(sudoku_path, tmp_path, capsys, damage, expected):
    import shutil

    import numpy as np

    from dataset import build_maze_unique_dataset

    data = tmp_path / "data"
    shutil.copytree(sudoku_path, data)
    test = data / "test"
    if damage == "label":
        labels = next(test.glob("*__labels.npy"))
        array = np.load(labels)
        array[-1, 0] = 11  # one out-of-vocabulary label at the very end
        np.save(labels, array)
    elif damage == "vocab":
        meta = json.loads((test / "dataset.json").read_text())
        (test / "dataset.json").write_text(json.dumps({**meta, "vocab_size": 12}))
    else:
        maze = tmp_path / "maze"
        build_maze_unique_dataset.main(["--grid-size", "11", "--train-samples", "4", "--test-samples", "4",
                                        "--min-path-length", "8", "--max-path-length", "24", "--output-dir", str(maze)])
        shutil.rmtree(test)
        shutil.copytree(maze / "test", test)
        capsys.readouterr()  # the builder's progress
    run = tmp_path / "run"
    assert pretrain.main([*TRM, *overrides(str(data), run, "max_steps=2")]) == 2
    assert expected in one_error_line(capsys)
    assert not run.exists() or not list(run.glob("step_*"))


def test_wandb_with_a_key_but_no_server_falls_back_to_offline_quickly(sudoku_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there: connection refused
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run = tmp_path / "run"
    args = [a for a in overrides(sudoku_path, run, "max_steps=2") if not a.startswith("wandb_mode=")]
    started = time.time()
    assert pretrain.main([*TRM, *args]) == 0
    assert time.time() - started < 60  # without the check W&B retries for minutes
    assert "cannot be reached; logging to W&B offline" in capsys.readouterr().err
    assert any(p.name.startswith("offline-run-") for p in (run / "wandb").iterdir())


def write_shard(run_dir, step: int, rank: int, state: dict) -> None:
    from utils.checkpoint import shard_name
    from utils.files import atomic_save
    atomic_save(state, os.path.join(run_dir, shard_name(step, rank)))


def test_the_run_folder_format_round_trip(tmp_path):
    """utils/checkpoint.py owns where checkpoints go: shards, the latest pointer, the slim release copy."""
    import torch

    from utils.checkpoint import FORMAT, intact_checkpoint, latest_step, point_latest, read_run_checkpoint, write_slim

    run = str(tmp_path)
    assert latest_step(run) is None
    state = {"format": FORMAT, "step": 3, "config": {}, "model": {"w": torch.ones(2)}, "optimizer": {},
             "carry": None, "rng": {}, "loader": {}}
    write_shard(run, 3, 0, state)
    write_shard(run, 3, 1, {"format": FORMAT, "step": 3, "rank": 1})
    assert latest_step(run) is None  # `latest` moves only when told that every shard is written
    point_latest(run, 3)
    assert latest_step(run) == 3 and (tmp_path / "latest").read_text() == "step_3.pt\n"
    assert intact_checkpoint(run, str(tmp_path / "step_3.pt"), 2, 0) == str(tmp_path / "step_3.pt")
    (tmp_path / "step_3.rank1.pt").unlink()
    with pytest.raises(pretrain.CheckpointError, match="no intact checkpoint to resume"):
        intact_checkpoint(run, str(tmp_path / "step_3.pt"), 2, 0)
    shipped = str(tmp_path / "shipped" / "run.pt")
    assert list(write_slim(str(tmp_path / "step_3.pt"), shipped)) == ["format", "step", "config", "model"]
    assert list(read_run_checkpoint(shipped)) == ["format", "step", "config", "model"]


def test_prune_checkpoints_keeps_the_newest_steps_up_to_latest_and_nothing_else(tmp_path):
    from utils.checkpoint import point_latest, prune_checkpoints

    run, other = tmp_path / "run", tmp_path / "run" / "other-run"
    for step in range(1, 6):
        for rank in (0, 1):
            write_shard(str(run), step, rank, {"step": step, "rank": rank})
    write_shard(str(other), 1, 0, {"step": 1})
    (run / "config.yaml").write_text("seed: 0\n")
    point_latest(str(run), 4)  # step 5 is still being written: past `latest`, so not touched

    def left():
        return sorted(p.name for p in run.glob("step_*"))

    assert prune_checkpoints(str(run), None) == [] and len(left()) == 10
    prune_checkpoints(str(run), 2)
    assert left() == ["step_3.pt", "step_3.rank1.pt", "step_4.pt", "step_4.rank1.pt", "step_5.pt", "step_5.rank1.pt"]
    prune_checkpoints(str(run), 1)
    assert left() == ["step_4.pt", "step_4.rank1.pt", "step_5.pt", "step_5.rank1.pt"]
    assert (other / "step_1.pt").exists() and (run / "config.yaml").exists()


def test_checkpoint_keep_after_a_kill_between_save_and_prune_loses_nothing(sudoku_path, tmp_path):
    args = ["checkpoint_interval_steps=1", "lr=1e-3"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert pretrain.main([*TRM, *overrides(sudoku_path, full, "max_steps=6", "checkpoint_keep=2", *args)]) == 0
    assert sorted(p.name for p in full.glob("step_*")) == ["step_5.pt", "step_6.pt"]
    # A run killed after step 4's checkpoint and `latest` were written, before the prune: all four steps remain.
    assert pretrain.main([*TRM, *overrides(sudoku_path, cut, "max_steps=4", *args)]) == 0
    assert len(list(cut.glob("step_*"))) == 4
    assert pretrain.main([*TRM, *overrides(sudoku_path, cut, "max_steps=6", "checkpoint_keep=2", *args,
                                           "resume=true")]) == 0
    assert sorted(p.name for p in cut.glob("step_*")) == ["step_5.pt", "step_6.pt"]
    assert train_losses(cut) == train_losses(full)


def test_sigkill_of_a_run_that_prunes_every_step_leaves_a_resumable_latest(sudoku_path, tmp_path):
    from utils.checkpoint import check_archive, latest_checkpoint, latest_step

    run = tmp_path / "run"
    args = [*TRM, *overrides(sudoku_path, run, "checkpoint_interval_steps=1", "checkpoint_keep=1")]
    proc = start([*args, "max_steps=400"])
    wait_for(run / "step_5.pt", proc)
    proc.send_signal(signal.SIGKILL)  # anywhere in a step: saving, moving `latest` or pruning
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run finished before it could be killed"
    check_archive(latest_checkpoint(str(run)))  # whole and readable
    step = latest_step(str(run))
    assert pretrain.main([*args, f"max_steps={step + 1}", "resume=true"]) == 0
    assert sorted(p.name for p in run.glob("step_*")) == [f"step_{step + 1}.pt"]
