"""Pictures and text of Sudoku boards and mazes, and the matplotlib set-up every PNG of the project uses.

Everything here takes plain token rows (numpy or lists, as stored in a dataset split): the puzzle's
`inputs`, the model's `answer` and, when known, the `label`. So a picture can be drawn from a live
evaluation, from solve.py, or later from saved predictions alike.

Sudoku: givens in black, the model's digits in blue, digits that differ from the label (or, without
a label, that break a row, column or box) in red. Maze: walls dark, the model's path in blue, path
cells the label does not have in red, label path cells the model missed as red outlines.
"""
import io
import math

import numpy as np

from dataset import maze, sudoku
from utils.errors import ConfigError
from utils.files import atomic_write


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str, dpi: int = 120) -> None:
    """Write a figure as PNG atomically and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    atomic_write(path, buffer.getvalue())


def task_of(vocab_size: int, seq_len: int) -> str | None:
    """'sudoku' or 'maze' for a model or dataset of this vocabulary and length; None for anything else."""
    if vocab_size == sudoku.VOCAB_SIZE and seq_len == sudoku.SEQ_LEN:
        return "sudoku"
    if vocab_size == maze.VOCAB_SIZE and math.isqrt(seq_len) ** 2 == seq_len:
        return "maze"
    return None


# ----------------------------------------------------------------------------- checks

def sudoku_problem(inputs, answer) -> str | None:
    """Why the answer (tokens) is not a valid completion of the puzzle's givens, or None."""
    bad = sudoku.first_bad_solution(sudoku.tokens_to_digits(inputs)[None], sudoku.tokens_to_digits(answer)[None])
    return None if bad is None else bad[1]


def maze_problem(inputs, answer) -> str | None:
    """Why the answer (tokens) is not the unique shortest S->G path of the maze, or None."""
    inputs, answer = np.asarray(inputs), np.asarray(answer)
    if not np.array_equal(np.where(answer == maze.PATH, maze.OPEN, answer), inputs):
        return "the answer changes a wall, S or G, or draws the path through a wall"
    return maze.label_problem(inputs, answer, math.isqrt(inputs.size))


# ----------------------------------------------------------------------------- text

def sudoku_text(tokens) -> str:
    """A 9x9 board (tokens) as text, '.' for blanks, with box separators."""
    digits = sudoku.tokens_to_digits(tokens).reshape(9, 9)
    lines = []
    for r in range(9):
        if r in (3, 6):
            lines.append("------+-------+------")
        cells = ["." if d <= 0 else str(d) for d in digits[r]]
        lines.append(" | ".join(" ".join(cells[c:c + 3]) for c in (0, 3, 6)))
    return "\n".join(lines)


def maze_text(tokens) -> str:
    """A maze (tokens) in the builder's characters: '#' wall, ' ' open, 'S', 'G', 'o' path."""
    tokens = np.asarray(tokens)
    side = math.isqrt(tokens.size)
    chars = np.array(["?", *maze.CHARSET])[np.clip(tokens, 0, len(maze.CHARSET))]
    return "\n".join("".join(chars[r * side:(r + 1) * side]) for r in range(side))


def parse_maze_text(text: str, where: str) -> np.ndarray:
    """Input tokens of a maze written as text (rows of '#', ' ', 'S', 'G'; an 'o' is read as open): square, every
    row as long as the others (a short row would lose its border wall), one S and one G."""
    rows = [line.rstrip("\n") for line in text.splitlines() if line.strip()]
    if not rows:
        raise ConfigError(f"{where}: expected a maze (rows of '#', ' ', 'S', 'G'), got nothing")
    side = max(len(row) for row in rows)
    if len(rows) != side:
        raise ConfigError(f"{where}: a maze must be square, got {len(rows)} rows of up to {side} characters")
    short = next((n for n, row in enumerate(rows, start=1) if len(row) < side), None)
    if short:
        raise ConfigError(f"{where}: row {short} has {len(rows[short - 1])} characters, the longest {side} "
                          f"(every row of a maze, border wall included, is {side} long)")
    flat = "".join(rows).replace("o", " ")
    bad = sorted(set(flat) - set("# SG"))
    if bad:
        raise ConfigError(f"{where}: unexpected character {bad[0]!r} in the maze (expected '#', ' ', 'S', 'G')")
    for mark, name in (("S", "start"), ("G", "goal")):
        if flat.count(mark) != 1:
            raise ConfigError(f"{where}: {flat.count(mark)} {mark}'s in the maze, expected exactly one (the {name})")
    return np.array([maze.CHARSET.index(ch) + 1 for ch in flat], dtype=np.int64)


