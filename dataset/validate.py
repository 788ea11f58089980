"""Checks a dataset folder: layout and metadata against the arrays, group/puzzle offsets, and that every
label solves its input (Sudoku: a full valid grid agreeing with the givens; maze: the unique shortest
S->G path). The task is recognised from dataset.json: vocab 11 and seq_len 81 is Sudoku, vocab 6 with a
square seq_len is a maze.

    python -m dataset.validate DIR [--split train --split test] [--max-examples N]

Prints one line per split; on the first problem prints one line naming split, file and index and exits 1.
"""
import argparse
import math
import os
import sys

import numpy as np
from tqdm import tqdm

from dataset import maze, sudoku
from dataset.common import DatasetError, HelpFormatter, load_split


def detect_task(vocab_size: int, seq_len: int) -> str:
    if vocab_size == sudoku.VOCAB_SIZE and seq_len == sudoku.SEQ_LEN:
        return "sudoku"
    if vocab_size == maze.VOCAB_SIZE and math.isqrt(seq_len) ** 2 == seq_len:
        return "maze"
    raise DatasetError(f"dataset.json: vocab_size {vocab_size} with seq_len {seq_len} is neither Sudoku (11, 81) "
                       "nor a maze (6, n*n)")


def validate_split(data_path: str, split: str, max_examples: int | None = None) -> str:
    """Checks one split; returns a summary line or raises DatasetError naming the first problem."""
    meta, arrays = load_split(data_path, split)
    task = detect_task(meta.vocab_size, meta.seq_len)
    prefix = os.path.join(data_path, split, f"{meta.sets[0]}__")
    inputs, labels = arrays["inputs"], arrays["labels"]
    count = len(inputs) if max_examples is None else min(len(inputs), max_examples)

    empty_groups = np.flatnonzero(np.diff(arrays["group_indices"]) == 0)
    if empty_groups.size:
        raise DatasetError(f"{prefix}group_indices.npy: group {empty_groups[0]} holds no puzzle")
    empty_puzzles = np.flatnonzero(np.diff(arrays["puzzle_indices"]) == 0)
    if empty_puzzles.size:
        raise DatasetError(f"{prefix}puzzle_indices.npy: puzzle {empty_puzzles[0]} holds no example")

    if task == "sudoku":
        digits_in = sudoku.tokens_to_digits(inputs[:count])
        digits_out = sudoku.tokens_to_digits(labels[:count])
        bad_input = np.flatnonzero(np.any(digits_in < 0, axis=1))
        if bad_input.size:
            raise DatasetError(f"{prefix}inputs.npy: example {bad_input[0]} holds pad tokens (expected blanks 1, digits 2..10)")
        problem = sudoku.first_bad_solution(digits_in, digits_out)
        if problem is not None:
            raise DatasetError(f"{prefix}labels.npy: example {problem[0]}: {problem[1]}")
    else:
        n = math.isqrt(meta.seq_len)
        adjacency = maze.neighbours(n)
        for i in tqdm(range(count), desc=f"{split} mazes", leave=False, disable=None):
            problem = maze.label_problem(np.asarray(inputs[i]), np.asarray(labels[i]), n, adjacency)
            if problem is not None:
                raise DatasetError(f"{prefix}labels.npy: example {i}: {problem}")
    checked = "all" if count == len(inputs) else f"first {count} of"
    return (f"{split}: ok, {task}, {checked} {len(inputs)} examples, {len(arrays['puzzle_indices']) - 1} puzzles, "
            f"{meta.total_groups} groups")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("data_path", help="dataset folder (holds identifiers.json, train/, test/)")
    p.add_argument("--split", action="append", default=None, help="split to check (repeatable; default train and test)")
    p.add_argument("--max-examples", type=int, default=None, help="check only the first N examples' labels per split")
    args = p.parse_args(argv)
    try:
        if not os.path.isfile(os.path.join(args.data_path, "identifiers.json")):
            raise DatasetError(f"{os.path.join(args.data_path, 'identifiers.json')}: missing (expected at the dataset root)")
        for split in args.split or ["train", "test"]:
            print(validate_split(args.data_path, split, args.max_examples))
    except DatasetError as e:
        print(f"invalid: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
