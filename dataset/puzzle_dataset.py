"""Batches from a dataset split opened by dataset.common.open_split, for training (TrainLoader) and evaluation
(iter_test_batches).

Training, as the reference samples: each epoch is a permutation of the groups; from each group one
puzzle is drawn, and its examples (in random order) fill the global batch; a puzzle that does not fit
is cut at the batch boundary, and the last, incomplete batch of an epoch is dropped. The plan of an epoch
depends only on (seed, epoch), so the position (epoch, step in epoch) is the whole loader state and
every rank computes the same global batch and keeps its own rows [rank * local, (rank + 1) * local).

Batches are int32 tensors; the on-disk ignore label becomes IGNORE_LABEL_ID (-100).
"""
import math

import numpy as np
import torch

from dataset.common import DatasetError, PuzzleDatasetMetadata, Split
from utils.constants import IGNORE_LABEL_ID


def _local_batch_size(global_batch_size: int, rank: int, world_size: int) -> int:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    if global_batch_size < 1 or global_batch_size % world_size:
        raise ValueError(f"global batch size {global_batch_size} must be a positive multiple of world_size {world_size}")
    return global_batch_size // world_size


def _to_tensors(meta: PuzzleDatasetMetadata, inputs: np.ndarray, labels: np.ndarray, identifiers: np.ndarray) -> dict[str, torch.Tensor]:
    labels = labels.astype(np.int32)
    if meta.ignore_label_id is not None:
        labels[labels == meta.ignore_label_id] = IGNORE_LABEL_ID
    return {"inputs": torch.from_numpy(inputs.astype(np.int32)),
            "labels": torch.from_numpy(labels),
            "puzzle_identifiers": torch.from_numpy(identifiers.astype(np.int32))}


class TrainLoader:
    def __init__(self, split: Split, global_batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.local_batch_size = _local_batch_size(global_batch_size, rank, world_size)
        self.global_batch_size, self.seed, self.rank = global_batch_size, seed, rank
        self.metadata, arrays = split.meta, split.arrays
        self.inputs, self.labels = arrays["inputs"], arrays["labels"]
        self.puzzle_identifiers = arrays["puzzle_identifiers"]
        self.puzzle_indices = arrays["puzzle_indices"].astype(np.int64)
        self.group_indices = arrays["group_indices"].astype(np.int64)
        # The reference's count (used for schedules); the real number of batches of an epoch can differ
        # slightly when puzzles hold several examples.
        self.steps_per_epoch = math.floor(self.metadata.total_groups * self.metadata.mean_puzzle_examples / global_batch_size)
        self.epoch, self.step_in_epoch = 0, 0
        self._plan = None  # (epoch, example rows [batches, G], puzzle of each row [batches, G])
        if len(self._epoch_plan(0)[1]) == 0:
            raise DatasetError(f"{split.data_path}/{split.name}: one epoch holds fewer examples than the global batch "
                               f"size {global_batch_size} (total_groups {self.metadata.total_groups})")

    def _epoch_plan(self, epoch: int):
        if self._plan is not None and self._plan[0] == epoch:
            return self._plan
        rng = np.random.default_rng([self.seed, epoch])
        G = self.global_batch_size
        order = rng.permutation(self.metadata.total_groups)
        first, end = self.group_indices[order], self.group_indices[order + 1]
        order_ok = end > first  # an empty group has nothing to offer
        puzzles = first[order_ok] + (rng.random(int(order_ok.sum())) * (end - first)[order_ok]).astype(np.int64)
        starts, sizes = self.puzzle_indices[puzzles], np.diff(self.puzzle_indices)[puzzles]
        if np.all(sizes == 1):
            rows, row_puzzles = starts, puzzles
        else:
            rows, row_puzzles, filled = [], [], 0
            for puzzle, start, size in zip(puzzles, starts, sizes):
                take = min(int(size), G - filled % G)
                rows.append(start + rng.permutation(int(size))[:take])
                row_puzzles.append(np.full(take, puzzle))
                filled += take
            rows, row_puzzles = np.concatenate(rows), np.concatenate(row_puzzles)
        batches = len(rows) // G  # drop the incomplete last batch
        self._plan = (epoch, rows[:batches * G].reshape(batches, G), row_puzzles[:batches * G].reshape(batches, G))
        return self._plan

    def next_batch(self) -> dict[str, torch.Tensor]:
        _, rows, row_puzzles = self._epoch_plan(self.epoch)
        if self.step_in_epoch >= len(rows):
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
            _, rows, row_puzzles = self._epoch_plan(self.epoch)
        local = slice(self.rank * self.local_batch_size, (self.rank + 1) * self.local_batch_size)
        rows, row_puzzles = rows[self.step_in_epoch, local], row_puzzles[self.step_in_epoch, local]
        self.step_in_epoch += 1
        return _to_tensors(self.metadata, self.inputs[rows], self.labels[rows], self.puzzle_identifiers[row_puzzles])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "seed": self.seed,
                "global_batch_size": self.global_batch_size, "total_groups": self.metadata.total_groups}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("seed", "global_batch_size", "total_groups"):
            if int(state[key]) != mine[key]:
                raise ValueError(f"loader state has {key}={state[key]} but this loader has {mine[key]}; cannot resume")
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])


def num_test_examples(split: Split, max_examples: int | None = None) -> int:
    """The examples a pass over the split covers: all of them, or the first `max_examples`."""
    return split.num_examples if not max_examples else min(split.num_examples, max_examples)


def num_test_batches(split: Split, global_batch_size: int, max_examples: int | None = None) -> int:
    return math.ceil(num_test_examples(split, max_examples) / global_batch_size)


def iter_test_batches(split: Split, global_batch_size: int, rank: int = 0, world_size: int = 1,
                      max_examples: int | None = None, start_batch: int = 0):
    """Every example once, in order. Batch k covers global examples [k*G, (k+1)*G); rank r takes rows
    [r*L, (r+1)*L) of it. Rows past the end are padding: inputs pad_id, labels -100, mask False, index -1.
    Yields inputs, labels, puzzle_identifiers (int32), mask (bool) and index (int64)."""
    L = _local_batch_size(global_batch_size, rank, world_size)
    meta, arrays = split.meta, split.arrays
    total = len(arrays["inputs"]) if max_examples is None else min(len(arrays["inputs"]), max_examples)
    puzzle_indices = arrays["puzzle_indices"]
    for k in range(start_batch, math.ceil(total / global_batch_size)):
        begin = k * global_batch_size + rank * L
        index = np.arange(begin, begin + L, dtype=np.int64)
        real = index < total
        rows = index[real]
        puzzles = np.searchsorted(puzzle_indices, rows, side="right") - 1  # the puzzle holding each example
        batch = _to_tensors(meta, arrays["inputs"][rows], arrays["labels"][rows], arrays["puzzle_identifiers"][puzzles])
        pad = L - rows.size
        if pad:
            batch["inputs"] = torch.cat([batch["inputs"], torch.full((pad, meta.seq_len), meta.pad_id, dtype=torch.int32)])
            batch["labels"] = torch.cat([batch["labels"], torch.full((pad, meta.seq_len), IGNORE_LABEL_ID, dtype=torch.int32)])
            batch["puzzle_identifiers"] = torch.cat([batch["puzzle_identifiers"],
                                                     torch.full((pad,), meta.blank_identifier_id, dtype=torch.int32)])
        batch["mask"] = torch.from_numpy(real)
        batch["index"] = torch.from_numpy(np.where(real, index, -1))
        yield batch
