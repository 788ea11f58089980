"""utils/files.py: whole-or-absent writes with the usual file mode, one-line errors on a full disk,
stale temp files cleared; and what evaluate.py refuses to overwrite or run on."""
import errno
import os
import stat

import numpy as np
import pytest

import evaluate
import pretrain
from dataset.common import single_example_split, write_dataset
from test_eval_grid import EQR, build_model, write_checkpoint, write_data
from test_train import overrides, sudoku_path  # noqa: F401 (fixture)
from utils import files
from utils.errors import RunError


def test_written_files_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        files.atomic_write(str(tmp_path / "a.json"), "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == 0o644


def test_a_full_disk_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "latest"
    target.write_text("step_2.pt\n")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", no_space)
    with pytest.raises(RunError, match="latest: could not write \\(No space left on device\\)"):
        files.atomic_write(str(target), "step_4.pt\n")
    assert target.read_text() == "step_2.pt\n" and os.listdir(tmp_path) == ["latest"]


def test_a_full_disk_stops_training_with_one_line(sudoku_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(files.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    assert pretrain.main(["--config-name", "train/trm_sudoku", *overrides(sudoku_path, tmp_path / "run", "max_steps=2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "No space left on device" in err[0]


def test_training_clears_temp_files_of_killed_writers(sudoku_path, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".tmp-abc123").write_bytes(b"x" * 1000)  # what a kill during a checkpoint write leaves
    assert pretrain.main(["--config-name", "train/trm_sudoku", *overrides(sudoku_path, run, "max_steps=1")]) == 0
    assert not (run / ".tmp-abc123").exists() and "left by an interrupted write" in capsys.readouterr().err


@pytest.fixture
def eval_files(tmp_path):
    head = build_model(EQR)
    data = write_data(str(tmp_path / "data"), head, n=4)
    return data, write_checkpoint(str(tmp_path / "step_1.pt"), head, data)


def test_evaluate_never_overwrites_finished_results(eval_files, tmp_path, capsys):
    data, ckpt = eval_files
    args = [f"checkpoint={ckpt}", f"output_dir={tmp_path / 'out'}", "device=cpu", "progress=false", "plots=false"]
    assert evaluate.main(args) == 0
    before = (tmp_path / "out" / "results.json").read_bytes()
    capsys.readouterr()
    assert evaluate.main([*args, "seed=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: output_dir:") and "finished evaluation" in err and len(err.splitlines()) == 1
    assert (tmp_path / "out" / "results.json").read_bytes() == before


def test_evaluate_refuses_an_empty_split(eval_files, tmp_path, capsys):
    data, ckpt = eval_files
    empty = single_example_split(np.zeros((0, EQR["seq_len"]), dtype=np.int64), np.zeros((0, EQR["seq_len"]), dtype=np.int64),
                                 EQR["vocab_size"])
    write_dataset(str(tmp_path / "empty"), {"train": empty, "test": empty})
    assert evaluate.main([f"checkpoint={ckpt}", f"data_path={tmp_path / 'empty'}", f"output_dir={tmp_path / 'out'}",
                          "device=cpu", "progress=false"]) == 2
    assert "holds no puzzles" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_whose_config_does_not_fit_its_tensors_allocates_nothing(eval_files, tmp_path, capsys):
    """A 2 KB file claiming hidden_size 4,000,000: one line, before any weight is allocated (341 TB otherwise)."""
    import torch

    from utils.files import atomic_save

    data, ckpt = eval_files
    original = torch.load(ckpt, weights_only=True)
    huge = dict(original, config={**original["config"], "arch": {**original["config"]["arch"], "hidden_size": 4_000_000}})
    atomic_save(huge, str(tmp_path / "huge.pt"))
    assert evaluate.main([f"checkpoint={tmp_path / 'huge.pt'}", f"data_path={data}", "device=cpu", "progress=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert "architecture expects (4, 4000000)" in err and len(err.splitlines()) == 1, err


def test_a_breadth_that_cannot_fit_is_refused_with_the_batch_that_could(eval_files, tmp_path, capsys):
    data, ckpt = eval_files
    assert evaluate.main([f"checkpoint={ckpt}", f"output_dir={tmp_path / 'out'}", "device=cpu", "progress=false",
                          "breadths=[1,100000000000]", "global_batch_size=4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: global_batch_size: 4 puzzles x 100000000000 trajectories need at least")
    assert "even one puzzle per process does not fit" in err and not (tmp_path / "out").exists()
    assert evaluate.main([f"checkpoint={ckpt}", f"output_dir={tmp_path / 'out'}", "device=cpu", "progress=false",
                          "breadths=[1,1000000]", "global_batch_size=1000000"]) == 2
    assert "the largest global_batch_size that could fit is" in capsys.readouterr().err
