import io
import json
import os

import numpy as np
import pytest
import torch

from dataset.common import DatasetError, PuzzleDatasetMetadata, load_metadata, load_split, open_split, write_dataset
from dataset.puzzle_dataset import TrainLoader, iter_test_batches, num_test_batches
from utils.constants import IGNORE_LABEL_ID
from tests.data_fixtures import SUDOKU_AUG, array_path, copy_dataset, maze_dir, sudoku_dir  # noqa: F401 (fixtures)


def group_of_rows(data_dir, split="train"):
    """Maps an example row (as bytes of its input and label) to its group, for a set with unique rows."""
    _, arrays = load_split(data_dir, split)
    puzzle_of_example = np.repeat(np.arange(len(arrays["puzzle_indices"]) - 1), np.diff(arrays["puzzle_indices"]))
    group_of_puzzle = np.repeat(np.arange(len(arrays["group_indices"]) - 1), np.diff(arrays["group_indices"]))
    return {arrays["inputs"][i].astype(np.int32).tobytes(): int(group_of_puzzle[puzzle_of_example[i]])
            for i in range(len(arrays["inputs"]))}


def test_train_batches_shapes_and_one_puzzle_per_group(sudoku_dir):
    loader = TrainLoader(open_split(sudoku_dir, "train"), global_batch_size=16, seed=3)
    assert loader.steps_per_epoch == 40 // 16 and loader.local_batch_size == 16
    groups = group_of_rows(sudoku_dir)
    seen = []
    for _ in range(loader.steps_per_epoch):
        batch = loader.next_batch()
        assert set(batch) == {"inputs", "labels", "puzzle_identifiers"}
        assert batch["inputs"].shape == (16, 81) and batch["puzzle_identifiers"].shape == (16,)
        assert all(t.dtype == torch.int32 for t in batch.values())
        assert batch["labels"].min() >= 2  # Sudoku labels are 2..10, nothing is ignored
        seen += [groups[row.numpy().tobytes()] for row in batch["inputs"]]
    assert len(seen) == len(set(seen)) == 32  # each group at most once per epoch, remainder dropped
    next_epoch = [groups[row.numpy().tobytes()] for row in loader.next_batch()["inputs"]]
    assert loader.epoch == 1 and loader.step_in_epoch == 1 and next_epoch != seen[:16]


def test_two_ranks_cover_what_one_rank_covers(sudoku_dir):
    train = open_split(sudoku_dir, "train")
    whole = TrainLoader(train, global_batch_size=8, seed=1)
    ranks = [TrainLoader(train, global_batch_size=8, seed=1, rank=r, world_size=2) for r in range(2)]
    assert ranks[0].local_batch_size == 4
    for _ in range(12):  # crosses epoch boundaries (5 steps per epoch)
        expected = whole.next_batch()
        parts = [loader.next_batch() for loader in ranks]
        for key in expected:
            assert torch.equal(torch.cat([p[key] for p in parts]), expected[key])


