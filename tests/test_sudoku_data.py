import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from dataset import build_sudoku_dataset, validate
from dataset.common import load_split
from dataset.sudoku import (apply_transforms, first_bad_solution, generate_puzzle, random_transforms, tokens_to_digits)
from dataset.sudoku_solver import givens_consistent, random_full_grid, solve_count
from tests.data_fixtures import SUDOKU_AUG, array_path, copy_dataset, sudoku_dir  # noqa: F401 (fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARD = "8..........36......7..9.2...5...7.......457.....1...3...1....68..85...1..9....4.."


def board(text):
    return [0 if ch in ".0" else int(ch) for ch in text]


def text(board):
    return "".join(str(int(v)) if v else "." for v in board)


def brute_force_count(grid, limit=2):
    """Plain backtracking over the first blank cell, no propagation."""
    grid = list(grid)
    try:
        i = grid.index(0)
    except ValueError:
        return 1
    r, c = divmod(i, 9)
    used = {grid[r * 9 + k] for k in range(9)} | {grid[k * 9 + c] for k in range(9)}
    br, bc = r - r % 3, c - c % 3
    used |= {grid[(br + a) * 9 + bc + b] for a in range(3) for b in range(3)}
    total = 0
    for d in range(1, 10):
        if d not in used:
            grid[i] = d
            total += brute_force_count(grid, limit - total)
            if total >= limit:
                break
    return total


def test_solver_hard_puzzle_unique_and_valid():
    result = solve_count(board(HARD))
    assert result.count == 1 and result.effort > 0
    assert first_bad_solution(np.array([board(HARD)]), np.array([result.solution])) is None


def test_solver_counts_match_brute_force():
    rng = random.Random(3)
    counts = []
    for _ in range(30):
        grid = random_full_grid(rng)
        for cell in rng.sample(range(81), 50):
            grid[cell] = 0
        expected = brute_force_count(grid)
        assert solve_count(grid).count == expected
        counts.append(expected)
    assert set(counts) == {1, 2}  # both unique and ambiguous puzzles were exercised


