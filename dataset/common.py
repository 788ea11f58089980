"""On-disk dataset layout shared with HRM/TRM/EqR: metadata, loading with checks, atomic writing.

A dataset folder holds `identifiers.json` and one folder per split (`train/`, `test/`), each with
`dataset.json` and the arrays `<set>__{inputs,labels,puzzle_identifiers,puzzle_indices,group_indices}.npy`.
Offsets: examples of puzzle p are rows [puzzle_indices[p], puzzle_indices[p+1]); puzzles of group g
are [group_indices[g], group_indices[g+1]).
"""
import argparse
import dataclasses
import glob
import json
import os
import shutil
import sys
import uuid
from dataclasses import dataclass

import numpy as np

from utils.errors import DatasetError
from utils.files import try_flock

ARRAY_NAMES = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help of the dataset commands: the docstring's examples as written, and every option's default."""

    def _get_help_string(self, action):
        if action.default in (None, argparse.SUPPRESS) or not action.option_strings or "%(default)" in action.help:
            return action.help
        return f"{action.help} (default: %(default)s)"


@dataclass
class PuzzleDatasetMetadata:
    pad_id: int
    ignore_label_id: int | None
    blank_identifier_id: int
    vocab_size: int
    seq_len: int
    num_puzzle_identifiers: int
    total_groups: int
    mean_puzzle_examples: float
    sets: list[str]
    total_samples: int | None = None


def load_metadata(data_path: str, split: str) -> PuzzleDatasetMetadata:
    path = os.path.join(data_path, split, "dataset.json")
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: missing (expected a dataset split folder with dataset.json); build the set with "
                           f"python -m dataset.build_sudoku_dataset or dataset.build_maze_unique_dataset --output-dir "
                           f"{data_path}, or download the authors' with bash scripts/download_artifacts.sh (docs/datasets.md)")
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(raw, dict):
        raise DatasetError(f"{path}: expected a JSON object")
    fields = {f.name: f for f in dataclasses.fields(PuzzleDatasetMetadata)}
    missing = [name for name, f in fields.items() if name not in raw and f.default is dataclasses.MISSING]
    if missing:
        raise DatasetError(f"{path}: missing key(s) {', '.join(missing)}")
    values = {name: raw[name] for name in fields if name in raw}  # extra keys are ignored, as the reference does
    for name in ("pad_id", "blank_identifier_id", "vocab_size", "seq_len", "num_puzzle_identifiers", "total_groups"):
        if not isinstance(values[name], int) or values[name] < 0:
            raise DatasetError(f"{path}: key {name} must be a non-negative integer, got {values[name]!r}")
    if values["vocab_size"] < 1 or values["seq_len"] < 1:
        raise DatasetError(f"{path}: vocab_size and seq_len must be positive")
    if not isinstance(values["sets"], list) or not values["sets"] or not all(isinstance(s, str) for s in values["sets"]):
        raise DatasetError(f"{path}: key sets must be a non-empty list of names, got {values['sets']!r}")
    return PuzzleDatasetMetadata(**values)


def _load_array(path: str, mmap: bool) -> np.ndarray:
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: missing")
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as e:  # numpy reports truncation/corruption with several exception types
        raise DatasetError(f"{path}: not a readable .npy array, maybe truncated ({type(e).__name__}: {e})") from None
    if not np.issubdtype(arr.dtype, np.integer):
        raise DatasetError(f"{path}: expected an integer array, got dtype {arr.dtype}")
    return arr


def load_split(data_path: str, split: str, check_values: bool = True) -> tuple[PuzzleDatasetMetadata, dict[str, np.ndarray]]:
    """Loads one split and checks the arrays against dataset.json. Inputs/labels are memory-mapped.

    Raises DatasetError naming the file and what was expected. With check_values, token ids are
    checked against vocab_size (one pass over the data).
    """
    meta = load_metadata(data_path, split)
    if len(meta.sets) != 1:
        raise DatasetError(f"{os.path.join(data_path, split, 'dataset.json')}: expected exactly one set, got {meta.sets}")
    prefix = os.path.join(data_path, split, f"{meta.sets[0]}__")
    arrays = {name: _load_array(prefix + name + ".npy", mmap=name in ("inputs", "labels")) for name in ARRAY_NAMES}

    puzzle_indices, group_indices = arrays["puzzle_indices"], arrays["group_indices"]
    for name in ("puzzle_indices", "group_indices", "puzzle_identifiers"):
        if arrays[name].ndim != 1:
            raise DatasetError(f"{prefix}{name}.npy: expected a 1-D array, got shape {arrays[name].shape}")
    for name, arr in (("puzzle_indices", puzzle_indices), ("group_indices", group_indices)):
        if arr.size < 1 or arr[0] != 0 or np.any(np.diff(arr) < 0):
            raise DatasetError(f"{prefix}{name}.npy: expected non-decreasing offsets starting at 0")
    num_examples = int(puzzle_indices[-1])
    num_puzzles = puzzle_indices.size - 1
    if meta.total_samples is not None and meta.total_samples != num_examples:
        raise DatasetError(f"{prefix}puzzle_indices.npy: ends at {num_examples} but dataset.json total_samples is {meta.total_samples}")
    if group_indices.size != meta.total_groups + 1:
        raise DatasetError(f"{prefix}group_indices.npy: expected {meta.total_groups + 1} offsets (total_groups + 1), got {group_indices.size}")
    if int(group_indices[-1]) != num_puzzles:
        raise DatasetError(f"{prefix}group_indices.npy: ends at {int(group_indices[-1])}, expected the puzzle count {num_puzzles}")
    if arrays["puzzle_identifiers"].shape != (num_puzzles,):
        raise DatasetError(f"{prefix}puzzle_identifiers.npy: expected shape ({num_puzzles},), got {arrays['puzzle_identifiers'].shape}")
    ids = arrays["puzzle_identifiers"]
    if ids.size and (ids.min() < 0 or ids.max() >= meta.num_puzzle_identifiers):
        raise DatasetError(f"{prefix}puzzle_identifiers.npy: values must lie in [0, {meta.num_puzzle_identifiers}) (num_puzzle_identifiers)")
    for name in ("inputs", "labels"):
        arr = arrays[name]
        if arr.shape != (num_examples, meta.seq_len):
            raise DatasetError(f"{prefix}{name}.npy: expected shape ({num_examples}, {meta.seq_len}) (total_samples, seq_len), got {arr.shape}")
        if check_values and arr.size:
            low, high = int(arr.min()), int(arr.max())
            if low < 0 or high >= meta.vocab_size:
                raise DatasetError(f"{prefix}{name}.npy: token ids must lie in [0, {meta.vocab_size}) (vocab_size), found [{low}, {high}]")
    return meta, arrays


@dataclass(frozen=True)
class Split:
    """One split of a dataset folder, opened once per process (open_split) and handed to what reads it."""
    data_path: str
    name: str
    meta: PuzzleDatasetMetadata
    arrays: dict[str, np.ndarray]

    @property
    def num_examples(self) -> int:
        return len(self.arrays["inputs"])


def open_split(data_path: str, name: str) -> Split:
    """load_split with every value checked, kept for the process's life."""
    return Split(data_path, name, *load_split(data_path, name, check_values=True))


