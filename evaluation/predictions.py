"""predictions.npz: the answer evaluate.py picked for every test puzzle (`save_outputs=true`).

One file in output_dir, in numpy's .npz format (compressed; no pickled objects), one row per
evaluated puzzle in split order:

    index       int64 [N]     the puzzle's position in the split
    inputs      uint8 [N, S]  the puzzle's tokens
    labels      uint8 [N, S]  the solution's tokens; 0 marks a cell that is not scored
    answers     uint8 [N, S]  the headline cell's answer: the argmax token of every cell
    trajectory  int32 [N]     which of the B trajectories (0-based) gave the answer
    solved      bool [N]      every scored cell right (False for a puzzle without scored cells)
    format, rule (str), depth, breadth (int): the headline cell the answers come from

Token arrays are uint16 when the vocabulary has more than 256 tokens. Exact accuracy is
solved.sum() / (labels != 0).any(1).sum(), results.json's headline accuracy.

While the sweep runs, each rank writes its rows in chunks beside its partial counts
(output_dir/partial/, one chunk per save, so a resumed sweep keeps them); rank 0 merges them at the end.
"""
import glob
import io
import os
import re

import numpy as np
import torch

from evaluation.sweep import partial_path
from utils.constants import IGNORE_LABEL_ID
from utils.errors import RunError
from utils.files import atomic_write

FORMAT = "eqr-predictions/1"
FILE_NAME = "predictions.npz"
ROW_KEYS = ("index", "inputs", "labels", "answers", "trajectory", "solved")
_CHUNK = re.compile(r"predictions-rank(\d+)-of-(\d+)-batches(\d+)-(\d+)\.npz$")


def read_predictions(path: str) -> dict:
    """A predictions.npz as a dict of numpy arrays (the keys above); `rule` a str, `depth` and `breadth` ints."""
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {key: f[key] for key in f.files}
    except (OSError, ValueError) as e:
        raise RunError(f"{path}: not a readable predictions file ({e})") from None
    if str(data.get("format", "")) != FORMAT or any(key not in data for key in ROW_KEYS):
        raise RunError(f"{path}: not an {FORMAT} file (expected the arrays {', '.join(ROW_KEYS)})")
    data.update(format=str(data["format"]), rule=str(data["rule"]), depth=int(data["depth"]), breadth=int(data["breadth"]))
    return data


def token_dtype(vocab_size: int):
    return np.uint8 if vocab_size <= 256 else np.uint16


def _chunks(output_dir: str, world_size: int, rank: int | None = None) -> list[tuple[str, int, int, int]]:
    """(path, rank, first batch, end batch) of the chunk files of a sweep over `world_size` ranks."""
    folder = os.path.dirname(partial_path(output_dir, 0, world_size))
    found = []
    for path in glob.glob(os.path.join(glob.escape(folder), "predictions-*.npz")):
        match = _CHUNK.search(os.path.basename(path))
        if match and int(match[2]) == world_size and rank in (None, int(match[1])):
            found.append((path, int(match[1]), int(match[3]), int(match[4])))
    return sorted(found, key=lambda c: (c[1], c[2]))


def _npz_bytes(arrays: dict) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


class ShardWriter:
    """One rank's predictions: rows collected batch by batch, written as a chunk at each `flush`.

    A resumed rank starts at `start_batch` (where its saved counts end) and drops its chunks that go
    past it: they were written after the last counts were saved, and those batches run again.
    """

    def __init__(self, output_dir: str, rank: int, world_size: int, start_batch: int, vocab_size: int):
        self.output_dir, self.rank, self.world_size = output_dir, rank, world_size
        self.first, self.dtype, self.rows = start_batch, token_dtype(vocab_size), []
        for path, _, _, end in _chunks(output_dir, world_size, rank):
            if end > start_batch:
                os.remove(path)

    def add(self, batch: dict, headline: dict) -> None:
        """Keep the real puzzles of one batch; headline as evaluation.grid.run_batch returns it."""
        keep = batch["mask"]
        labels = torch.where(batch["labels"] == IGNORE_LABEL_ID, 0, batch["labels"])
        values = {"index": batch["index"], "inputs": batch["inputs"], "labels": labels, "answers": headline["answer"],
                  "trajectory": headline["trajectory"], "solved": headline["solved"]}
        dtypes = {"index": np.int64, "trajectory": np.int32, "solved": np.bool_}
        self.rows.append({k: v[keep].cpu().numpy().astype(dtypes.get(k, self.dtype)) for k, v in values.items()})

    def flush(self, next_batch: int) -> None:
        """Write the rows of batches [first, next_batch) as one chunk (call before saving the counts)."""
        if self.rows:
            folder = os.path.dirname(partial_path(self.output_dir, self.rank, self.world_size))
            name = f"predictions-rank{self.rank}-of-{self.world_size}-batches{self.first:08d}-{next_batch:08d}.npz"
            atomic_write(os.path.join(folder, name),
                         _npz_bytes({k: np.concatenate([r[k] for r in self.rows]) for k in ROW_KEYS}))
        self.first, self.rows = next_batch, []


def merge(output_dir: str, world_size: int, examples: int, depth: int, breadth: int, rule: str) -> str:
    """Rank 0, after every rank's last flush: join all chunks into output_dir/predictions.npz, delete them."""
    chunks = _chunks(output_dir, world_size)
    parts = []
    for path, *_ in chunks:
        with np.load(path, allow_pickle=False) as f:
            parts.append({k: f[k] for k in ROW_KEYS})
    if not parts:
        raise RunError(f"{output_dir}/partial: no prediction chunks to merge; was the sweep started with save_outputs=true?")
    rows = {k: np.concatenate([p[k] for p in parts]) for k in ROW_KEYS}
    order = np.argsort(rows["index"], kind="stable")
    rows = {k: v[order] for k, v in rows.items()}
    if len(rows["index"]) != examples or len(np.unique(rows["index"])) != examples:
        raise RunError(f"{output_dir}/partial: prediction chunks hold {len(np.unique(rows['index']))} distinct puzzles "
                       f"in {len(rows['index'])} rows, expected {examples}; rerun the evaluation in a new output_dir")
    path = os.path.join(output_dir, FILE_NAME)
    atomic_write(path, _npz_bytes({**rows, "format": np.array(FORMAT), "rule": np.array(rule),
                                   "depth": np.array(depth), "breadth": np.array(breadth)}))
    for chunk, *_ in chunks:
        os.remove(chunk)
    return path
