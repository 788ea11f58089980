"""Checkpoint files: atomic writes and safe reads.

A training checkpoint written by pretrain.py is a dict of tensors and plain types only
(so it loads with `torch.load(weights_only=True)`):
    format       "eqr/1"
    step         optimizer steps done
    config       the resolved training config; config["arch"] holds every ModelConfig field,
                 seq_len and vocab_size included, so the file rebuilds its own model
    model        state dict of the ACT loss head (names "model.inner.*"), float32
    ema          {"rate": float, "shadow": {name: tensor}} when EMA is on
    optimizer, carry, rng, loader   what an exact resume needs
"""
import os
import tempfile

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit; the message names the file."""


def atomic_save(obj, path: str) -> None:
    """torch.save to a temp file in the same folder, then rename: the file is whole or absent."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def safe_load(path: str, map_location="cpu") -> dict:
    """Load a checkpoint that holds only tensors and plain types; anything else is refused."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({first_line})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    return obj