def parse_sudoku_text(text: str, where: str) -> np.ndarray:
    """Input tokens of a Sudoku written as 81 characters, digits 1-9 and 0 or '.' for a blank."""
    text = text.strip()
    if len(text) != 81:
        raise ConfigError(f"{where}: expected 81 characters (digits 1-9, 0 or . for blanks), got {len(text)}")
    bad = sorted(set(text) - set("0123456789."))
    if bad:
        kind = "a non-ASCII digit; " if bad[0].isdigit() else ""
        raise ConfigError(f"{where}: unexpected character {bad[0]!r} ({kind}expected digits 1-9, 0 or . for blanks)")
    digits = np.array([0 if ch == "." else int(ch) for ch in text])
    for unit in sudoku.UNIT_CELLS:
        given = digits[unit][digits[unit] > 0]
        if len(set(given.tolist())) < len(given):
            raise ConfigError(f"{where}: the givens repeat a digit in a row, column or box, so no completion exists")
    return sudoku.digits_to_tokens(digits).astype(np.int64)


# ----------------------------------------------------------------------------- pictures

def draw_sudoku(ax, inputs, answer, label=None, title: str | None = None) -> None:
    given = sudoku.tokens_to_digits(inputs).reshape(9, 9)
    digits = sudoku.tokens_to_digits(answer).reshape(9, 9)
    if label is not None:
        wrong = sudoku.tokens_to_digits(label).reshape(9, 9) != digits
    else:  # no label: a digit is wrong when a peer holds the same digit
        flat = digits.flatten()
        wrong = np.array([any(flat[p] == flat[i] for p in sudoku.PEERS[i]) for i in range(81)]).reshape(9, 9)
    ax.set_xlim(0, 9)
    ax.set_ylim(9, 0)
    for k in range(10):
        width = 2.0 if k % 3 == 0 else 0.5
        ax.plot([k, k], [0, 9], color="k", lw=width)
        ax.plot([0, 9], [k, k], color="k", lw=width)
    for r in range(9):
        for c in range(9):
            if given[r, c] > 0:
                ax.text(c + 0.5, r + 0.5, str(given[r, c]), ha="center", va="center", fontsize=11, weight="bold")
            elif 1 <= digits[r, c] <= 9:
                colour = "red" if wrong[r, c] else "tab:blue"
                ax.text(c + 0.5, r + 0.5, str(digits[r, c]), ha="center", va="center", fontsize=11, color=colour)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal")
    if title:
        ax.set_title(title, fontsize=9)


def draw_maze(ax, inputs, answer, label=None, title: str | None = None) -> None:
    inputs, answer = np.asarray(inputs), np.asarray(answer)
    side = math.isqrt(inputs.size)
    grid = lambda x: np.asarray(x).reshape(side, side)
    colours = np.ones((side, side, 3))
    colours[grid(inputs) == maze.WALL] = (0.15, 0.15, 0.2)
    path = grid(answer) == maze.PATH
    expected = grid(label) == maze.PATH if label is not None else path
    colours[path & expected] = (0.35, 0.6, 0.95)
    colours[path & ~expected] = (0.9, 0.2, 0.2)
    colours[grid(inputs) == maze.START] = (0.1, 0.7, 0.2)
    colours[grid(inputs) == maze.GOAL] = (0.95, 0.65, 0.1)
    ax.imshow(colours, interpolation="nearest")
    for r, c in zip(*np.nonzero(expected & ~path)):  # label path cells the model left out
        ax.add_patch(_rectangle((c - 0.45, r - 0.45), 0.9, 0.9, fill=False, edgecolor="red", lw=1.2))
    for token, letter in ((maze.START, "S"), (maze.GOAL, "G")):
        for r, c in zip(*np.nonzero(grid(inputs) == token)):
            ax.text(c, r, letter, ha="center", va="center", fontsize=max(4, 90 // side), weight="bold", color="w")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def _rectangle(*args, **kwargs):
    from matplotlib.patches import Rectangle
    return Rectangle(*args, **kwargs)


DRAW = {"sudoku": draw_sudoku, "maze": draw_maze}
PROBLEM = {"sudoku": sudoku_problem, "maze": maze_problem}
TEXT = {"sudoku": sudoku_text, "maze": maze_text}


def save_puzzle_png(path: str, task: str, inputs, answer, label=None, title: str | None = None) -> None:
    """One puzzle and the model's answer as a PNG."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    DRAW[task](ax, inputs, answer, label, title)
    save_figure(fig, path)


def save_examples_png(path: str, task: str, examples: list[dict], title: str) -> None:
    """A row of puzzles, each a dict with inputs, answer, label and a short caption."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(examples), figsize=(3.2 * len(examples), 3.6), squeeze=False)
    for ax, example in zip(axes[0], examples):
        DRAW[task](ax, example["inputs"], example["answer"], example.get("label"), example.get("caption"))
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)
