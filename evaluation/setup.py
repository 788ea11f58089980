"""What the evaluating entry points (evaluate.py, solve.py, diagnose.py) do before their pass: load a checkpoint in the
dtype to run, open its dataset's split (once: the opened split is what the pass reads), find the settings it was
trained with, and name its output folder."""
import os

from dataset.common import PuzzleDatasetMetadata, Split, open_split
from models.checkpoint import load_for_eval
from utils.errors import ConfigError
from utils.processes import resolve_forward_dtype


def checkpoint_name(uri: str) -> str:
    """'hf://locuslab/EqR-model/sudoku-extreme/eqr.pth' -> 'sudoku-extreme_eqr'."""
    parts = uri.rstrip("/").split("/")
    stem = os.path.splitext(parts[-1])[0]
    parent = parts[-2] if len(parts) > 1 and parts[-2] not in ("", ".", "hf:") else ""
    return f"{parent}_{stem}" if parent else stem


def train_setting(train_config: dict, key: str):
    """A training config value, in our layout or the reference's (dataset.data_path)."""
    if train_config.get(key) is not None:
        return train_config[key]
    if key == "data_path":
        return (train_config.get("dataset") or {}).get("data_path")
    return None


def dataset_for(opened: Split | None, train_config: dict, split: str, model_config) -> Split:
    """The split to run on: `opened` (the data_path given), else the checkpoint's dataset's, opened here; checked
    against the model's shapes."""
    if opened is None:
        data_path = train_setting(train_config, "data_path")
        if not data_path:
            raise ConfigError("data_path: the checkpoint does not record its dataset; pass data_path=<dataset folder>")
        opened = open_split(data_path, split)
    for key in ("seq_len", "vocab_size"):
        if getattr(opened.meta, key) != getattr(model_config, key):
            raise ConfigError(f"data_path: {opened.data_path} has {key} {getattr(opened.meta, key)}, "
                              f"the checkpoint's model {getattr(model_config, key)}")
    return opened


def load_model(checkpoint: str, trust: bool, forward_dtype: str | None, device, world_size: int,
               data_meta: PuzzleDatasetMetadata | None = None, overrides: dict | None = None):
    """load_for_eval in the dtype to run: forward_dtype as given (auto: the device's native one), or the checkpoint's,
    except that a bfloat16 checkpoint on a device without bf16 units runs in float32 (one notice says so). A file
    that does not record its sizes is sized by data_meta, the split's to run on."""

    def load(dtype):
        return load_for_eval(checkpoint, trust_checkpoint=trust, data_seq_len=data_meta.seq_len if data_meta else None,
                             data_vocab_size=data_meta.vocab_size if data_meta else None,
                             overrides={**(overrides or {}), **({"forward_dtype": dtype} if dtype else {})} or None)

    head, info = load(resolve_forward_dtype(forward_dtype, device, world_size))
    if forward_dtype is None and head.model.config.forward_dtype == "bfloat16":
        dtype = resolve_forward_dtype("bfloat16", device, world_size, typed=False)
        if dtype != "bfloat16":
            head, info = load(dtype)
    return head, info
