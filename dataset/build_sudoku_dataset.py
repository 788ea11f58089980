r"""Builds a Sudoku dataset in the shared HRM/TRM/EqR layout.

Default: the paper's set, 1000 training puzzles of the Hugging Face dataset sapientinc/sudoku-extreme,
each with 1000 augmented copies (one group per puzzle), and the full test split un-augmented:

    python -m dataset.build_sudoku_dataset --output-dir data/sudoku-extreme-1k-aug-1000 \
        --subsample-size 1000 --num-aug 1000 --seed 42

Offline sources: `--source-csv FILE [--test-csv FILE]` (CSV with columns source,q,a,rating, or one
81-character puzzle per line, '.' or '0' blank; missing solutions are computed and puzzles with zero or
several solutions dropped), or `--generate N [--generate-test M] [--min-givens K [--max-givens K2]]` (random unique puzzles;
with --max-givens each stops at its own count of givens, drawn from K..K2).
"""
import argparse
import csv
import os
import random
import sys
import time
from array import array
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from tqdm import tqdm

if __package__ in (None, ""):  # run as `python dataset/<this file>.py`, the form the authors' README uses
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset.common import DatasetError, HelpFormatter, single_example_split, write_dataset
from dataset.sudoku import (UNIT_CELLS, VOCAB_SIZE, apply_transforms, digits_to_tokens, first_bad_solution,
                            generate_puzzle, random_transforms)
from dataset.sudoku_solver import solve_count


class Puzzles:
    """Puzzles of one split: digits [n, 81] (0 blank), solutions [n, 81], ratings [n] (-1 unknown)."""

    def __init__(self, puzzles: np.ndarray, solutions: np.ndarray, ratings: np.ndarray):
        self.puzzles, self.solutions, self.ratings = puzzles, solutions, ratings

    def take(self, index: np.ndarray) -> "Puzzles":
        return Puzzles(self.puzzles[index], self.solutions[index], self.ratings[index])

    def __len__(self) -> int:
        return len(self.puzzles)


# ---------------------------------------------------------------- reading puzzles from a file

class _Rows:
    """Puzzle rows of a file packed as bytes (a 3.8M-row CSV would take gigabytes as Python strings)."""

    def __init__(self, path: str):
        self.path = path
        self.puzzles, self.answers, self.has_answer = bytearray(), bytearray(), bytearray()
        self.line_numbers, self.ratings = array("q"), array("q")

    def add(self, line_no: int, puzzle: str, answer: str, rating: str) -> None:
        if len(puzzle) != 81:
            raise DatasetError(f"{self.path}:{line_no}: puzzle must have 81 characters, got {len(puzzle)}")
        if answer and len(answer) != 81:
            raise DatasetError(f"{self.path}:{line_no}: solution must have 81 characters, got {len(answer)}")
        try:
            self.ratings.append(int(float(rating)) if rating else -1)
        except ValueError:
            raise DatasetError(f"{self.path}:{line_no}: rating must be an integer, got {rating!r}") from None
        self.puzzles += puzzle.encode("ascii", errors="replace")
        self.answers += answer.encode("ascii", errors="replace") if answer else b"0" * 81
        self.has_answer.append(bool(answer))
        self.line_numbers.append(line_no)

    def boards(self, what: str) -> np.ndarray:
        """Digits [n, 81] (0 blank) of the puzzles or the answers (all-blank where none was given)."""
        raw = np.frombuffer(self.puzzles if what == "puzzle" else self.answers, dtype=np.uint8).reshape(-1, 81)
        digits = np.where(raw == ord("."), 0, raw - ord("0")).astype(np.uint8)  # bytes below '0' wrap past 9
        bad = np.any(digits > 9, axis=1)
        if bad.any():
            line_no = self.line_numbers[int(np.argmax(bad))]
            raise DatasetError(f"{self.path}:{line_no}: {what} may only hold digits 1-9 and '.' or '0' for blanks")
        return digits.astype(np.int8)