def write_dataset(output_dir: str, splits: dict[str, tuple[PuzzleDatasetMetadata, dict[str, np.ndarray]]],
                  identifiers: list[str] | None = None) -> None:
    """Writes a whole dataset folder atomically: everything goes to a temporary sibling folder that is
    renamed into place at the end, so the result is complete or absent. An existing dataset at
    output_dir is replaced; any other existing folder there is refused. Temp folders that killed builders of
    the same output_dir left behind are removed first; a write that fails (a full disk, a read-only folder) is
    one DatasetError, with output_dir as it was."""
    output_dir = os.path.normpath(output_dir)
    if os.path.exists(output_dir) and not os.path.exists(os.path.join(output_dir, "identifiers.json")):
        raise DatasetError(f"{output_dir}: exists and is not a dataset folder (expected a new path or an old dataset to replace)")
    parent = os.path.dirname(os.path.abspath(output_dir))
    tmp_dir, lock = os.path.join(parent, f".{os.path.basename(output_dir)}.tmp-{uuid.uuid4().hex[:8]}"), None
    try:
        os.makedirs(parent, exist_ok=True)
        os.makedirs(tmp_dir)
        lock = try_flock(tmp_dir)  # while this builder lives, no other one takes its temp folder for a stale one
        remove_stale_builds(output_dir, keep=tmp_dir)
        for split, (meta, arrays) in splits.items():
            split_dir = os.path.join(tmp_dir, split)
            os.makedirs(split_dir)
            with open(os.path.join(split_dir, "dataset.json"), "w") as f:
                json.dump(dataclasses.asdict(meta), f)
            for name in ARRAY_NAMES:
                np.save(os.path.join(split_dir, f"{meta.sets[0]}__{name}.npy"), arrays[name])
        with open(os.path.join(tmp_dir, "identifiers.json"), "w") as f:
            json.dump(identifiers or ["<blank>"], f)
        if os.path.exists(output_dir):
            old_dir = tmp_dir + ".old"
            os.rename(output_dir, old_dir)
            os.rename(tmp_dir, output_dir)
            shutil.rmtree(old_dir, ignore_errors=True)  # what is left, the next build removes
        else:
            os.rename(tmp_dir, output_dir)
    except OSError as e:
        where = f" at {e.filename}" if e.filename else ""
        raise DatasetError(f"{output_dir}: could not write the dataset ({e.strerror or e}{where}); "
                           f"{output_dir} is as it was") from None
    finally:
        if lock is not None:
            os.close(lock)
        if os.path.exists(tmp_dir):
            shutil.rmtree(tmp_dir, ignore_errors=True)


