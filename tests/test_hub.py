"""hf:// checkpoints and the download script, offline, from a Hugging Face cache built in tmp_path.

The cache is laid out the way huggingface_hub writes it (<type>s--owner--name/{refs, blobs,
snapshots/<commit>}), and is read back only through the real hf_hub_download / snapshot_download.
"""
import hashlib
import os
import subprocess
import sys
import time

import pytest
from huggingface_hub.file_download import repo_folder_name

from models.checkpoint import load_for_eval
from models.eqr import ModelConfig, RecurrentReasoner
from models.losses import ACTLossHead
from utils.errors import CheckpointError
from utils.files import atomic_save
from utils.hub import parse_hf_uri, resolve_checkpoint_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import download_artifacts  # noqa: E402

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OLD_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HOME", raising=False)


def add_to_hub_cache(cache, repo_id: str, files: dict, repo_type: str = "model", commit: str = COMMIT,
                     refs=("main",)) -> str:
    """Write `files` ({repo path: bytes}) as one commit of a cached repo -> its snapshot folder."""
    repo = os.path.join(str(cache), repo_folder_name(repo_id=repo_id, repo_type=repo_type))
    snapshot = os.path.join(repo, "snapshots", commit)
    for rel, data in files.items():
        blob = os.path.join(repo, "blobs", hashlib.sha256(data).hexdigest())
        os.makedirs(os.path.dirname(blob), exist_ok=True)
        with open(blob, "wb") as f:
            f.write(data)
        link = os.path.join(snapshot, *rel.split("/"))
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(os.path.relpath(blob, os.path.dirname(link)), link)
    for ref in refs:
        os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
        with open(os.path.join(repo, "refs", ref), "w") as f:
            f.write(commit)
    return snapshot


def small_checkpoint_bytes(tmp_path, step: int) -> bytes:
    config = ModelConfig(seq_len=16, vocab_size=5, hidden_size=32, num_heads=2, L_layers=1, H_cycles=2, L_cycles=2)
    ckpt = {"format": "eqr/1", "step": step, "config": {"arch": config.to_dict()},
            "model": ACTLossHead(RecurrentReasoner(config)).state_dict()}
    path = tmp_path / f"ckpt-{step}.pt"
    atomic_save(ckpt, str(path))
    return path.read_bytes()


def test_parse_hf_uri():
    assert parse_hf_uri("hf://locuslab/EqR-model/sudoku-extreme/eqr.pth") == \
        ("locuslab/EqR-model", None, "sudoku-extreme/eqr.pth")
    assert parse_hf_uri("hf://a/b@v1/x.pth") == ("a/b", "v1", "x.pth")
    for bad in ("hf://locuslab/EqR-model", "hf://locuslab//x.pth", "hf://a/@v1/x.pth"):
        with pytest.raises(CheckpointError, match="expected hf://OWNER/REPO"):
            parse_hf_uri(bad)


def test_local_paths_pass_through():
    assert resolve_checkpoint_path("runs/x/step_10.pt") == "runs/x/step_10.pt"


