"""Speed of the exact Sudoku solver (dataset/sudoku_solver.py) on hard puzzles, in puzzles/s.

    python scripts/benchmark_solver.py                      # well-known hard puzzles + generated minimal ones
    python scripts/benchmark_solver.py --csv test.csv -n 2000   # first rows of a sudoku-extreme style CSV

Reports, per puzzle set, the rate of `solve` (first solution) and of the uniqueness check
(`solve_count(limit=2)`, which must exhaust the search) and the mean search effort (guesses).
"""
import argparse
import csv
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dataset.sudoku import generate_puzzle  # noqa: E402
from dataset.sudoku_solver import solve_count  # noqa: E402

# Published hard puzzles (Inkala 2010 and 2006 "AI Escargot", and the hardest of the 95 of Norvig's top95 list).
FAMOUS_HARD = [
    "8..........36......7..9.2...5...7.......457.....1...3...1....68..85...1..9....4..",
    "1....7.9..3..2...8..96..5....53..9...1..8...26....4...3......1..4......7..7...3..",
    "4.....8.5.3..........7......2.....6.....8.4......1.......6.3.7.5..2.....1.4......",
    "52...6.........7.13...........4..8..6......5...........418.........3..2...87.....",
    "6.....8.3.4.7.................5.4.7.3..2.....1.6.......2.....5.....8.6......1....",
]


def to_board(text):
    return [0 if ch in ".0" else int(ch) for ch in text.strip()]


def bench(name, boards):
    rates = {}
    for label, limit in (("solve", 1), ("unique check", 2)):
        start = time.perf_counter()
        efforts = [solve_count(b, limit=limit).effort for b in boards]
        seconds = time.perf_counter() - start
        rates[label] = (len(boards) / seconds, sum(efforts) / len(efforts))
    print(f"{name:32s} n={len(boards):5d}  solve {rates['solve'][0]:8.1f}/s (mean guesses {rates['solve'][1]:.1f})"
          f"  unique check {rates['unique check'][0]:8.1f}/s (mean guesses {rates['unique check'][1]:.1f})")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", default=None, help="CSV with a q column (e.g. sapientinc/sudoku-extreme test.csv)")
    p.add_argument("-n", type=int, default=200, help="puzzles to take from the CSV / to generate")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    bench("famous hard (x20 repeats)", [to_board(t) for t in FAMOUS_HARD] * 20)
    rng = random.Random(args.seed)
    generated = [generate_puzzle(rng)[0] for _ in range(args.n)]
    bench("generated minimal puzzles", generated)
    if args.csv:
        with open(args.csv, newline="") as f:
            reader = csv.DictReader(f)
            boards = [to_board(row["q"]) for _, row in zip(range(args.n), reader)]
        bench(os.path.basename(args.csv), boards)


if __name__ == "__main__":
    main()
