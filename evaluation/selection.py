"""Selection rules over B trajectories per puzzle, evaluated for every breadth of a grid at once.

Every function takes tensors with a leading puzzle axis [L, ...] and the grid's `breadths`
(cell B uses trajectories 0..B-1, the first B of the largest breadth) and returns one
column per breadth. No Python loop over puzzles or trajectories.
"""
import math

import torch


def _breadth_mask(breadths: list[int], max_breadth: int, device) -> torch.Tensor:
    """[nB, Bm]: True where trajectory b is among the first B."""
    return torch.arange(max_breadth, device=device)[None, :] < torch.tensor(breadths, device=device)[:, None]


def prefix_sums(values: torch.Tensor, breadths: list[int]) -> torch.Tensor:
    """values [L, Bm] -> [L, nB]: the sum over the first B trajectories, per breadth."""
    last = torch.tensor(breadths, device=values.device) - 1
    return values.long().cumsum(1)[:, last]


def convergence_order(scores: torch.Tensor, breadths: list[int], top_k: int) -> torch.Tensor:
    """scores [L, Bm] -> [L, nB, K] indices of the K lowest-scoring trajectories among the first B.

    Ties go to the lower trajectory number (stable sort). K = min(top_k, Bm); for B < K the
    entries past B point at trajectories outside the cell, so callers must ignore k >= B.
    """
    L, Bm = scores.shape
    inside = _breadth_mask(breadths, Bm, scores.device)  # [nB, Bm]
    masked = torch.where(inside[None], scores.float()[:, None, :], torch.inf)  # [L, nB, Bm]
    return torch.sort(masked, dim=-1, stable=True).indices[..., :min(top_k, Bm)]


def board_ids(preds: torch.Tensor) -> torch.Tensor:
    """preds [L, Bm, S] -> [L, Bm] int64 ids, equal exactly when two predicted boards are equal."""
    L, Bm, S = preds.shape
    _, ids = torch.unique(preds.reshape(L * Bm, S), dim=0, return_inverse=True)
    return ids.view(L, Bm)


def majority_vote(preds: torch.Tensor, breadths: list[int]) -> torch.Tensor:
    """preds [L, Bm, S] -> [L, nB]: for each breadth, a trajectory holding the most frequent answer
    among the first B; on a tie the answer seen first (lowest trajectory number) wins."""
    ids = board_ids(preds)
    L, Bm = ids.shape
    same = ids[:, :, None] == ids[:, None, :]  # [L, b, b']
    votes_upto = same.long().cumsum(-1)  # [l, b, m]: trajectories b' <= m that agree with b
    last = torch.tensor(breadths, device=ids.device) - 1
    votes = votes_upto[:, :, last]  # [L, Bm, nB]: votes for b's answer among the first B
    inside = _breadth_mask(breadths, Bm, ids.device).T  # [Bm, nB]
    votes = torch.where(inside[None], votes, -1)
    # argmax returns the first maximum: the earliest trajectory with the winning answer, so among
    # tied answers the one seen first wins.
    return votes.argmax(1)


def pass_at_k(n: int, k: int, c: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): chance that k of n samples, c of them right, hold a right one."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_at_k_from_histogram(histogram: list[int], n: int, k: int) -> float:
    """Mean pass@k over puzzles, from histogram[c] = number of puzzles with c right out of n."""
    total = sum(histogram[:n + 1])
    if total == 0:
        return float("nan")
    return sum(count * pass_at_k(n, k, c) for c, count in enumerate(histogram[:n + 1]) if count) / total


def pass_ks(breadth: int) -> list[int]:
    """The k reported for a breadth: powers of two up to B, and B itself."""
    ks = [1 << i for i in range(breadth.bit_length()) if (1 << i) <= breadth]
    return ks if ks[-1] == breadth else ks + [breadth]