def test_hf_uri_resolves_from_the_cache_offline(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    add_to_hub_cache(cache, "locuslab/EqR-model", {"sudoku-extreme/eqr.pth": b"new"})
    add_to_hub_cache(cache, "locuslab/EqR-model", {"sudoku-extreme/eqr.pth": b"old"}, commit=OLD_COMMIT,
                     refs=("v1",))
    uri = "hf://locuslab/EqR-model/sudoku-extreme/eqr.pth"

    path = resolve_checkpoint_path(uri, cache_dir=str(cache))
    assert open(path, "rb").read() == b"new" and path.startswith(str(cache))
    assert open(resolve_checkpoint_path("hf://locuslab/EqR-model@v1/sudoku-extreme/eqr.pth", str(cache)),
                "rb").read() == b"old"
    assert open(resolve_checkpoint_path(f"hf://locuslab/EqR-model@{OLD_COMMIT}/sudoku-extreme/eqr.pth",
                                        str(cache)), "rb").read() == b"old"

    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # the environment picks the cache too
    assert resolve_checkpoint_path(uri) == path
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # HF_HOME/hub
    assert resolve_checkpoint_path(uri) == path


def test_hub_errors_are_one_line(tmp_path):
    cache = tmp_path / "hub"
    add_to_hub_cache(cache, "locuslab/EqR-model", {"sudoku-extreme/eqr.pth": b"x"})
    for uri in ("hf://locuslab/EqR-model/maze-unique/eqr.pth",  # repo cached, file not
                "hf://someone/else/eqr.pth",  # repo not cached
                "hf://locuslab/EqR-model@v9/sudoku-extreme/eqr.pth"):  # revision not cached
        with pytest.raises(CheckpointError) as err:
            resolve_checkpoint_path(uri, cache_dir=str(cache))
        message = str(err.value)
        assert "\n" not in message and message.startswith(uri + ": ")
        assert "not in the Hugging Face cache" in message and "HF_HUB_OFFLINE is set" in message


def test_without_a_network_an_uncached_file_fails_fast_and_a_cached_one_resolves(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    cache = tmp_path / "hub"
    add_to_hub_cache(cache, "locuslab/EqR-model", {"sudoku-extreme/eqr.pth": b"x"})
    started = time.time()
    with pytest.raises(CheckpointError) as err:
        resolve_checkpoint_path("hf://locuslab/EqR-model/maze-unique/eqr.pth", cache_dir=str(cache))
    assert time.time() - started < 5
    assert "(http://127.0.0.1:9) cannot be reached" in str(err.value) and "\n" not in str(err.value)
    path = resolve_checkpoint_path("hf://locuslab/EqR-model/sudoku-extreme/eqr.pth", cache_dir=str(cache))
    assert open(path, "rb").read() == b"x"


def test_load_for_eval_from_an_hf_uri(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    data = small_checkpoint_bytes(tmp_path, step=77)
    add_to_hub_cache(cache, "me/my-eqr", {"runs/a/step_77.pt": data})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    model, info = load_for_eval("hf://me/my-eqr/runs/a/step_77.pt")
    assert info["step"] == 77 and info["uri"] == "hf://me/my-eqr/runs/a/step_77.pt"
    assert info["source"].startswith(str(cache)) and info["sha256"] == hashlib.sha256(data).hexdigest()
    assert not model.training


def populate_authors_repos(cache, data_under_folder: bool):
    data_files = {
        "sudoku-extreme-1k-aug-1000/train/all__inputs.npy": b"sudoku inputs",
        "sudoku-extreme-1k-aug-1000/test/dataset.json": b"{}",
        "maze-30x30-unique-1k/train/all__labels.npy": b"maze labels",
    }
    if data_under_folder:
        data_files = {f"data/{k}": v for k, v in data_files.items()}
    add_to_hub_cache(cache, "locuslab/EqR-data", {**data_files, "README.md": b"card", ".gitattributes": b"*"},
                     repo_type="dataset")
    add_to_hub_cache(cache, "locuslab/EqR-model", {"sudoku-extreme/eqr.pth": b"sudoku", "maze-unique/eqr.pth": b"maze",
                                                   "sudoku-extreme/trm.pth": b"trm", "README.md": b"card"})


@pytest.mark.parametrize("data_under_folder", [False, True])
def test_download_script_places_data_and_checkpoints_from_the_cache(tmp_path, capsys, data_under_folder):
    cache = tmp_path / "hub"
    populate_authors_repos(cache, data_under_folder)
    data_dir, ckpt_dir = tmp_path / "data", tmp_path / "downloaded_checkpoints"
    rc = download_artifacts.main(["--with-ckpts", "--offline", "--cache-dir", str(cache), "--data-dir", str(data_dir),
                                  "--ckpt-dir", str(ckpt_dir)])
    assert rc == 0
    assert (data_dir / "sudoku-extreme-1k-aug-1000/train/all__inputs.npy").read_bytes() == b"sudoku inputs"
    assert (data_dir / "maze-30x30-unique-1k/train/all__labels.npy").read_bytes() == b"maze labels"
    assert sorted(os.listdir(data_dir)) == ["maze-30x30-unique-1k", "sudoku-extreme-1k-aug-1000"]
    assert (ckpt_dir / "sudoku-extreme/eqr.pth").read_bytes() == b"sudoku"
    assert (ckpt_dir / "maze-unique/eqr.pth").read_bytes() == b"maze"
    assert not (ckpt_dir / "sudoku-extreme/trm.pth").exists() and not (ckpt_dir / "README.md").exists()
    out = capsys.readouterr().out
    assert str(ckpt_dir / "maze-unique/eqr.pth") in out and str(data_dir / "sudoku-extreme-1k-aug-1000") in out

    # A second run finds everything in place; a pattern picks other checkpoints.
    assert download_artifacts.main(["--ckpts-only", "--offline", "--cache-dir", str(cache), "--ckpt-dir",
                                    str(ckpt_dir), "--ckpt-pattern", "sudoku-extreme/*.pth"]) == 0
    assert (ckpt_dir / "sudoku-extreme/trm.pth").read_bytes() == b"trm"


def test_download_script_errors_are_one_line(tmp_path, capsys):
    cache = tmp_path / "hub"
    populate_authors_repos(cache, data_under_folder=False)
    common = ["--offline", "--cache-dir", str(cache), "--ckpt-dir", str(tmp_path / "c")]
    assert download_artifacts.main(["--ckpts-only", "--ckpt-pattern", "sudoku-extreme/nope.pth", *common]) == 1
    assert download_artifacts.main(["--ckpts-only", "--ckpt-repo", "someone/else", *common]) == 1
    assert download_artifacts.main(["--ckpts-only", "--revision", "v9", *common]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("download_artifacts: error: ") for e in errors)
    assert "no file matches sudoku-extreme/nope.pth" in errors[0]
    assert "model repo someone/else: not (completely) in the Hugging Face cache" in errors[1]
    assert "model repo locuslab/EqR-model@v9" in errors[2]
    assert not (tmp_path / "c").exists()


def test_shell_wrapper_runs_the_script_offline(tmp_path):
    cache = tmp_path / "hub"
    populate_authors_repos(cache, data_under_folder=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "PYTHON": sys.executable}
    done = subprocess.run(["bash", os.path.join(ROOT, "scripts/download_artifacts.sh"), "--ckpts-only"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "downloaded_checkpoints/maze-unique/eqr.pth").read_bytes() == b"maze"
    assert not (tmp_path / "data").exists()


def test_a_resolver_that_never_answers_is_bounded_too(monkeypatch):
    import socket

    from utils.network import reachable

    def hanging_lookup(*args, **kwargs):
        time.sleep(30)
        raise socket.gaierror("no answer")

    monkeypatch.setattr(socket, "getaddrinfo", hanging_lookup)
    started = time.time()
    assert not reachable("https://huggingface.co", timeout=1.0)
    assert time.time() - started < 3
    started = time.time()
    monkeypatch.undo()
    assert not reachable("http://127.0.0.1:9", timeout=10.0)  # refused: answered at once, not after the timeout
    assert time.time() - started < 2
