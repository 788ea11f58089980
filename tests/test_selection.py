"""Selection rules (evaluation/selection.py) against brute-force versions on small random cases."""
import itertools
import math
import random

import pytest
import torch

from evaluation import selection


def brute_majority(boards: list[tuple]) -> int:
    """Index of the first trajectory holding the most frequent board; ties: the board seen first."""
    counts, first_seen = {}, {}
    for i, board in enumerate(boards):
        counts[board] = counts.get(board, 0) + 1
        first_seen.setdefault(board, i)
    best = max(counts.values())
    return min(first_seen[b] for b, c in counts.items() if c == best)


def brute_pass_at_k(n: int, k: int, c: int) -> float:
    """Probability that a random k-subset of n samples (c right) holds a right one, by enumeration."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("seed", range(5))
def test_majority_vote_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    L, Bm, S = 7, 9, 3
    # few distinct boards, so that votes and ties happen
    palette = torch.randint(0, 3, (4, S), generator=g)
    preds = palette[torch.randint(0, 4 if seed % 2 else 3, (L, Bm), generator=g)]
    breadths = [1, 2, 3, 5, 8, 9]
    winners = selection.majority_vote(preds, breadths)
    assert winners.shape == (L, len(breadths))
    for l in range(L):
        for b, breadth in enumerate(breadths):
            boards = [tuple(preds[l, j].tolist()) for j in range(breadth)]
            assert winners[l, b].item() == brute_majority(boards), (l, breadth)


def test_majority_vote_tie_goes_to_the_answer_seen_first():
    a, b, c = [1, 1], [2, 2], [3, 3]
    preds = torch.tensor([[b, a, a, b, c], [c, a, b, a, b]])
    # row 0: a and b both twice -> b (seen first); row 1: a and b twice -> a (seen at 1, b at 2)
    assert selection.majority_vote(preds, [4, 5]).tolist() == [[0, 0], [1, 1]]


def test_board_ids_are_exact():
    preds = torch.tensor([[[1, 2, 3], [1, 2, 3], [3, 2, 1]], [[3, 2, 1], [0, 0, 0], [3, 2, 1]]])
    ids = selection.board_ids(preds)
    for i, j in itertools.product(range(6), repeat=2):
        same = torch.equal(preds.view(6, 3)[i], preds.view(6, 3)[j])
        assert (ids.view(6)[i] == ids.view(6)[j]).item() == same


@pytest.mark.parametrize("seed", range(3))
def test_convergence_order_picks_the_lowest_scores(seed):
    g = torch.Generator().manual_seed(seed)
    L, Bm = 6, 8
    scores = torch.randint(0, 5, (L, Bm), generator=g).float()  # integer scores: plenty of ties
    breadths, k = [1, 2, 5, 8], 3
    order = selection.convergence_order(scores, breadths, k)
    for l in range(L):
        for b, breadth in enumerate(breadths):
            expected = sorted(range(breadth), key=lambda j: (scores[l, j].item(), j))[:k]
            assert order[l, b, :min(k, breadth)].tolist() == expected


def test_convergence_order_top1_is_the_minimum():
    scores = torch.tensor([[0.3, 0.1, 0.2, 0.05], [0.9, 0.8, 0.7, 0.6]])
    order = selection.convergence_order(scores, [1, 2, 3, 4], 1)[..., 0]
    assert order.tolist() == [[0, 1, 1, 3], [0, 1, 2, 3]]


def test_prefix_sums():
    values = torch.tensor([[1, 0, 1, 1], [0, 0, 1, 0]], dtype=torch.bool)
    assert selection.prefix_sums(values, [1, 2, 4]).tolist() == [[1, 1, 3], [0, 0, 1]]


def test_pass_at_k_matches_enumeration():
    for n in range(1, 8):
        for k in range(1, n + 1):
            for c in range(n + 1):
                assert math.isclose(selection.pass_at_k(n, k, c), brute_pass_at_k(n, k, c), abs_tol=1e-12)
    with pytest.raises(ValueError):
        selection.pass_at_k(3, 4, 1)


def test_pass_at_k_from_histogram_is_the_mean_over_puzzles():
    rng = random.Random(0)
    n, correct = 6, [rng.randint(0, 6) for _ in range(40)]
    histogram = [correct.count(c) for c in range(n + 1)]
    for k in (1, 2, 4, 6):
        mean = sum(selection.pass_at_k(n, k, c) for c in correct) / len(correct)
        assert math.isclose(selection.pass_at_k_from_histogram(histogram, n, k), mean)
    assert selection.pass_at_k_from_histogram(histogram, n, n) == sum(c > 0 for c in correct) / len(correct)


def test_pass_ks():
    assert selection.pass_ks(1) == [1]
    assert selection.pass_ks(8) == [1, 2, 4, 8]
    assert selection.pass_ks(6) == [1, 2, 4, 6]
