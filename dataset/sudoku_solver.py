"""Exact 9x9 Sudoku solver: bitmask constraint propagation (naked and hidden singles) plus
depth-first search on the cell with the fewest candidates. Plain Python.

A board is 81 ints in row-major order, 0 for blank and 1..9 for digits (a list, tuple or numpy array).
`solve_count` counts solutions up to a limit (2 is enough to tell unique from ambiguous) and reports
the search effort: the number of guesses made, 0 when propagation alone solves the puzzle. That
count is the difficulty rating used by the generator and `--min-difficulty`.
"""
import random
from dataclasses import dataclass

ALL_DIGITS = 0x1FF  # bit d-1 stands for digit d
ROW = [i // 9 for i in range(81)]
COL = [i % 9 for i in range(81)]
BOX = [(i // 27) * 3 + (i % 9) // 3 for i in range(81)]
# Units as (offset of its "used digits" mask in the state, its cells); see _State layout below.
UNITS = ([(81 + r, [r * 9 + c for c in range(9)]) for r in range(9)]
         + [(90 + c, [r * 9 + c for r in range(9)]) for c in range(9)]
         + [(99 + b, [i for i in range(81) if BOX[i] == b]) for b in range(9)])
BIT_TO_DIGIT = {1 << d: d + 1 for d in range(9)}
POPCOUNT = [bin(m).count("1") for m in range(512)]


@dataclass
class SolveResult:
    count: int                  # number of solutions found, at most the limit asked for
    solution: list[int] | None  # the first solution found
    effort: int                 # guesses made by the search (0: solved by propagation alone)


class _Search:
    """One search. The state is a flat list: 81 cells, then used-digit masks of 9 rows, 9 cols, 9 boxes."""

    def __init__(self, limit: int, allowed: list[int], rng: random.Random | None):
        self.limit, self.allowed, self.rng = limit, allowed, rng
        self.count, self.solution, self.effort = 0, None, 0

    def run(self, state: list[int]) -> None:
        allowed = self.allowed
        while True:
            empties = [i for i in range(81) if state[i] == 0]
            if not empties:
                self.count += 1
                if self.solution is None:
                    self.solution = state[:81]
                return
            # Naked singles: a cell with one candidate takes it.
            progress = False
            cands = [0] * 81
            best, best_n = -1, 10
            for i in empties:
                r, c, b = 81 + ROW[i], 90 + COL[i], 99 + BOX[i]
                m = ~(state[r] | state[c] | state[b]) & allowed[i]
                if m == 0:
                    return
                if m & (m - 1) == 0:
                    state[i] = BIT_TO_DIGIT[m]
                    state[r] |= m
                    state[c] |= m
                    state[b] |= m
                    progress = True
                else:
                    cands[i] = m
                    n = POPCOUNT[m]
                    if n < best_n:
                        best, best_n = i, n
            if progress:
                continue
            # Hidden singles: a digit with one possible cell in a unit goes there.
            for used_at, cells in UNITS:
                missing = ALL_DIGITS & ~state[used_at]
                if not missing:
                    continue
                once = twice = 0
                for i in cells:
                    m = cands[i]
                    twice |= once & m
                    once |= m
                if missing & ~once:
                    return  # some digit has nowhere to go in this unit
                single = once & ~twice
                while single:
                    bit = single & -single
                    single ^= bit
                    i = next(i for i in cells if cands[i] & bit)
                    if state[i] == BIT_TO_DIGIT[bit]:
                        continue  # already placed as a hidden single of another unit
                    r, c, b = 81 + ROW[i], 90 + COL[i], 99 + BOX[i]
                    if state[i] or (state[r] | state[c] | state[b]) & bit:
                        return  # two forced placements collide
                    state[i] = BIT_TO_DIGIT[bit]
                    state[r] |= bit
                    state[c] |= bit
                    state[b] |= bit
                    progress = True
            if progress:
                continue
            # Guess on the cell with the fewest candidates.
            m = cands[best]
            bits = []
            while m:
                bit = m & -m
                m ^= bit
                bits.append(bit)
            if self.rng is not None:
                self.rng.shuffle(bits)
            r, c, b = 81 + ROW[best], 90 + COL[best], 99 + BOX[best]
            for bit in bits:
                self.effort += 1
                child = state[:]
                child[best] = BIT_TO_DIGIT[bit]
                child[r] |= bit
                child[c] |= bit
                child[b] |= bit
                self.run(child)
                if self.count >= self.limit:
                    return
            return


def _initial_state(board) -> list[int] | None:
    """The search state for a board, or None when its givens already break a rule."""
    cells = [int(v) for v in board]
    if len(cells) != 81 or any(v < 0 or v > 9 for v in cells):
        raise ValueError("a board is 81 values in 0..9")
    state = cells + [0] * 27
    for i, v in enumerate(cells):
        if v:
            bit = 1 << (v - 1)
            r, c, b = 81 + ROW[i], 90 + COL[i], 99 + BOX[i]
            if (state[r] | state[c] | state[b]) & bit:
                return None
            state[r] |= bit
            state[c] |= bit
            state[b] |= bit
    return state


def givens_consistent(board) -> bool:
    """True when no digit repeats in a row, column or box among the givens."""
    return _initial_state(board) is not None


def solve_count(board, limit: int = 2, forbid: tuple[int, int] | None = None, rng: random.Random | None = None) -> SolveResult:
    """Counts solutions of `board` up to `limit`. `forbid=(cell, digit)` excludes that digit from that
    cell (used to ask "is there a solution other than the known one?"). `rng` randomises the order in
    which guesses are tried (used to draw random full grids)."""
    state = _initial_state(board)
    if state is None:
        return SolveResult(0, None, 0)
    allowed = [ALL_DIGITS] * 81
    if forbid is not None:
        allowed[forbid[0]] &= ~(1 << (forbid[1] - 1))
    search = _Search(limit, allowed, rng)
    search.run(state)
    return SolveResult(search.count, search.solution, search.effort)


def solve(board) -> list[int] | None:
    """One solution of `board`, or None when it has none."""
    return solve_count(board, limit=1).solution


def random_full_grid(rng: random.Random) -> list[int]:
    return solve_count([0] * 81, limit=1, rng=rng).solution