def test_resume_mid_epoch_gives_identical_batches(sudoku_dir):
    train = open_split(sudoku_dir, "train")
    loader = TrainLoader(train, global_batch_size=8, seed=7)
    for _ in range(3):
        loader.next_batch()
    buffer = io.BytesIO()
    torch.save({"loader": loader.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["loader"]
    resumed = TrainLoader(train, global_batch_size=8, seed=7)
    resumed.load_state_dict(state)
    for _ in range(8):
        a, b = loader.next_batch(), resumed.next_batch()
        assert all(torch.equal(a[k], b[k]) for k in a)
    other_seed = TrainLoader(train, global_batch_size=8, seed=8)
    with pytest.raises(ValueError, match="seed"):
        other_seed.load_state_dict(state)


def test_batch_size_checks(sudoku_dir):
    train = open_split(sudoku_dir, "train")
    with pytest.raises(ValueError, match="multiple of world_size"):
        TrainLoader(train, global_batch_size=9, world_size=2, rank=0)
    with pytest.raises(DatasetError, match="fewer examples than the global batch"):
        TrainLoader(train, global_batch_size=64)


def test_multi_example_puzzles_and_identifiers(tmp_path):
    """Groups of 2 puzzles with 3 examples each, identifiers 1..; examples of a puzzle fill the batch together."""
    puzzles, examples_per_puzzle, groups = 12, 3, 6
    n = puzzles * examples_per_puzzle
    inputs = np.arange(n * 4, dtype=np.uint8).reshape(n, 4) % 7 + 1
    inputs[:, 0] = np.arange(n)  # make every row recognisable
    arrays = {"inputs": inputs, "labels": inputs.copy(),
              "puzzle_identifiers": np.arange(1, puzzles + 1, dtype=np.int32),
              "puzzle_indices": np.arange(0, n + 1, examples_per_puzzle, dtype=np.int32),
              "group_indices": np.arange(0, puzzles + 1, 2, dtype=np.int32)}
    meta = PuzzleDatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=64, seq_len=4,
                                 num_puzzle_identifiers=puzzles + 1, total_groups=groups, mean_puzzle_examples=3.0,
                                 sets=["all"], total_samples=n)
    out = str(tmp_path / "multi")
    write_dataset(out, {"train": (meta, arrays), "test": (meta, arrays)})
    loader = TrainLoader(open_split(out, "train"), global_batch_size=4, seed=0)
    assert loader.steps_per_epoch == 4
    for _ in range(3):
        batch = loader.next_batch()
        rows = batch["inputs"][:, 0].numpy()
        puzzle = rows // examples_per_puzzle
        assert np.array_equal(batch["puzzle_identifiers"].numpy(), puzzle + 1)
        assert len(set(rows)) == 4
        assert len({p // 2 for p in puzzle}) == len(set(puzzle))  # one puzzle per group
    batches = list(iter_test_batches(open_split(out, "test"), 8))
    assert [b["puzzle_identifiers"][0].item() for b in batches] == [1, 3, 6, 9, 11]


@pytest.mark.parametrize("world_size", [1, 2])
def test_test_batches_cover_every_example_once(sudoku_dir, world_size):
    G = 6
    test = open_split(sudoku_dir, "test")
    arrays, total = test.arrays, test.num_examples
    assert num_test_batches(test, G) == 3 == -(-total // G)
    seen = []
    for rank in range(world_size):
        for k, batch in enumerate(iter_test_batches(test, G, rank=rank, world_size=world_size)):
            L = G // world_size
            assert batch["inputs"].shape == (L, 81) and batch["mask"].dtype == torch.bool
            expected_index = np.arange(k * G + rank * L, k * G + (rank + 1) * L)
            real = expected_index < total
            assert np.array_equal(batch["mask"].numpy(), real)
            assert np.array_equal(batch["index"].numpy(), np.where(real, expected_index, -1))
            assert np.array_equal(batch["inputs"][real].numpy(), arrays["inputs"][expected_index[real]])
            assert torch.all(batch["inputs"][~torch.from_numpy(real)] == 0)
            assert torch.all(batch["labels"][~torch.from_numpy(real)] == IGNORE_LABEL_ID)
            seen += expected_index[real].tolist()
    assert sorted(seen) == list(range(total))
    limited = list(iter_test_batches(test, G, max_examples=7, start_batch=1))
    assert len(limited) == 1 and limited[0]["mask"].sum() == 1 and limited[0]["index"][0] == 6
    assert num_test_batches(test, G, max_examples=7) == 2


def test_maze_loader_and_ignore_label(tmp_path, maze_dir):
    path = copy_dataset(maze_dir, str(tmp_path / "maze"))
    labels_file = array_path(path, "train", "labels")
    labels = np.load(labels_file)
    labels[:, -1] = 0  # mark the last cell as ignored on disk
    np.save(labels_file, labels)
    batch = TrainLoader(open_split(path, "train"), global_batch_size=10).next_batch()
    assert batch["inputs"].shape == (10, 144)
    assert torch.all(batch["labels"][:, -1] == IGNORE_LABEL_ID) and batch["labels"][:, :-1].min() >= 1


def damage(path, split, how):
    meta_file = os.path.join(path, split, "dataset.json")
    if how == "truncate":
        name = array_path(path, split, "inputs")
        with open(name, "r+b") as f:
            f.truncate(os.path.getsize(name) - 100)
    elif how == "missing_json":
        os.remove(meta_file)
    else:
        with open(meta_file) as f:
            meta = json.load(f)
        key, value = how
        meta[key] = value
        with open(meta_file, "w") as f:
            json.dump(meta, f)


@pytest.mark.parametrize("how, expected_file, expected_text", [
    ("truncate", "all__inputs.npy", "not a readable .npy array"),
    ("missing_json", "dataset.json", "missing"),
    (("seq_len", 80), "all__inputs.npy", "expected shape (200, 80)"),
    (("vocab_size", 5), "all__inputs.npy", "token ids must lie in [0, 5)"),
    (("total_groups", 3), "all__group_indices.npy", "expected 4 offsets"),
    (("total_samples", 54), "all__puzzle_indices.npy", "total_samples is 54"),
])
def test_inconsistent_dataset_raises_one_line(tmp_path, sudoku_dir, how, expected_file, expected_text):
    path = copy_dataset(sudoku_dir, str(tmp_path / "bad"))
    damage(path, "train", how)
    with pytest.raises(DatasetError) as info:
        TrainLoader(open_split(path, "train"), global_batch_size=8)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and expected_file in message and expected_text in message


def test_metadata_round_trip(sudoku_dir):
    meta = load_metadata(sudoku_dir, "train")
    assert meta.sets == ["all"] and meta.total_groups == 40 and meta.total_samples == 40 * (1 + SUDOKU_AUG)


def test_write_dataset_refuses_foreign_folder(tmp_path, sudoku_dir):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    meta, arrays = load_split(sudoku_dir, "test")
    with pytest.raises(DatasetError, match="not a dataset folder"):
        write_dataset(str(foreign), {"test": (meta, {k: np.asarray(v) for k, v in arrays.items()})})
    assert (foreign / "keep.txt").read_text() == "mine"
