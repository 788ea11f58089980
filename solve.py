"""Show a checkpoint's answer to a puzzle: the board (or maze path), whether it is valid, how many steps it took.

    python solve.py checkpoint=PATH puzzle=<81 characters: digits 1-9, 0 or . for blanks>
    python solve.py checkpoint=PATH puzzle=puzzles.txt        # Sudoku: one per line
    python solve.py checkpoint=PATH puzzle=maze.txt           # mazes: rows of '#', ' ', S, G; a blank line between
    python solve.py checkpoint=PATH data_path=DATA index=3    # puzzle 3 of DATA's test split, checked against its label
    ... halt_max_steps=64 different_init=16                   # depth D and breadth B, as in evaluate.py

The answer comes from evaluate.py's pass (evaluation/grid.run_batch) at one cell (D, B): at B > 1 the
trajectory picked is top-1 by convergence, the paper's rule. Randomness is keyed by (seed, puzzle, trajectory)
as in evaluate.py, so `data_path=D index=i` gives the answer evaluate.py scored for puzzle i (same seed, D, B).
Keys and defaults: config/cfg_solve.yaml. image=P.png also draws each answer (P_1.png, ... for a file); an
existing file is never overwritten.
"""
import sys

from config import answer_help

HELP_PRESETS = {}
answer_help("solve", __doc__, None, HELP_PRESETS)  # before torch is imported

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from config import compose_config
from dataset.common import load_split
from evaluation import render
from evaluation.grid import GridSpec, fresh_init_std, row_keys, run_batch
from evaluation.keyed_rng import KeyedSampler
from evaluation.setup import load_model, train_setting
from utils.constants import IGNORE_LABEL_ID
from utils.entry import run_entry
from utils.errors import ConfigError
from utils.files import check_writable
from utils.processes import exit_process
from utils.typecheck import check_fields, from_config, must, positive, ranged

CHUNK = 64  # puzzles per forward pass
MAX_FILE_BYTES = 4 * 2**20  # a puzzle file larger than this is refused (docs/evaluation.md: solve.py on a file)


@dataclass
class SolveConfig:
    checkpoint: str
    trust_checkpoint: bool
    puzzle: str | None
    data_path: str | None
    split: str
    index: int | None
    device: str | None
    threads: int | None = must(lambda v: v >= 1, "a positive integer")
    forward_dtype: str | None
    halt_max_steps: int | None = must(lambda v: v >= 1, "a positive integer")
    different_init: int = positive()
    different_init_reset_std: float | None = ranged(0, low_open=True)
    convergence_window: int = positive()
    halt_threshold: float
    seed: int | None
    image: str | None = must(lambda v: v.endswith(".png"), "a .png path or null")

    def __post_init__(self):
        check_fields(self)
        if (self.puzzle is None) == (self.data_path is None):
            raise ConfigError("puzzle: pass either puzzle=<puzzle or file> or data_path=<dataset folder> index=<i>")
        if self.data_path is not None and (self.index is None or self.index < 0):
            raise ConfigError(f"index: expected the 0-based number of a puzzle in {self.data_path}/{self.split}, "
                              f"got {self.index!r}")


def parse_config(cfg: dict) -> SolveConfig:
    return from_config(SolveConfig, cfg, "config/cfg_solve.yaml", "key")


def compose(_, overrides: list[str]) -> SolveConfig:
    """The config; `puzzle=` is kept out of Hydra, which would read an all-digit puzzle as an int, one with a single
    '.' as a float, and refuse one with a non-ASCII character with its lexer's message."""
    puzzles = [a.split("=", 1)[1] for a in overrides if a.startswith("puzzle=")]
    cfg = compose_config("cfg_solve", [a for a in overrides if not a.startswith("puzzle=")])
    if puzzles:
        cfg["puzzle"] = puzzles[-1]
    return parse_config(cfg)


# ----------------------------------------------------------------------------- puzzles in

def read_text_file(path: str) -> str:
    """A puzzle file's text; one line for a file too large to answer here, or one that is not text."""
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        raise ConfigError(f"puzzle: {path} is {size / 2**20:.1f} MiB; solve.py reads files up to "
                          f"{MAX_FILE_BYTES // 2**20} MiB (about 50,000 Sudoku lines or 4,000 30x30 mazes). For more, "
                          f"build a dataset of them and run evaluate.py save_outputs=true (docs/evaluation.md)")
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"puzzle: {path} is not a text file (byte 0x{data[e.start]:02x} at offset {e.start} "
                          f"is not UTF-8)") from None
    if "\0" in text:
        raise ConfigError(f"puzzle: {path} is not a text file (a NUL byte at offset {text.index(chr(0))})")
    return text


