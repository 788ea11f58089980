r"""Builds a maze dataset in the shared HRM/TRM/EqR layout (Maze-Unique by default).

The paper's set (the defaults):

    python -m dataset.build_maze_unique_dataset --output-dir data/maze-30x30-unique-1k --grid-size 30 \
        --train-samples 1000 --test-samples 1000 --maze-mode perfect --length-distribution uniform \
        --min-path-length 100 --max-path-length 140 --require-unique --dedupe

Each sample: draw a target shortest-path length, carve a maze (perfect: a (n or n-1)-odd perfect maze in
the top-left corner, the rest wall; random: each cell wall with --wall-prob), pick a start, and a goal at
exactly that BFS distance (with one shortest path when --require-unique). The label is the input with
the cells strictly between S and G marked 'o'. One example per puzzle and per group.
"""
import argparse
import os
import random
import sys
import time

import numpy as np
from tqdm import tqdm

if __package__ in (None, ""):  # run as `python dataset/<this file>.py`, the form the authors' README uses
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset.common import DatasetError, HelpFormatter, single_example_split, write_dataset
from dataset.maze import VOCAB_SIZE, bfs, carve_perfect_maze, embed, neighbours, path_to, to_tokens


def longest_possible_path(args) -> int:
    """An upper bound on any shortest-path length on this grid: open cells - 1."""
    if args.maze_mode == "perfect":
        side = args.grid_size if args.grid_size % 2 else args.grid_size - 1
        rooms = (side - 1) // 2
        return 2 * rooms * rooms - 2  # rooms + passages of a spanning tree, minus one
    return args.grid_size * args.grid_size - 1


def sample_length(args, rng: random.Random) -> int:
    dist = args.length_distribution
    if dist == "fixed":
        return args.length_value
    if dist == "uniform":
        return rng.randint(args.min_path_length, args.max_path_length)
    if dist == "normal":
        value = round(rng.gauss(args.length_mean, args.length_std))
        return min(args.max_path_length, max(args.min_path_length, value))
    return rng.choices(args.length_values, weights=args.length_weights)[0]  # "list"


def sample_maze(args, length: int, rng: random.Random, adjacency: list[list[int]]):
    """(open_cells, start, goal, path) with BFS distance start->goal == length, or None after the allowed tries."""
    n = args.grid_size
    side = n if n % 2 else n - 1
    for _ in range(args.max_grid_attempts):
        if args.maze_mode == "perfect":
            open_cells = embed(carve_perfect_maze(side, rng), side, n)
        else:
            open_cells = [rng.random() >= args.wall_prob for _ in range(n * n)]
        open_list = [i for i, is_open in enumerate(open_cells) if is_open]
        if len(open_list) < length + 1:
            continue
        for _ in range(args.max_start_attempts):
            start = open_list[rng.randrange(len(open_list))]
            dist, count, parent = bfs(open_cells, adjacency, start)
            goals = [i for i in open_list if dist[i] == length and (count[i] == 1 or not args.require_unique)]
            if goals:
                goal = goals[rng.randrange(len(goals))]
                return open_cells, start, goal, path_to(parent, goal)
    return None


def build_split(args, split: str, num_samples: int, rng: random.Random, seen: set | None, adjacency):
    inputs, labels, lengths = [], [], []
    duplicates = 0
    with tqdm(total=num_samples, desc=f"{split} mazes", leave=False) as bar:
        while len(inputs) < num_samples:
            for _ in range(args.max_length_resamples):
                length = sample_length(args, rng)
                sample = sample_maze(args, length, rng, adjacency)
                if sample is not None:
                    break
                if args.strict_length:
                    raise DatasetError(f"--grid-size {args.grid_size}: no maze with shortest path {length} after "
                                       f"{args.max_grid_attempts}x{args.max_start_attempts} tries; lower the path-length range")
            else:
                raise DatasetError(f"--grid-size {args.grid_size}: no maze found after {args.max_length_resamples} "
                                   "path lengths; lower the path-length range")
            inp, lab = to_tokens(*sample)
            if seen is not None:
                key = inp.tobytes()
                if key in seen:
                    duplicates += 1
                    continue
                seen.add(key)
            inputs.append(inp)
            labels.append(lab)
            lengths.append(length)
            bar.update(1)
    lengths = np.array(lengths)
    print(f"{split}: {num_samples} mazes {args.grid_size}x{args.grid_size}, path length min {lengths.min()} "
          f"max {lengths.max()} mean {lengths.mean():.1f}, {duplicates} duplicates skipped")
    return single_example_split(np.stack(inputs), np.stack(labels), VOCAB_SIZE)


