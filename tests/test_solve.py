"""solve.py on the shipped checkpoints (float32): the printed answer keeps the givens and its verdict is
right; a maze comes back as a PNG and as text with the path; bad input is one error line."""
import os

import matplotlib.image
import numpy as np
import pytest

import solve
from dataset import build_maze_unique_dataset, maze, sudoku
from dataset.common import load_split
from evaluation import render

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUDOKU = os.path.join(ROOT, "checkpoints/shipped/eqr_sudoku_cpu.pt")
MAZE = os.path.join(ROOT, "checkpoints/shipped/eqr_maze_cpu.pt")
# The first test puzzle of the shipped Sudoku card's builder at seed 1 (40 givens, not in its training split).
PUZZLE = "12.73.9.....81...535.649...48527.1..21.3...5..36.5...4942...58...15...96.63...27."


@pytest.fixture(scope="module")
def maze_dir(tmp_path_factory):
    """11x11 mazes as the shipped maze checkpoint was trained on (seed 1: not its training mazes)."""
    path = str(tmp_path_factory.mktemp("data") / "maze-11")
    build_maze_unique_dataset.main(["--grid-size", "11", "--train-samples", "1", "--test-samples", "4",
                                    "--min-path-length", "8", "--max-path-length", "24", "--seed", "1",
                                    "--output-dir", path])
    return path


def boards(out: str, rows: int) -> tuple[list[str], list[str]]:
    """The given and answer boards of the first puzzle, printed side by side under 'given:' and 'answer:'."""
    lines = out.splitlines()
    top = next(n for n, line in enumerate(lines) if line.startswith("given:"))
    column = lines[top].index("answer:")
    body = lines[top + 1:top + 1 + rows]
    return [line[:column].rstrip() for line in body], [line[column:] for line in body]


def sudoku_digits(board: list[str]) -> np.ndarray:
    cells = "".join(line for line in board if "+" not in line).replace("|", "").replace(" ", "")
    return np.array([0 if ch == "." else int(ch) for ch in cells])


def test_sudoku_answer_keeps_the_givens_and_is_judged_right(tmp_path, capsys):
    image = str(tmp_path / "sudoku.png")
    puzzles = tmp_path / "puzzles.txt"
    puzzles.write_text(PUZZLE + "\n\n" + PUZZLE.replace(".", "0") + "\n")
    assert solve.main([f"checkpoint={SUDOKU}", f"puzzle={puzzles}", "forward_dtype=float32", "halt_max_steps=8",
                       "different_init=2", f"image={image}", "device=cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("given:") == 2 and "trajectory" in out and "top-1 by convergence" in out
    given, answer = boards(out, 11)
    given, answer = sudoku_digits(given), sudoku_digits(answer)
    expected_given = np.array([0 if ch == "." else int(ch) for ch in PUZZLE])
    assert np.array_equal(given, expected_given)
    assert answer.shape == (81,) and ((1 <= answer) & (answer <= 9)).all()
    assert np.array_equal(answer[given > 0], given[given > 0])  # every given kept
    valid = sudoku.first_bad_solution(given[None], answer[None]) is None
    assert f"valid: {'yes' if valid else 'no'}:" in out.split("given:")[1]
    for n in (1, 2):  # one picture per puzzle
        assert matplotlib.image.imread(str(tmp_path / f"sudoku_{n}.png")).std() > 0.05


def test_maze_answer_is_a_png_and_text_path_from_data_or_file(maze_dir, tmp_path, capsys):
    image = str(tmp_path / "maze.png")
    assert solve.main([f"checkpoint={MAZE}", f"data_path={maze_dir}", "index=0", "forward_dtype=float32",
                       f"image={image}", "device=cpu"]) == 0
    out = capsys.readouterr().out
    given, answer = boards(out, 11)
    _, arrays = load_split(maze_dir, "test")
    assert "\n".join(given) == render.maze_text(arrays["inputs"][0]).rstrip()
    tokens = np.array([maze.CHARSET.index(ch) + 1 for line in answer for ch in line.ljust(11)])
    assert (tokens == maze.PATH).sum() >= 7  # the path the model drew (the test mazes' paths are 8-24 long)
    problem = maze.label_problem(np.asarray(arrays["inputs"][0]), tokens, 11)
    assert ("valid: yes" in out) == (problem is None)
    picture = matplotlib.image.imread(image)
    assert picture.shape[0] > 200 and picture.std() > 0.05

    text = tmp_path / "maze.txt"  # the same maze as text: puzzle 1 of a file is keyed like data index 0
    text.write_text(render.maze_text(arrays["inputs"][0]) + "\n")
    assert solve.main([f"checkpoint={MAZE}", f"puzzle={text}", "forward_dtype=float32", "image=null",
                       "device=cpu"]) == 0
    assert boards(capsys.readouterr().out, 11)[1] == answer


@pytest.mark.parametrize("checkpoint, args, message", [
    (SUDOKU, ["puzzle=1234"], "puzzle: expected 81 characters"),
    (SUDOKU, ["puzzle=" + PUZZLE[:-1] + "x"], "unexpected character 'x'"),
    (MAZE, ["puzzle=" + PUZZLE], "is a maze model"),
    (SUDOKU, ["puzzle={maze}"], "looks like a maze"),
    (MAZE, ["puzzle={small_maze}"], "5x5, but"),
    (MAZE, ["data_path={maze_dir}", "index=99"], "index: 99 is past the end"),
    (SUDOKU, [], "puzzle: pass either"),
    (SUDOKU, ["puzzle=" + PUZZLE, "different_init_reset_std=-1"], "different_init_reset_std: expected a value in (0, inf)"),
    # Hydra reads this one as a float; solve.py keeps the text as typed
    (SUDOKU, ["puzzle=" + "1" * 79 + ".2"], "the givens repeat a digit"),
])
def test_bad_input_is_one_error_line(checkpoint, args, message, maze_dir, tmp_path, capsys):
    (tmp_path / "maze.txt").write_text("#####\n#S  #\n# # #\n#  G#\n#####\n" * 1)
    files = {"maze": tmp_path / "maze.txt", "small_maze": tmp_path / "maze.txt", "maze_dir": maze_dir}
    args = [a.format(**files) for a in args]
    assert solve.main([f"checkpoint={checkpoint}", "forward_dtype=float32", "image=null", "device=cpu", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