def remove_stale_builds(output_dir: str, keep: str | None = None) -> list[str]:
    """Remove the `.NAME.tmp-*` folders (and `.NAME.tmp-*.old`, a kill during the swap) that killed builders of
    output_dir left beside it; a live builder locks its folder, so that one is kept, as is `keep`. Returns what was
    removed."""
    parent, name = os.path.split(os.path.abspath(output_dir))
    removed = []
    for path in sorted(glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(name)}.tmp-*"))):
        owner = path.removesuffix(".old")  # an .old folder is its builder's until that builder's temp folder is gone
        if owner == keep:
            continue
        if os.path.exists(owner):
            fd = try_flock(owner)
            if fd is None:  # a live builder holds it
                continue
            os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
        print(f"warning: removed {path}, left by an interrupted build of {output_dir}", file=sys.stderr)
    return removed


def single_example_split(inputs: np.ndarray, labels: np.ndarray, vocab_size: int, group_size: int = 1) -> tuple[PuzzleDatasetMetadata, dict[str, np.ndarray]]:
    """Metadata and arrays for the common case: one example per puzzle, `group_size` consecutive puzzles
    per group (a puzzle and its augmentations), no puzzle identifiers (all 0 = blank)."""
    n, seq_len = inputs.shape
    if n % group_size:
        raise ValueError(f"{n} examples do not split into groups of {group_size}")
    arrays = {
        "inputs": np.ascontiguousarray(inputs, dtype=np.uint8),
        "labels": np.ascontiguousarray(labels, dtype=np.uint8),
        "puzzle_identifiers": np.zeros(n, dtype=np.int32),
        "puzzle_indices": np.arange(n + 1, dtype=np.int32),
        "group_indices": np.arange(0, n + 1, group_size, dtype=np.int32),
    }
    meta = PuzzleDatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=vocab_size, seq_len=seq_len,
                                 num_puzzle_identifiers=1, total_groups=n // group_size, mean_puzzle_examples=1,
                                 sets=["all"], total_samples=n)
    return meta, arrays