def _first_conflicting_givens(puzzles: np.ndarray) -> int:
    """Index of the first puzzle whose givens repeat a digit in a row, column or box, or -1."""
    units = np.sort(puzzles[:, UNIT_CELLS], axis=2)
    repeat = (units[:, :, 1:] == units[:, :, :-1]) & (units[:, :, 1:] > 0)
    bad = repeat.any(axis=(1, 2))
    return int(np.argmax(bad)) if bad.any() else -1


def _solve_one(board: np.ndarray) -> tuple[int, list[int] | None, int]:
    result = solve_count(board, limit=2)
    return result.count, result.solution, result.effort


def _map(fn, items, workers: int, desc: str):
    """fn over items with a progress bar, in `workers` processes when more than one."""
    if workers <= 1:
        return [fn(x) for x in tqdm(items, desc=desc, leave=False)]
    with ProcessPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(fn, items, chunksize=16), total=len(items), desc=desc, leave=False))


def _read_rows(path: str, rows: "_Rows") -> None:
    """Rows of a CSV (header with a `q` column) or of a plain file with one puzzle per line, into `rows`."""
    with open(path, newline="", encoding="utf-8") as f:
        first = f.readline()
        f.seek(0)
        if "," in first:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader)]
            if "q" not in header:
                raise DatasetError(f"{path}:1: CSV header must name a q column (expected source,q,a,rating), got {header}")
            q_at = header.index("q")
            a_at = header.index("a") if "a" in header else None
            r_at = header.index("rating") if "rating" in header else None
            for line_no, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) != len(header):
                    raise DatasetError(f"{path}:{line_no}: expected {len(header)} fields like the header, got {len(row)}")
                rows.add(line_no, row[q_at].strip(), row[a_at].strip() if a_at is not None else "",
                         row[r_at].strip() if r_at is not None else "")
        else:
            for line_no, line in enumerate(f, start=1):
                if line.strip():
                    rows.add(line_no, line.strip(), "", "")


def read_puzzle_file(path: str, workers: int = 1, need_ratings: bool = False) -> tuple[Puzzles, dict[str, int]]:
    """Reads a CSV (header with a `q` column; optional `a` and `rating`) or a plain file of 81-character
    puzzles. Missing solutions (and, when needed, ratings) come from the solver; puzzles with zero or
    several solutions are dropped and counted in the returned stats."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: file not found")
    rows = _Rows(path)
    try:
        _read_rows(path, rows)
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text (byte {e.start} cannot be decoded); save the file as UTF-8") from None
    if not rows.line_numbers:
        raise DatasetError(f"{path}: no puzzles found")

    puzzles = rows.boards("puzzle")
    bad = _first_conflicting_givens(puzzles)
    if bad >= 0:
        raise DatasetError(f"{path}:{rows.line_numbers[bad]}: unsolvable puzzle, its givens repeat a digit in a row, column or box")
    ratings = np.array(rows.ratings, dtype=np.int64)
    has_answer = np.frombuffer(rows.has_answer, dtype=np.uint8).astype(bool)
    solutions = rows.boards("solution")
    if has_answer.any():
        idx = np.flatnonzero(has_answer)
        problem = first_bad_solution(puzzles[idx], solutions[idx])
        if problem is not None:
            raise DatasetError(f"{path}:{rows.line_numbers[idx[problem[0]]]}: {problem[1]}")

    to_solve = np.flatnonzero(~has_answer | ((ratings < 0) & need_ratings))
    keep = np.ones(len(puzzles), dtype=bool)
    stats = {"read": len(puzzles), "no_solution": 0, "several_solutions": 0}
    if to_solve.size:
        results = _map(_solve_one, [puzzles[i] for i in to_solve], workers, f"solving {os.path.basename(path)}")
        for i, (count, solution, effort) in zip(to_solve, results):
            if count != 1:
                keep[i] = False
                stats["no_solution" if count == 0 else "several_solutions"] += 1
                continue
            if not has_answer[i]:
                solutions[i] = solution
            if ratings[i] < 0:
                ratings[i] = effort
    return Puzzles(puzzles, solutions, ratings).take(np.flatnonzero(keep)), stats


def download_split(repo_id: str, split: str) -> str:
    """Path of `<split>.csv` of the Hugging Face dataset, from the local cache when present.
    Honours the hub's cache settings and offline mode (HF_HUB_OFFLINE=1)."""
    from huggingface_hub import hf_hub_download
    try:
        return hf_hub_download(repo_id, f"{split}.csv", repo_type="dataset")
    except Exception as e:  # network, auth and offline-cache-miss errors all end the build the same way
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DatasetError(f"{repo_id}/{split}.csv: could not get it from the Hugging Face Hub "
                           f"({type(e).__name__}: {first_line}); use --source-csv or --generate to build offline") from None


