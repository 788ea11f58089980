"""Sudoku boards as numpy arrays: token encoding, vectorised validity checks, the validity-preserving
augmentations, and an offline generator of puzzles with a unique solution.

Boards are [n, 81] arrays of digits 0..9 (0 blank). On disk each digit d is stored as token d + 1
(vocab 11: 0 pad, 1 blank, 2..10 the digits 1..9), as in the reference.
"""
import random

import numpy as np

from dataset.sudoku_solver import random_full_grid, solve_count

VOCAB_SIZE = 11
SEQ_LEN = 81
_CELL = np.arange(81).reshape(9, 9)
UNIT_CELLS = np.concatenate([_CELL, _CELL.T, _CELL.reshape(3, 3, 3, 3).transpose(0, 2, 1, 3).reshape(9, 9)])  # [27, 9]
PEERS = [sorted({int(j) for u in UNIT_CELLS if i in u for j in u} - {i}) for i in range(81)]


def digits_to_tokens(boards: np.ndarray) -> np.ndarray:
    return (np.asarray(boards) + 1).astype(np.uint8)


def tokens_to_digits(tokens: np.ndarray) -> np.ndarray:
    return np.asarray(tokens).astype(np.int16) - 1


def first_bad_solution(puzzles: np.ndarray, solutions: np.ndarray, chunk: int = 65536) -> tuple[int, str] | None:
    """(index, reason) of the first row whose solution is not a full valid Sudoku agreeing with the
    puzzle's givens, or None when all are right."""
    for start in range(0, len(puzzles), chunk):
        p = np.asarray(puzzles[start:start + chunk]).astype(np.int16)
        s = np.asarray(solutions[start:start + chunk]).astype(np.int16)
        checks = (
            (np.any((s < 1) | (s > 9), axis=1), "solution has a cell outside 1..9"),
            (np.any(np.sort(np.clip(s, 0, 9)[:, UNIT_CELLS], axis=2) != np.arange(1, 10), axis=(1, 2)),
             "solution repeats a digit in a row, column or box"),
            (np.any((p != 0) & (p != s), axis=1), "solution disagrees with a given"),
        )
        bad = np.logical_or.reduce([mask for mask, _ in checks])
        if bad.any():
            first = int(np.argmax(bad))
            return start + first, next(reason for mask, reason in checks if mask[first])
    return None


def random_transforms(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n random Sudoku symmetries as (cell_source [n, 81], digit_map [n, 10]).

    Each is: transpose with probability 1/2, then permute the bands and the rows within each band,
    the stacks and the columns within each stack, then relabel the digits (0 stays blank).
    New cell (i, j) reads old cell (rows[i], cols[j]) of the (maybe transposed) board.
    """
    bands = np.argsort(rng.random((n, 3)), axis=1)
    rows = (bands[:, :, None] * 3 + np.argsort(rng.random((n, 3, 3)), axis=2)).reshape(n, 9)
    stacks = np.argsort(rng.random((n, 3)), axis=1)
    cols = (stacks[:, :, None] * 3 + np.argsort(rng.random((n, 3, 3)), axis=2)).reshape(n, 9)
    transpose = rng.random(n) < 0.5
    plain = rows[:, :, None] * 9 + cols[:, None, :]
    flipped = cols[:, None, :] * 9 + rows[:, :, None]  # (rows[i], cols[j]) of the transpose is (cols[j], rows[i])
    cell_source = np.where(transpose[:, None, None], flipped, plain).reshape(n, 81)
    digit_map = np.concatenate([np.zeros((n, 1), dtype=np.int64), np.argsort(rng.random((n, 9)), axis=1) + 1], axis=1)
    return cell_source, digit_map


def apply_transforms(boards: np.ndarray, cell_source: np.ndarray, digit_map: np.ndarray) -> np.ndarray:
    """Applies transform k to boards[k] ([n, 81] digits); boards may be one board broadcast to all."""
    boards = np.broadcast_to(np.asarray(boards, dtype=np.int64), cell_source.shape)
    moved = np.take_along_axis(boards, cell_source, axis=1)
    return np.take_along_axis(digit_map, moved, axis=1)


def generate_puzzle(rng: random.Random, min_givens: int = 0) -> tuple[list[int], list[int], int]:
    """A random puzzle with a unique solution: (puzzle, solution, rating).

    Draws a random full grid, then blanks cells in random order, keeping a blank only if no other
    solution appears, until `min_givens` remain or no cell can be blanked (a minimal puzzle, about
    22-26 givens). Fewer givens is usually harder. The rating is the solver's guess count when
    proving the solution unique (0: singles alone solve it).
    """
    solution = random_full_grid(rng)
    puzzle = solution[:]
    order = list(range(81))
    rng.shuffle(order)
    givens = 81
    for cell in order:
        if givens <= min_givens:
            break
        digit = puzzle[cell]
        puzzle[cell] = 0
        # The puzzle was unique; it stays unique iff no solution puts another digit in this cell.
        # Cheap sufficient case first: the cell's peers already hold the other eight digits.
        if len({puzzle[p] for p in PEERS[cell]} - {0}) < 8 and solve_count(puzzle, limit=1, forbid=(cell, digit)).count:
            puzzle[cell] = digit
        else:
            givens -= 1
    return puzzle, solution, solve_count(puzzle, limit=2).effort
