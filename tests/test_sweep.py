"""evaluation/sweep.py: the partial-results file is read back as written; one of another format or run is refused."""
import pytest
import torch

from evaluation import sweep
from utils.errors import ConfigError
from utils.files import atomic_save, release_folders

IDENTITY = {"checkpoint_sha256": "ab" * 32, "examples": 9, "seed": 0, "spec": {"depths": [1, 2]}}


def open_sweep(folder, identity=IDENTITY):
    try:
        return sweep.Sweep(str(folder), identity, 0, 1, resume=True, finished="results.json")
    finally:
        release_folders()


def test_a_saved_partial_resumes_and_a_file_without_the_format_key_reads_as_version_1(tmp_path):
    counts = torch.arange(6)
    sweep.save_partial(sweep.partial_path(str(tmp_path), 0, 1), IDENTITY, 3, 1.5, {"counts": counts})
    state = open_sweep(tmp_path).state
    assert state["format"] == sweep.FORMAT and state["next_batch"] == 3 and torch.equal(state["counts"], counts)
    # as evaluate.py and diagnose.py wrote it before the format key: the same keys, no "format"
    atomic_save({"fingerprint": sweep.fingerprint(IDENTITY), "identity": IDENTITY, "next_batch": 2, "seconds": 1.0,
                 "records": {"puzzle": torch.arange(4)}}, sweep.partial_path(str(tmp_path), 0, 1))
    resumed = open_sweep(tmp_path)
    assert resumed.start_batch == 2 and resumed.seconds_before == 1.0 and "records" in resumed.state


def test_a_partial_of_another_format_or_run_is_refused_naming_the_file(tmp_path):
    path = sweep.partial_path(str(tmp_path), 0, 1)
    atomic_save({"format": "eqr-partial/9", "fingerprint": sweep.fingerprint(IDENTITY), "identity": IDENTITY,
                 "next_batch": 1, "seconds": 0.0}, path)
    with pytest.raises(ConfigError, match=f"{path}: a partial result of format 'eqr-partial/9', expected eqr-partial/1"):
        open_sweep(tmp_path)
    sweep.save_partial(path, IDENTITY, 1, 0.0, {})
    with pytest.raises(ConfigError, match=f"{path}: written with seed=0, this run has seed=1"):
        open_sweep(tmp_path, {**IDENTITY, "seed": 1})