# ---------------------------------------------------------------- generating puzzles

def _generate_one(job: tuple[str, int, int, int | None]) -> tuple[list[int], list[int], int]:
    key, min_givens, min_difficulty, max_givens = job
    if max_givens is not None:  # a spread of givens: each puzzle's own target, seeded as the puzzle is
        min_givens = random.Random(f"{key}:givens").randint(min_givens, max_givens)
    for attempt in range(10_000):
        # Seeded per puzzle, so the result does not depend on the number of workers.
        puzzle, solution, rating = generate_puzzle(random.Random(f"{key}:{attempt}"), min_givens)
        if rating >= min_difficulty:
            return puzzle, solution, rating
    raise DatasetError(f"--min-difficulty {min_difficulty}: no puzzle reached it in 10000 tries; lower it or --min-givens")


def generate_puzzles(n: int, split: str, seed: int, min_givens: int, min_difficulty: int | None, workers: int,
                     max_givens: int | None = None) -> Puzzles:
    jobs = [(f"{seed}:{split}:{i}", min_givens, min_difficulty or 0, max_givens) for i in range(n)]
    results = _map(_generate_one, jobs, workers, f"generating {split}")
    return Puzzles(np.array([r[0] for r in results], dtype=np.int8).reshape(n, 81),
                   np.array([r[1] for r in results], dtype=np.int8).reshape(n, 81),
                   np.array([r[2] for r in results], dtype=np.int64))


# ---------------------------------------------------------------- assembling a split