def read_puzzles(cfg: SolveConfig, task: str, seq_len: int) -> tuple[np.ndarray, np.ndarray | None, list[int]]:
    """-> (input tokens [N, S], labels [N, S] or None, puzzle numbers (the keys of their randomness)).
    Every puzzle of a file is read and checked here, before the model runs."""
    if cfg.data_path is not None:
        _, arrays = load_split(cfg.data_path, cfg.split)
        count = len(arrays["inputs"])
        if cfg.index >= count:
            raise ConfigError(f"index: {cfg.index} is past the end of {cfg.data_path}/{cfg.split} ({count} puzzles)")
        rows = slice(cfg.index, cfg.index + 1)
        return np.asarray(arrays["inputs"][rows], np.int64), np.asarray(arrays["labels"][rows], np.int64), [cfg.index]

    text = cfg.puzzle
    if os.path.isfile(text):
        content, where = read_text_file(text), text
    elif task == "maze":
        raise ConfigError(f"puzzle: {cfg.checkpoint} is a maze model; pass a file holding the maze as text "
                          f"(rows of '#', ' ', 'S', 'G') or data_path=<dataset> index=<i>")
    else:
        content, where = text, "puzzle"
    if task == "sudoku":
        if "#" in content:
            raise ConfigError(f"{where}: looks like a maze, but {cfg.checkpoint} is a Sudoku model")
        lines = [(n, line) for n, line in enumerate(content.splitlines(), start=1) if line.strip()]
        name = (lambda n: f"{where} line {n}") if where != "puzzle" else (lambda n: where)
        puzzles = [render.parse_sudoku_text(line, name(n)) for n, line in lines]
    else:
        puzzles = []
        for first, block in maze_blocks(content):
            maze_name = f"{where} maze {len(puzzles) + 1} (line {first})"
            puzzles.append(render.parse_maze_text(block, maze_name))
            if puzzles[-1].size != seq_len:
                side, model = math.isqrt(puzzles[-1].size), math.isqrt(seq_len)
                raise ConfigError(f"{maze_name}: {side}x{side}, but {cfg.checkpoint} solves {model}x{model} mazes")
    if not puzzles:
        raise ConfigError(f"{where}: holds no puzzle")
    return np.stack(puzzles).astype(np.uint8), None, list(range(len(puzzles)))


def maze_blocks(content: str) -> list[tuple[int, str]]:
    """(first line number, text) of each maze in a file, mazes being separated by blank lines."""
    blocks, first, rows = [], None, []
    for number, line in enumerate(content.replace("\r", "").split("\n") + [""], start=1):
        if line.strip():
            first = first or number
            rows.append(line)
        elif rows:
            blocks.append((first, "\n".join(rows)))
            first, rows = None, []
    return blocks


# ----------------------------------------------------------------------------- answers out

def side_by_side(left: str, right: str, gap: int = 6) -> str:
    a, b = left.splitlines(), right.splitlines()
    width = max(len(line) for line in a)
    return "\n".join(x.ljust(width + gap) + y for x, y in zip(a, b))


def describe(task: str, found: dict, spec: GridSpec, rule: str) -> list[str]:
    """The printed report of one answer: given and answer side by side, validity, steps, the picked trajectory."""
    inputs, answer, label, problem = found["inputs"], found["answer"], found["label"], found["problem"]
    text = render.TEXT[task]
    what = "a valid completion (rows, columns and boxes hold 1-9; every given kept)" if task == "sudoku" \
        else "the unique shortest S->G path"
    d, b = spec.max_depth, spec.max_breadth
    halt = found["halt_step"]
    lines = [side_by_side("given:\n" + text(inputs), "answer:\n" + text(answer)),
             f"valid: {'yes' if problem is None else 'no'}: " + (what if problem is None else problem),
             f"steps: {d} supervision steps run ({d * spec.blocks_per_step} block applications per trajectory); "
             f"the answer last changed at step {found['settled_step']}; "
             + (f"the halting head (q > {spec.halt_threshold}) stops at step {halt}" if halt else
                f"the halting head (q > {spec.halt_threshold}) does not stop within {d} steps"),
             "picked: " + (f"trajectory {found['trajectory'] + 1} of {b}, {rule}" if b > 1 else "one trajectory (B=1)")]
    if label is not None:
        labelled = label != 0  # 0: the ignore label on disk
        wrong = int((labelled & (label != answer)).sum())
        lines.append("label: " + ("matches" if wrong == 0 else f"differs in {wrong} of {int(labelled.sum())} cells"))
    return lines


