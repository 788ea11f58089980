"""Randomness keyed by (seed, puzzle, trajectory), so an answer does not depend on how puzzles are batched.

Every draw of row r is a pure function of (seed, puzzle index i, trajectory j, how many draws row r
made before, element position). The bits come from splitmix64 (Steele et al. 2014): a row's stream
starts at a 64-bit state mixed from its key and call counter, element e reads mix64(state + (e+1)*gamma).
All of it runs as int64 tensor ops (multiplication wraps modulo 2^64), vectorised over rows and
elements. 23 random bits give a uniform strictly inside (-1, 1), and the inverse error function turns
it into a normal; the truncated normal of the initial state uses the same transform as
models.layers.trunc_normal_.

Cost: about 15 elementwise passes over each noise tensor (see docs/evaluation.md for measurements);
`rng=torch` in evaluate.py uses torch's generator instead.
"""
import math

import torch

from models.layers import trunc_normal_params

GAMMA = 0x9E3779B97F4A7C15 - (1 << 64)  # splitmix64 increment, as a signed int64
MUL1 = 0xBF58476D1CE4E5B9 - (1 << 64)
MUL2 = 0x94D049BB133111EB - (1 << 64)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic: it copies the sign bit)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix64(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser, a bijection on 64-bit words. Mixes `z` in place (fewer passes over memory)."""
    for bits, multiplier in ((30, MUL1), (27, MUL2)):
        z ^= _shift_right(z, bits)
        z *= multiplier
    z ^= _shift_right(z, 31)
    return z


def absorb(key: torch.Tensor, value) -> torch.Tensor:
    """Fold an integer (tensor or Python int) into a 64-bit key."""
    return mix64(key ^ mix64(torch.as_tensor(value, dtype=torch.int64, device=key.device) + GAMMA))  # fresh tensors


def uniform_open(bits: torch.Tensor) -> torch.Tensor:
    """Top 23 bits of each word -> float32 uniform on the open interval (-1, 1), every value exact."""
    return _shift_right(bits, 41).float().mul_(2.0**-22).add_(2.0**-23 - 1)  # (2k + 1) / 2^23 - 1


def trajectory_keys(index: torch.Tensor, breadth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Puzzle index and trajectory number of each row when every puzzle of `index` runs `breadth` trajectories
    in consecutive rows (row r: puzzle r // breadth, trajectory r % breadth)."""
    return index.repeat_interleave(breadth), torch.arange(breadth, device=index.device).repeat(index.shape[0])


class KeyedSampler:
    """The model's randomness (`noise`, `initial_state`) keyed per row of the current batch.

    `puzzle` and `trajectory` give the global puzzle index i and the trajectory number j of each
    row; the same (seed, i, j) gets the same draws whatever else is in the batch.
    """

    def __init__(self, seed: int, puzzle: torch.Tensor, trajectory: torch.Tensor):
        self.seed = seed
        self.keys = self._keys(puzzle, trajectory)
        self.calls = torch.zeros_like(self.keys)  # draws made so far, per row
        self._offsets = {}

    def _keys(self, puzzle: torch.Tensor, trajectory: torch.Tensor) -> torch.Tensor:
        base = mix64(torch.full_like(puzzle, self.seed, dtype=torch.int64))
        return absorb(absorb(base, puzzle.long()), trajectory.long())

    def rekey(self, rows: torch.Tensor, puzzle: torch.Tensor, trajectory: torch.Tensor) -> None:
        """Give batch rows `rows` to new trajectories: from now on they draw as (seed, puzzle, trajectory)
        from its first draw (the elastic evaluator refills a slot this way)."""
        self.keys[rows] = self._keys(puzzle, trajectory)
        self.calls[rows] = 0

    def _bits(self, rows: torch.Tensor | None, numel: int) -> torch.Tensor:
        keys, calls = (self.keys, self.calls) if rows is None else (self.keys[rows], self.calls[rows])
        state = absorb(keys, calls)
        if rows is None:
            self.calls += 1
        else:
            self.calls[rows] += 1
        offsets = self._offsets.get(numel)
        if offsets is None:
            offsets = torch.arange(1, numel + 1, dtype=torch.int64, device=keys.device) * GAMMA
            self._offsets[numel] = offsets
        return mix64(state[:, None] + offsets[None, :])

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like `like` (one row per batch row), in its dtype."""
        if like.shape[0] != self.keys.shape[0]:
            raise ValueError(f"noise for {like.shape[0]} rows, but the sampler holds keys for {self.keys.shape[0]}")
        u = uniform_open(self._bits(None, like[0].numel()))
        return u.erfinv_().mul_(math.sqrt(2)).to(like.dtype).view_as(like)

    def initial_state(self, rows: torch.Tensor, shape: tuple, dtype: torch.dtype, device, std: float,
                      bound: float = 2.0) -> torch.Tensor:
        """Normal truncated at +-bound sigma, rescaled to have std `std` (as models.layers.trunc_normal_)."""
        numel = math.prod(shape)
        if std == 0:
            return torch.zeros((len(rows), *shape), dtype=dtype, device=device)
        u = uniform_open(self._bits(rows, numel))
        lo, hi, scale = trunc_normal_params(std, bound)
        x = u.add_(1).mul_((hi - lo) / 2).add_(lo).erfinv_().mul_(math.sqrt(2) * scale)
        x = x.clamp_(-bound * scale, bound * scale)
        return x.to(dtype).view(len(rows), *shape).to(device)