def augment_groups(puzzles: Puzzles, num_aug: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each puzzle followed by `num_aug` transformed copies: inputs, labels [n * (1 + num_aug), 81]."""
    n, group = len(puzzles), 1 + num_aug
    inputs = np.empty((n * group, 81), dtype=np.int8)
    labels = np.empty((n * group, 81), dtype=np.int8)
    for i in tqdm(range(n), desc="augmenting", leave=False, disable=num_aug == 0):
        rows = slice(i * group, (i + 1) * group)
        inputs[rows][0], labels[rows][0] = puzzles.puzzles[i], puzzles.solutions[i]
        if num_aug:
            cell_source, digit_map = random_transforms(rng, num_aug)
            inputs[rows][1:] = apply_transforms(puzzles.puzzles[i], cell_source, digit_map)
            labels[rows][1:] = apply_transforms(puzzles.solutions[i], cell_source, digit_map)
    problem = first_bad_solution(inputs, labels)
    if problem is not None:  # a transform that breaks a board would be a bug here, not bad input
        raise RuntimeError(f"augmented example {problem[0]} is not a valid puzzle/solution pair: {problem[1]}")
    return inputs, labels


def load_source(args, split: str) -> tuple[Puzzles, str]:
    """The puzzles of one split and a line describing where they came from."""
    need_ratings = args.min_difficulty is not None
    path = args.source_csv if split == "train" else args.test_csv
    count = args.generate if split == "train" else args.generate_test
    if path:
        puzzles, stats = read_puzzle_file(path, args.workers, need_ratings)
        return puzzles, (f"{path}: {stats['read']} read, {stats['no_solution']} dropped with no solution, "
                         f"{stats['several_solutions']} dropped with several solutions")
    if count:
        puzzles = generate_puzzles(count, split, args.seed, args.min_givens, args.min_difficulty, args.workers,
                                   args.max_givens)
        givens = f"givens {args.min_givens}-{args.max_givens}" if args.max_givens is not None else \
            f"min givens {args.min_givens}"
        return puzzles, f"generated {count} unique puzzles ({givens})"
    if args.source_csv or args.generate:
        raise DatasetError(f"{split} split: --source-csv/--generate build the train split offline; "
                           "give --test-csv or --generate-test for the test split too")
    path = download_split(args.source_repo, split)
    puzzles, stats = read_puzzle_file(path, args.workers, need_ratings)
    return puzzles, f"{args.source_repo}/{split}.csv: {stats['read']} read"


def build_split(args, split: str):
    puzzles, source_line = load_source(args, split)
    line = f"{split}: {source_line}"
    if args.min_difficulty is not None:
        keep = np.flatnonzero(puzzles.ratings >= args.min_difficulty)
        line += f"; {len(puzzles) - keep.size} below --min-difficulty {args.min_difficulty}"
        puzzles = puzzles.take(keep)
    if split == "train" and args.subsample_size and args.subsample_size < len(puzzles):
        # Same draw as the reference builder (legacy global RNG seeded with --seed), so the same
        # 1000 puzzles are picked from the same train.csv.
        index = np.random.RandomState(args.seed).choice(len(puzzles), size=args.subsample_size, replace=False)
        puzzles = puzzles.take(index)
        line += f"; subsampled to {len(puzzles)}"
    if len(puzzles) == 0:
        raise DatasetError(f"{split} split: no puzzles left to write (check the source and --min-difficulty)")
    num_aug = args.num_aug if split == "train" else 0
    inputs, labels = augment_groups(puzzles, num_aug, np.random.default_rng([args.seed, 1]))
    print(f"{line}; {len(puzzles)} puzzles x {1 + num_aug} = {len(inputs)} examples"
          + (f", mean givens {np.mean(np.count_nonzero(puzzles.puzzles, axis=1)):.1f}" if len(puzzles) else ""))
    return single_example_split(digits_to_tokens(inputs), digits_to_tokens(labels), VOCAB_SIZE, group_size=1 + num_aug)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--output-dir", default="data/sudoku-extreme-1k-aug-1000", help="dataset folder to write")
    p.add_argument("--source-repo", default="sapientinc/sudoku-extreme", help="Hugging Face dataset with train.csv/test.csv")
    p.add_argument("--subsample-size", type=int, default=1000, help="training puzzles to keep (0: all)")
    p.add_argument("--num-aug", type=int, default=1000, help="augmented copies per training puzzle")
    p.add_argument("--min-difficulty", type=int, default=None,
                   help="keep puzzles rated at least this (the CSV rating column, else the solver's guess count)")
    p.add_argument("--seed", type=int, default=42, help="seed of subsampling, augmentation and generation")
    p.add_argument("--source-csv", default=None, help="local train puzzles: CSV (source,q,a,rating) or one puzzle per line")
    p.add_argument("--test-csv", default=None, help="local test puzzles, same formats")
    p.add_argument("--generate", type=int, default=0, help="generate this many training puzzles offline")
    p.add_argument("--generate-test", type=int, default=None, help="generate this many test puzzles (default: as --generate)")
    p.add_argument("--min-givens", type=int, default=0, help="generator stops blanking at this many givens (0: minimal puzzles)")
    p.add_argument("--max-givens", type=int, default=None,
                   help="a spread of givens: each generated puzzle stops at its own count, uniform in "
                        "[--min-givens, this] (a minimal puzzle may stop above it)")
    p.add_argument("--workers", type=int, default=1, help="processes for generating/solving")
    args = p.parse_args(argv)
    if args.generate_test is None:
        args.generate_test = args.generate if args.generate and not args.test_csv else 0
    for name in ("subsample_size", "num_aug", "generate", "generate_test", "min_givens", "workers"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.min_givens > 81:
        p.error("--min-givens must be at most 81")
    if args.max_givens is not None and not args.min_givens <= args.max_givens <= 81:
        p.error(f"--max-givens must be between --min-givens ({args.min_givens}) and 81, got {args.max_givens}")
    if args.source_csv and args.generate:
        p.error("give one training source: --source-csv or --generate")
    args.workers = max(1, args.workers)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.time()
    try:
        splits = {split: build_split(args, split) for split in ("train", "test")}
        write_dataset(args.output_dir, splits)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {args.output_dir} in {time.time() - start:.1f}s")


if __name__ == "__main__":
    main()