# ----------------------------------------------------------------------------- the run

def image_paths(cfg: SolveConfig, count: int) -> list[str]:
    """Where each answer's picture goes; an existing file there is refused before the model runs."""
    if not cfg.image:
        return []
    paths = [cfg.image] if count == 1 else [f"{cfg.image[:-4]}_{n + 1}.png" for n in range(count)]
    taken = next((path for path in paths if os.path.exists(path)), None)
    if taken:
        raise ConfigError(f"image: {taken} exists; solve.py does not overwrite a file (choose another image= path, "
                          f"or image=null)")
    check_writable(os.path.dirname(os.path.abspath(cfg.image)), "image")
    return paths


def solve(cfg: SolveConfig, device: torch.device) -> int:
    """Answer every puzzle, printing each batch's answers as it finishes; returns how many were answered."""
    head, info = load_model(cfg.checkpoint, cfg.trust_checkpoint, cfg.forward_dtype, device, 1)
    config = head.model.config
    task = render.task_of(config.vocab_size, config.seq_len)
    if task is None:
        raise ConfigError(f"checkpoint: {cfg.checkpoint} is neither a Sudoku nor a maze model "
                          f"(vocab_size {config.vocab_size}, seq_len {config.seq_len})")
    inputs, labels, numbers = read_puzzles(cfg, task, config.seq_len)
    if inputs.shape[1] != config.seq_len:
        raise ConfigError(f"data_path: {cfg.data_path} holds puzzles of {inputs.shape[1]} cells, "
                          f"the checkpoint's model {config.seq_len}")
    images = image_paths(cfg, len(inputs))
    inner = head.model.inner.to(device).eval()
    spec = GridSpec(depths=(cfg.halt_max_steps or config.halt_max_steps,), breadths=(cfg.different_init,),
                    blocks_per_step=config.blocks_per_step, window=cfg.convergence_window, halt=True,
                    halt_threshold=float(cfg.halt_threshold),
                    fresh_init_std=fresh_init_std(config, cfg.different_init_reset_std))
    rule = "top-1 by convergence" if spec.headline_rule(spec.max_depth, spec.max_breadth) == "conv_top1" else \
        "trajectory 1 (convergence needs D >= 2)"
    seed = cfg.seed if cfg.seed is not None else int(train_setting(info["train_config"], "seed") or 0)
    breadth, count = spec.max_breadth, len(inputs)

    bar = tqdm(total=count, unit="puzzle", desc=f"solve D{spec.max_depth} B{breadth}", disable=count == 1,
               file=sys.stderr, dynamic_ncols=True)
    for start in range(0, count, CHUNK):
        x = torch.as_tensor(inputs[start:start + CHUNK], dtype=torch.int32, device=device)
        index = torch.as_tensor(numbers[start:start + CHUNK], dtype=torch.long, device=device)
        batch = {"inputs": x, "labels": torch.full_like(x, IGNORE_LABEL_ID), "index": index,
                 "mask": torch.ones(len(x), dtype=torch.bool, device=device)}
        found = run_batch(inner, batch, spec, KeyedSampler(seed, *row_keys(spec, index)))[3]
        for row in range(len(x)):
            n = start + row
            result = {"inputs": inputs[n].astype(np.int64), "label": None if labels is None else labels[n],
                      "answer": found["answer"][row].cpu().numpy(),
                      **{k: int(found[k][row]) for k in ("trajectory", "settled_step", "halt_step")}}
            result["problem"] = render.PROBLEM[task](result["inputs"], result["answer"])
            source = f"{cfg.data_path}/{cfg.split} #{numbers[n]}" if cfg.data_path else f"puzzle {n + 1} of {count}"
            lines = [f"{source}: {info['uri']} at D={spec.max_depth}, B={breadth}", *describe(task, result, spec, rule)]
            if images:
                render.save_puzzle_png(images[n], task, result["inputs"], result["answer"], result["label"],
                                       title=f"{os.path.basename(info['uri'])}, D={spec.max_depth} B={breadth}: "
                                             + ("valid" if result["problem"] is None else "not valid"))
                lines.append(f"picture: {images[n]}")
            bar.write("\n".join(lines) + "\n", file=sys.stdout)
        bar.update(len(x))
    bar.close()
    return count


def main(argv: list[str] | None = None) -> int:
    return run_entry(argv, lambda args: __doc__, compose, lambda cfg, p: solve(cfg, p.device))


if __name__ == "__main__":
    exit_process(main())
