import random

import numpy as np
import pytest

from dataset import build_maze_unique_dataset, maze, validate
from dataset.common import load_split
from tests.data_fixtures import array_path, copy_dataset, maze_dir  # noqa: F401 (fixture)


def test_perfect_maze_is_a_spanning_tree():
    side = 15
    cells = maze.carve_perfect_maze(side, random.Random(0))
    grid = np.array(cells).reshape(side, side)
    assert not grid[0].any() and not grid[-1].any() and not grid[:, 0].any() and not grid[:, -1].any()
    rooms = (side - 1) // 2
    assert grid[1::2, 1::2].all() and not grid[::2, ::2].any()
    assert grid.sum() == 2 * rooms * rooms - 1  # rooms plus one passage per tree edge
    adjacency = maze.neighbours(side)
    start = int(np.flatnonzero(cells)[0])
    dist, count, _ = maze.bfs(cells, adjacency, start)
    reachable = [i for i in range(side * side) if dist[i] >= 0]
    assert len(reachable) == grid.sum() and all(count[i] == 1 for i in reachable)  # connected, no cycles


def test_bfs_counts_shortest_paths():
    n = 3
    cells = [True] * 9  # an open 3x3 room: 6 shortest paths corner to corner, capped at 2
    dist, count, parent = maze.bfs(cells, maze.neighbours(n), 0)
    assert dist[8] == 4 and count[8] == 2 and count[1] == 1 and count[4] == 2
    path = maze.path_to(parent, 8)
    assert path[0] == 0 and path[-1] == 8 and len(path) == 5


def test_small_set_builds_and_validates(maze_dir):
    assert "ok, maze" in validate.validate_split(maze_dir, "train")
    assert "ok, maze" in validate.validate_split(maze_dir, "test")
    meta, arrays = load_split(maze_dir, "train")
    assert meta.seq_len == 144 and meta.vocab_size == 6 and meta.total_groups == meta.total_samples == 60
    inputs = arrays["inputs"].reshape(-1, 12, 12)
    assert np.all(inputs[:, -1, :] == maze.WALL) and np.all(inputs[:, :, -1] == maze.WALL)  # 11x11 maze in a 12x12 grid
    assert set(np.unique(inputs)) == {maze.WALL, maze.OPEN, maze.START, maze.GOAL}
    steps = np.count_nonzero(arrays["labels"] == maze.PATH, axis=1) + 1
    assert steps.min() >= 8 and steps.max() <= 24
    _, test_arrays = load_split(maze_dir, "test")
    everything = np.concatenate([arrays["inputs"], test_arrays["inputs"]])
    assert len({row.tobytes() for row in everything}) == len(everything)  # deduped across splits


def test_random_mode_and_other_distributions(tmp_path):
    out = str(tmp_path / "random")
    build_maze_unique_dataset.main(["--output-dir", out, "--grid-size", "9", "--maze-mode", "random", "--wall-prob", "0.3",
                                    "--train-samples", "20", "--test-samples", "5", "--length-distribution", "list",
                                    "--length-values", "4", "6", "--length-weights", "1", "3"])
    validate.main([out])
    _, arrays = load_split(out, "train")
    assert set(np.count_nonzero(arrays["labels"] == maze.PATH, axis=1) + 1) <= {4, 6}


def test_paper_defaults_build_and_validate(tmp_path):
    out = str(tmp_path / "maze-30x30")
    build_maze_unique_dataset.main(["--output-dir", out])
    validate.main([out])
    meta, arrays = load_split(out, "test")
    assert meta.seq_len == 900 and meta.total_samples == 1000
    steps = np.count_nonzero(arrays["labels"] == maze.PATH, axis=1) + 1
    assert steps.min() >= 100 and steps.max() <= 140 and steps.max() - steps.min() > 30


@pytest.mark.parametrize("args, expected", [
    (["--grid-size", "11"], "do not fit a 11x11 perfect maze"),
    (["--grid-size", "11", "--min-path-length", "30", "--max-path-length", "20"], "exceeds --max-path-length"),
    (["--grid-size", "2"], "--grid-size must be at least 3"),
])
def test_bad_arguments_give_one_line_and_exit_2(tmp_path, capsys, args, expected):
    with pytest.raises(SystemExit) as exit_info:
        build_maze_unique_dataset.main(["--output-dir", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and expected in err
    assert not (tmp_path / "out").exists()


def small_maze(rows):
    chars = {"#": maze.WALL, " ": maze.OPEN, "S": maze.START, "G": maze.GOAL, "o": maze.PATH}
    return np.array([chars[ch] for row in rows for ch in row], dtype=np.uint8)


def test_label_problems_are_caught():
    n = 5
    inputs = small_maze(["#####", "#S  #", "### #", "#G  #", "#####"])
    good = small_maze(["#####", "#Soo#", "###o#", "#Goo#", "#####"])
    assert maze.label_problem(inputs, good, n) is None
    gap = small_maze(["#####", "#So #", "###o#", "#Goo#", "#####"])
    assert "not the shortest" in maze.label_problem(inputs, gap, n)
    wall_marked = small_maze(["#####", "#Soo#", "##oo#", "#Goo#", "#####"])
    assert "other than by marking open cells" in maze.label_problem(inputs, wall_marked, n)
    loop_inputs = small_maze(["#####", "#S  #", "#   #", "#  G#", "#####"])
    loop_label = small_maze(["#####", "#Soo#", "#  o#", "#  G#", "#####"])
    assert "not unique" in maze.label_problem(loop_inputs, loop_label, n)
    cut = small_maze(["#####", "#S  #", "#####", "#G  #", "#####"])
    assert "not reachable" in maze.label_problem(cut, cut, n)


def test_validator_names_first_bad_maze(tmp_path, maze_dir, capsys):
    path = copy_dataset(maze_dir, str(tmp_path / "broken"))
    labels_file = array_path(path, "test", "labels")
    labels = np.load(labels_file)
    labels[3][np.flatnonzero(labels[3] == maze.PATH)[0]] = maze.OPEN
    np.save(labels_file, labels)
    with pytest.raises(SystemExit) as exit_info:
        validate.main([path])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1 and len(err.splitlines()) == 1
    assert "test" in err and "all__labels.npy" in err and "example 3" in err


@pytest.mark.parametrize("script,args", [
    ("dataset/build_maze_unique_dataset.py", ["--grid-size", "7", "--train-samples", "2", "--test-samples", "2",
                                             "--maze-mode", "perfect", "--length-distribution", "uniform",
                                             "--min-path-length", "4", "--max-path-length", "12", "--require-unique",
                                             "--dedupe"]),
    ("dataset/build_sudoku_dataset.py", ["--generate", "4", "--generate-test", "2", "--subsample-size", "2",
                                         "--num-aug", "1", "--seed", "42"]),
])
def test_builders_run_as_scripts(script, args, tmp_path):
    """`python dataset/build_*.py ...` with the authors' flags (their README; Sudoku offline, --generate instead of
    the Hub) works beside `python -m dataset.build_*`."""
    import launch

    done = launch.launch(script, *args, "--output-dir", str(tmp_path / "out"), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "test" / "dataset.json").exists()
