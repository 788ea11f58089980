"""Mazes on an n x n grid: carving, breadth-first search with shortest-path counting, token encoding
and the label check. Plain Python on flat cell lists (index = row * n + col), which for grids of a few
hundred open cells is faster than numpy's per-call overhead.

Tokens (as the reference builder): 0 pad, 1 '#' wall, 2 ' ' open, 3 'S' start, 4 'G' goal,
5 'o' a path cell strictly between S and G (only in labels).
"""
import random
from collections import deque

import numpy as np

CHARSET = "# SGo"
WALL, OPEN, START, GOAL, PATH = 1, 2, 3, 4, 5
VOCAB_SIZE = len(CHARSET) + 1


def carve_perfect_maze(side: int, rng: random.Random) -> list[bool]:
    """A perfect maze (exactly one path between any two open cells) on an odd side x side grid, as
    a flat open/closed list. Rooms sit at odd coordinates; a randomised depth-first search knocks
    out the wall between a room and an unvisited neighbour room. The outer border stays wall."""
    if side < 3 or side % 2 == 0:
        raise ValueError(f"a perfect maze needs an odd side >= 3, got {side}")
    rooms = (side - 1) // 2
    open_cells = [False] * (side * side)
    visited = [False] * (rooms * rooms)
    first = rng.randrange(rooms * rooms)
    visited[first] = True
    stack = [first]
    open_cells[(2 * (first // rooms) + 1) * side + 2 * (first % rooms) + 1] = True
    while stack:
        room = stack[-1]
        r, c = divmod(room, rooms)
        choices = []
        if r > 0 and not visited[room - rooms]:
            choices.append(room - rooms)
        if r < rooms - 1 and not visited[room + rooms]:
            choices.append(room + rooms)
        if c > 0 and not visited[room - 1]:
            choices.append(room - 1)
        if c < rooms - 1 and not visited[room + 1]:
            choices.append(room + 1)
        if not choices:
            stack.pop()
            continue
        nxt = choices[rng.randrange(len(choices))] if len(choices) > 1 else choices[0]
        visited[nxt] = True
        nr, nc = divmod(nxt, rooms)
        open_cells[(r + nr + 1) * side + (c + nc + 1)] = True  # the wall between the two rooms
        open_cells[(2 * nr + 1) * side + 2 * nc + 1] = True
        stack.append(nxt)
    return open_cells


def embed(open_cells: list[bool], side: int, n: int) -> list[bool]:
    """Places a side x side grid in the top-left corner of an n x n grid; the rest is wall."""
    if side == n:
        return open_cells
    out = [False] * (n * n)
    for r in range(side):
        out[r * n:r * n + side] = open_cells[r * side:(r + 1) * side]
    return out


def neighbours(n: int) -> list[list[int]]:
    """4-neighbourhood of every cell of an n x n grid."""
    result = []
    for i in range(n * n):
        r, c = divmod(i, n)
        result.append([j for j, ok in ((i - n, r > 0), (i + n, r < n - 1), (i - 1, c > 0), (i + 1, c < n - 1)) if ok])
    return result


def bfs(open_cells: list[bool], adjacency: list[list[int]], start: int) -> tuple[list[int], list[int], list[int]]:
    """Distances from start over open cells (-1 unreachable), the number of distinct shortest paths
    to each cell capped at 2, and one parent on a shortest path (-1 for start/unreachable)."""
    size = len(open_cells)
    dist, count, parent = [-1] * size, [0] * size, [-1] * size
    dist[start], count[start] = 0, 1
    queue = deque([start])
    while queue:
        u = queue.popleft()
        du, cu = dist[u] + 1, count[u]
        for v in adjacency[u]:
            if not open_cells[v]:
                continue
            if dist[v] < 0:
                dist[v], count[v], parent[v] = du, cu, u
                queue.append(v)
            elif dist[v] == du:
                count[v] = min(2, count[v] + cu)
    return dist, count, parent


def path_to(parent: list[int], goal: int) -> list[int]:
    path = [goal]
    while parent[path[-1]] >= 0:
        path.append(parent[path[-1]])
    return path[::-1]


def to_tokens(open_cells: list[bool], start: int, goal: int, path: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Input and label token rows: walls, open cells, S and G; the label also marks the path with 'o'."""
    inputs = np.where(np.array(open_cells), OPEN, WALL).astype(np.uint8)
    inputs[start], inputs[goal] = START, GOAL
    labels = inputs.copy()
    labels[path[1:-1]] = PATH
    return inputs, labels


def label_problem(inputs: np.ndarray, labels: np.ndarray, n: int, adjacency: list[list[int]] | None = None) -> str | None:
    """Why `labels` is not the unique shortest S->G path of the maze `inputs` (flat token rows), or None."""
    if not np.isin(inputs, (WALL, OPEN, START, GOAL)).all():
        return "input holds a token other than wall, open, S, G"
    starts, goals = np.flatnonzero(inputs == START), np.flatnonzero(inputs == GOAL)
    if starts.size != 1 or goals.size != 1:
        return f"input must have one S and one G, found {starts.size} and {goals.size}"
    marked = labels == PATH
    if not np.array_equal(np.where(marked, OPEN, labels), inputs):
        return "label differs from the input other than by marking open cells 'o'"
    open_cells = (inputs != WALL).tolist()
    dist, count, parent = bfs(open_cells, adjacency or neighbours(n), int(starts[0]))
    goal = int(goals[0])
    if dist[goal] < 0:
        return "G is not reachable from S"
    if count[goal] != 1:
        return "the shortest S->G path is not unique"
    expected = np.zeros_like(marked)
    expected[path_to(parent, goal)[1:-1]] = True
    if not np.array_equal(expected, marked):
        return "the cells marked 'o' are not the shortest S->G path"
    return None