def check_args(args) -> None:
    """Sanity checks that turn impossible settings into one clear line before any work."""
    if args.grid_size < 3:
        raise DatasetError(f"--grid-size must be at least 3, got {args.grid_size}")
    if not 0 <= args.wall_prob < 1:
        raise DatasetError(f"--wall-prob must be in [0, 1), got {args.wall_prob}")
    if args.train_samples <= 0 or args.test_samples <= 0:
        raise DatasetError("--train-samples and --test-samples must be positive")
    longest = longest_possible_path(args)
    if args.length_distribution == "fixed":
        wanted = [args.length_value]
    elif args.length_distribution == "list":
        if not args.length_values:
            raise DatasetError("--length-distribution list needs --length-values")
        if args.length_weights is not None and len(args.length_weights) != len(args.length_values):
            raise DatasetError("--length-weights must have one weight per --length-values entry")
        wanted = args.length_values
    else:
        if args.min_path_length > args.max_path_length:
            raise DatasetError(f"--min-path-length {args.min_path_length} exceeds --max-path-length {args.max_path_length}")
        wanted = [args.min_path_length, args.max_path_length]
    if min(wanted) < 1 or max(wanted) > longest:
        raise DatasetError(f"path lengths {min(wanted)}..{max(wanted)} do not fit a {args.grid_size}x{args.grid_size} "
                           f"{args.maze_mode} maze (expected 1..{longest}; in practice well below the bound)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--output-dir", default="data/maze-30x30-unique-1k", help="dataset folder to write")
    p.add_argument("--grid-size", type=int, default=30, help="side of the square grid")
    p.add_argument("--train-samples", type=int, default=1000, help="training mazes")
    p.add_argument("--test-samples", type=int, default=1000, help="test mazes")
    p.add_argument("--maze-mode", choices=["perfect", "random"], default="perfect", help="perfect: a carved perfect maze; random: independent walls")
    p.add_argument("--wall-prob", type=float, default=0.37, help="random mode: probability that a cell is wall")
    p.add_argument("--dedupe", action=argparse.BooleanOptionalAction, default=True,
                   help="skip mazes whose input already appeared in either split")
    p.add_argument("--length-distribution", choices=["uniform", "normal", "fixed", "list"], default="uniform", help="how the target shortest-path length is drawn")
    p.add_argument("--min-path-length", type=int, default=100, help="shortest allowed S->G path length")
    p.add_argument("--max-path-length", type=int, default=140, help="longest allowed S->G path length")
    p.add_argument("--length-mean", type=float, default=120.0, help="normal: mean length")
    p.add_argument("--length-std", type=float, default=30.0, help="normal: standard deviation")
    p.add_argument("--length-value", type=int, default=120, help="fixed: the length")
    p.add_argument("--length-values", type=int, nargs="+", default=None, help="list: the lengths to draw from")
    p.add_argument("--length-weights", type=float, nargs="+", default=None, help="list: their weights (default: equal)")
    p.add_argument("--strict-length", action=argparse.BooleanOptionalAction, default=True,
                   help="fail when a drawn length cannot be met (else draw another length)")
    p.add_argument("--require-unique", action=argparse.BooleanOptionalAction, default=True,
                   help="goal must have exactly one shortest path from the start")
    p.add_argument("--max-length-resamples", type=int, default=50, help="without --strict-length: lengths drawn per maze before giving up")
    p.add_argument("--max-grid-attempts", type=int, default=200, help="mazes carved per drawn length before giving up")
    p.add_argument("--max-start-attempts", type=int, default=200, help="start cells tried per maze")
    p.add_argument("--seed", type=int, default=42, help="random seed")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    start_time = time.time()
    try:
        check_args(args)
        rng = random.Random(args.seed)
        adjacency = neighbours(args.grid_size)
        seen = set() if args.dedupe else None
        splits = {split: build_split(args, split, count, rng, seen, adjacency)
                  for split, count in (("train", args.train_samples), ("test", args.test_samples))}
        write_dataset(args.output_dir, splits)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {args.output_dir} in {time.time() - start_time:.1f}s")


if __name__ == "__main__":
    main()