def test_solver_no_solution_and_conflicts():
    puzzle, solution, _ = generate_puzzle(random.Random(1), min_givens=30)
    cell = puzzle.index(0)
    assert solve_count(puzzle, forbid=(cell, solution[cell])).count == 0
    conflicting = list(puzzle)
    row_digit = next(v for v in puzzle[(cell // 9) * 9:(cell // 9) * 9 + 9] if v)
    conflicting[cell] = row_digit
    assert not givens_consistent(conflicting) and solve_count(conflicting).count == 0
    assert solve_count([0] * 81).count == 2


def test_generator_unique_and_minimal():
    rng = random.Random(5)
    puzzle, solution, rating = generate_puzzle(rng, min_givens=0)
    result = solve_count(puzzle)
    assert result.count == 1 and result.solution == solution and result.effort == rating
    for cell in [i for i, v in enumerate(puzzle) if v]:  # minimal: no given can go
        fewer = list(puzzle)
        fewer[cell] = 0
        assert solve_count(fewer).count == 2
    puzzle, _, _ = generate_puzzle(rng, min_givens=35)
    assert sum(1 for v in puzzle if v) == 35


def test_augmentations_preserve_validity():
    puzzle, solution, _ = generate_puzzle(random.Random(2), min_givens=28)
    cell_source, digit_map = random_transforms(np.random.default_rng(0), 300)
    assert np.all(np.sort(cell_source, axis=1) == np.arange(81))  # each is a permutation of the cells
    assert np.all(np.sort(digit_map[:, 1:], axis=1) == np.arange(1, 10)) and np.all(digit_map[:, 0] == 0)
    new_puzzles = apply_transforms(puzzle, cell_source, digit_map)
    new_solutions = apply_transforms(solution, cell_source, digit_map)
    assert first_bad_solution(new_puzzles, new_solutions) is None
    assert np.all(np.count_nonzero(new_puzzles, axis=1) == 28)
    # each new row comes from one old row, or from one old column (transposed copies; both kinds occur)
    source_rows = cell_source.reshape(300, 9, 9) // 9
    from_row = np.all(source_rows == source_rows[:, :, :1], axis=(1, 2))
    source_cols = cell_source.reshape(300, 9, 9) % 9
    from_col = np.all(source_cols == source_cols[:, :, :1], axis=(1, 2))
    assert np.all(from_row | from_col) and from_row.any() and from_col.any()
    assert len({tuple(row) for row in new_solutions}) > 290
    # the check itself catches a move that is not a symmetry: swapping rows of different bands
    broken = np.array(solution).reshape(9, 9)[[3, 1, 2, 0, 4, 5, 6, 7, 8]].reshape(1, 81)
    assert first_bad_solution(np.zeros((1, 81), dtype=int), broken)[1].startswith("solution repeats")
    assert first_bad_solution(np.array([puzzle]), np.array([[(v % 9) + 1 for v in solution]]))[1] == "solution disagrees with a given"


def test_generated_set_layout_groups_and_validity(sudoku_dir):
    assert "ok, sudoku" in validate.validate_split(sudoku_dir, "train")
    assert "ok, sudoku" in validate.validate_split(sudoku_dir, "test")
    meta, arrays = load_split(sudoku_dir, "train")
    group = 1 + SUDOKU_AUG
    assert meta.total_groups == 40 and meta.total_samples == 40 * group and meta.vocab_size == 11 and meta.seq_len == 81
    assert np.array_equal(arrays["group_indices"], np.arange(0, 40 * group + 1, group))
    assert arrays["inputs"].dtype == np.uint8 and arrays["inputs"].min() >= 1 and arrays["labels"].min() >= 2
    digits = tokens_to_digits(arrays["inputs"]).reshape(40, group, 81)
    givens = np.count_nonzero(digits, axis=2)
    assert np.all(givens == givens[:, :1])  # copies in a group keep the number of givens
    assert all(len({row.tobytes() for row in g}) == group for g in digits)  # and are different boards
    test_meta, _ = load_split(sudoku_dir, "test")
    assert test_meta.total_groups == test_meta.total_samples == 13  # no augmentation on the test split


def test_generate_is_deterministic_and_atomic(tmp_path, sudoku_dir):
    out = str(tmp_path / "again")
    build_sudoku_dataset.main(["--output-dir", out, "--generate", "40", "--generate-test", "13",
                               "--num-aug", str(SUDOKU_AUG), "--min-givens", "30", "--seed", "0"])
    for split in ("train", "test"):
        for name in ("inputs", "labels"):
            assert np.array_equal(np.load(array_path(out, split, name)), np.load(array_path(sudoku_dir, split, name)))
    assert sorted(os.listdir(tmp_path)) == ["again"]  # no temporary folder left behind


def write_sources(tmp_path):
    """A CSV with given, missing and bad solutions and a plain puzzle file; returns paths and expectations."""
    rng = random.Random(11)
    rows = [generate_puzzle(rng, min_givens=32) for _ in range(6)]
    unsolvable, solution, _ = generate_puzzle(rng, min_givens=32)
    cell = next(i for i, v in enumerate(unsolvable) if v == 0 and any(
        givens_consistent(unsolvable[:i] + [d] + unsolvable[i + 1:]) and d != solution[i] for d in range(1, 10)))
    unsolvable[cell] = next(d for d in range(1, 10) if d != solution[cell]
                            and givens_consistent(unsolvable[:cell] + [d] + unsolvable[cell + 1:]))
    lines = ["source,q,a,rating"]
    for k, (q, a, _) in enumerate(rows):
        lines.append(f"gen,{text(q)},{''.join(map(str, a)) if k % 2 else ''},{k}")
    lines.append(f"gen,{text(unsolvable)},,0")
    lines.append(f"gen,{'.' * 81},,0")
    train_csv = tmp_path / "train.csv"
    train_csv.write_text("\n".join(lines) + "\n")
    test_txt = tmp_path / "test.txt"
    test_txt.write_text("\n".join(text(q).replace(".", "0") for q, _, _ in rows[:3]) + "\n")
    return str(train_csv), str(test_txt), rows


def test_source_csv_and_text_file(tmp_path, capsys):
    train_csv, test_txt, rows = write_sources(tmp_path)
    out = str(tmp_path / "from-csv")
    build_sudoku_dataset.main(["--output-dir", out, "--source-csv", train_csv, "--test-csv", test_txt,
                               "--num-aug", "2", "--min-difficulty", "2"])
    printed = capsys.readouterr().out
    assert "1 dropped with no solution, 1 dropped with several solutions" in printed
    assert "2 below --min-difficulty 2" in printed  # ratings 0 and 1 from the CSV column
    validate.main([out])
    _, arrays = load_split(out, "train")
    firsts = tokens_to_digits(arrays["labels"][::3])
    assert np.array_equal(firsts, np.array([a for _, a, _ in rows[2:]]))  # solver filled the missing answers
    # the plain file has no rating column, so the solver's guess count is the rating there
    _, test_arrays = load_split(out, "test")
    hard_enough = [a for q, a, _ in rows[:3] if solve_count(q).effort >= 2]
    assert np.array_equal(tokens_to_digits(test_arrays["labels"]).reshape(-1, 81), np.array(hard_enough).reshape(-1, 81))


@pytest.mark.parametrize("bad_line, expected", [
    ("gen,55" + "." * 79 + ",,0", "givens repeat a digit"),
    ("gen," + "." * 80 + ",,0", "must have 81 characters"),
    ("gen," + "x" + "." * 80 + ",,0", "may only hold digits"),
])
def test_bad_csv_gives_one_line_and_exit_2(tmp_path, capsys, bad_line, expected):
    train_csv, test_txt, _ = write_sources(tmp_path)
    with open(train_csv, "a") as f:
        f.write(bad_line + "\n")
    with pytest.raises(SystemExit) as exit_info:
        build_sudoku_dataset.main(["--output-dir", str(tmp_path / "out"), "--source-csv", train_csv, "--test-csv", test_txt])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert f"{train_csv}:10:" in err and expected in err
    assert not (tmp_path / "out").exists()


def test_a_csv_that_is_not_utf8_gives_one_line(tmp_path, capsys):
    path = tmp_path / "latin1.csv"
    path.write_bytes("source,q,a,rating\ncaf\u00e9,".encode("latin-1") + b"." * 81 + b",,0\n")
    with pytest.raises(SystemExit) as exit_info:
        build_sudoku_dataset.main(["--output-dir", str(tmp_path / "out"), "--source-csv", str(path), "--test-csv", str(path)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err == f"error: {path}: not UTF-8 text (byte 21 cannot be decoded); save the file as UTF-8"


def test_wrong_answer_in_csv_is_rejected(tmp_path, capsys):
    q, a, _ = generate_puzzle(random.Random(4), min_givens=30)
    wrong = list(a)
    wrong[0], wrong[1] = wrong[1], wrong[0]
    path = tmp_path / "t.csv"
    path.write_text(f"source,q,a,rating\ns,{text(q)},{''.join(map(str, wrong))},3\n")
    with pytest.raises(SystemExit):
        build_sudoku_dataset.main(["--output-dir", str(tmp_path / "out"), "--source-csv", str(path), "--test-csv", str(path)])
    assert f"{path}:2: solution" in capsys.readouterr().err


def make_hub_cache(cache_dir, repo_id, files):
    """The folder layout huggingface_hub uses for a cached dataset snapshot."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache_dir / f"datasets--{repo_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, content in files.items():
        (snapshot / name).write_text(content)


def run_builder(args, cache_dir):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache_dir), HF_HOME=str(cache_dir.parent / "hf-home"))
    return subprocess.run([sys.executable, "-m", "dataset.build_sudoku_dataset", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_hugging_face_source_from_offline_cache(tmp_path):
    rng = random.Random(21)
    rows = [generate_puzzle(rng, min_givens=30) for _ in range(8)]
    csv_text = "source,q,a,rating\n" + "".join(f"hub,{text(q)},{''.join(map(str, a))},{k}\n" for k, (q, a, _) in enumerate(rows))
    cache = tmp_path / "hub"
    make_hub_cache(cache, "sapientinc/sudoku-extreme", {"train.csv": csv_text, "test.csv": csv_text})
    out = tmp_path / "from-hub"
    result = run_builder(["--output-dir", str(out), "--subsample-size", "3", "--num-aug", "2",
                          "--min-difficulty", "2", "--seed", "42"], cache)
    assert result.returncode == 0, result.stderr
    assert "sapientinc/sudoku-extreme/train.csv: 8 read; 2 below --min-difficulty 2; subsampled to 3" in result.stdout
    meta, arrays = load_split(str(out), "train")
    assert meta.total_groups == 3 and meta.total_samples == 9
    # the reference's pick: np.random.seed(42) then choice(6, 3, replace=False) over the 6 kept puzzles
    picked = np.random.RandomState(42).choice(6, size=3, replace=False)
    assert np.array_equal(tokens_to_digits(arrays["inputs"][::3]), np.array([rows[2 + i][0] for i in picked]))
    test_meta, _ = load_split(str(out), "test")
    assert test_meta.total_samples == 6
    with open(out / "identifiers.json") as f:
        assert json.load(f) == ["<blank>"]

    missing = run_builder(["--output-dir", str(tmp_path / "none"), "--source-repo", "nobody/absent"], cache)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "nobody/absent/train.csv" in missing.stderr and not (tmp_path / "none").exists()


def test_validator_names_first_bad_label(tmp_path, sudoku_dir, capsys):
    path = copy_dataset(sudoku_dir, str(tmp_path / "broken"))
    labels_file = array_path(path, "train", "labels")
    labels = np.load(labels_file)
    labels[7, [0, 1]] = labels[7, [1, 0]]
    np.save(labels_file, labels)
    with pytest.raises(SystemExit) as exit_info:
        validate.main([path])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1 and len(err.splitlines()) == 1
    assert "train" in err and "all__labels.npy" in err and "example 7" in err


def test_max_givens_spreads_the_givens(tmp_path):
    out = str(tmp_path / "spread")
    build_sudoku_dataset.main(["--output-dir", out, "--generate", "2", "--num-aug", "0", "--generate-test", "40",
                               "--min-givens", "30", "--max-givens", "45", "--seed", "0"])
    givens = np.count_nonzero(tokens_to_digits(np.load(array_path(out, "test", "inputs"))), axis=1)
    assert givens.min() >= 30 and givens.max() <= 45 and len(np.unique(givens)) >= 8  # spread, within the range
    with pytest.raises(SystemExit):
        build_sudoku_dataset.parse_args(["--generate", "2", "--min-givens", "30", "--max-givens", "20"])
