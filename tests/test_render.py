"""Pictures: board/maze text round trips and checks (evaluation/render.py), training curves from a run folder
(evaluation/curves.py, scripts/plot_run.py), and evaluate.py's rendered examples."""
import json
import os
import random

import matplotlib.image
import numpy as np
import pytest

import evaluate
from dataset import build_sudoku_dataset, maze, sudoku
from evaluation import render
from scripts import plot_run
from utils.errors import ConfigError
from utils.run_folder import EVAL, LR, STEP, TRAIN, append_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sudoku_text_round_trip_and_validity():
    puzzle, solution, _ = sudoku.generate_puzzle(random.Random(0), min_givens=40)
    tokens = sudoku.digits_to_tokens(np.array(puzzle))
    text = render.sudoku_text(tokens)
    assert len(text.splitlines()) == 11
    compact = "".join(ch for ch in text if ch in ".123456789")
    assert np.array_equal(render.parse_sudoku_text(compact, "puzzle"), tokens)
    answer = sudoku.digits_to_tokens(np.array(solution))
    assert render.sudoku_problem(tokens, answer) is None
    blank = [i for i in range(81) if puzzle[i] == 0]
    other = next(i for i in blank if answer[i] != answer[blank[0]])
    swapped = answer.copy()
    swapped[blank[0]], swapped[other] = answer[other], answer[blank[0]]  # rows, columns or boxes now repeat a digit
    assert render.sudoku_problem(tokens, swapped) is not None
    given = next(i for i in range(81) if puzzle[i])
    changed = answer.copy()
    changed[given] = answer[given] % 9 + 2  # another digit in a given's cell
    assert render.sudoku_problem(tokens, changed) is not None


def test_maze_text_round_trip_and_path_check():
    n = 7
    open_cells = maze.carve_perfect_maze(n, random.Random(3))
    adjacency = maze.neighbours(n)
    cells = [i for i, ok in enumerate(open_cells) if ok]
    dist, _, parent = maze.bfs(open_cells, adjacency, cells[0])
    goal = max(cells, key=lambda i: dist[i])
    inputs, labels = maze.to_tokens(open_cells, cells[0], goal, maze.path_to(parent, goal))
    assert np.array_equal(render.parse_maze_text(render.maze_text(inputs), "maze"), inputs)
    assert np.array_equal(render.parse_maze_text(render.maze_text(labels), "maze"), inputs)  # 'o' reads as open
    assert "o" in render.maze_text(labels) and render.maze_problem(inputs, labels) is None
    assert render.maze_problem(inputs, inputs) is not None  # no path drawn
    assert render.task_of(maze.VOCAB_SIZE, n * n) == "maze" and render.task_of(sudoku.VOCAB_SIZE, 81) == "sudoku"
    assert render.task_of(4, 8) is None
    with pytest.raises(ConfigError, match="must be square"):
        render.parse_maze_text("###\n#S#\n", "maze.txt")
    with pytest.raises(ConfigError, match="unexpected character 'x'"):
        render.parse_maze_text("###\n#Sx\n#G#\n", "maze.txt")


def test_plot_run_draws_the_curves_of_a_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for step in range(10, 110, 10):
        append_metrics(str(run / "metrics.jsonl"), {STEP: step, LR: 1e-3 * min(1, step / 30),
                                                    TRAIN["lm_loss"]: 2 / step ** 0.5, TRAIN["q_halt_loss"]: 0.1,
                                                    TRAIN["exact_accuracy"]: step / 200, TRAIN["accuracy"]: step / 110})
        if step % 50 == 0:
            append_metrics(str(run / "metrics.jsonl"), {STEP: step, EVAL["exact_accuracy"]: step / 300,
                                                        EVAL["accuracy"]: 0.5, EVAL["count"]: 16})
    assert plot_run.main([str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "training_curves.png")
    picture = matplotlib.image.imread(run / "training_curves.png")
    assert picture.shape[0] > 400 and picture.std() > 0.05
    assert plot_run.main([str(run), "--output", str(tmp_path / "elsewhere.png")]) == 0
    assert os.path.isfile(tmp_path / "elsewhere.png")

    assert plot_run.main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no metrics to plot" in err and err.count("\n") == 1


def test_evaluate_renders_solved_and_failed_examples(tmp_path, capsys):
    data = str(tmp_path / "data")
    build_sudoku_dataset.main(["--generate", "1", "--generate-test", "8", "--num-aug", "0", "--min-givens", "40",
                               "--seed", "1", "--output-dir", data])
    out = tmp_path / "out"
    assert evaluate.main([f"checkpoint={os.path.join(ROOT, 'checkpoints/shipped/eqr_sudoku_cpu.pt')}",
                          f"data_path={data}", "depths=[1,2]", "breadths=[1,2]", "global_batch_size=4",
                          "forward_dtype=float32", "render_examples=2", f"output_dir={out}", "device=cpu",
                          "progress=false"]) == 0
    capsys.readouterr()
    with open(out / "results.json") as f:
        correct = json.load(f)["headline"]["correct"]
    drawn = {name for name in os.listdir(out) if name.startswith("examples_")}
    assert drawn == {f"examples_{outcome}.png" for outcome, any_of in (("solved", correct > 0), ("failed", correct < 8))
                     if any_of}
    for name in drawn:
        assert matplotlib.image.imread(out / name).std() > 0.05
