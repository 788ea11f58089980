"""The depth x breadth grid in one pass, as integer counts that add up across batches and ranks.

One pass runs Bm = max(breadths) trajectories per puzzle for Dm = max(depths) supervision steps.
Cell (D, B) reads the first B trajectories after their first D steps; with keyed randomness
(evaluation/keyed_rng.py) that is exactly what a separate run of the cell would compute.

Memory does not grow with D: per row we keep the latents, the previous step's logits, the last
`window` change norms and, with halting, the answer and step at which the row halted.

Counts (int64) per depth, breadth and rule: FIELDS below. pass@k comes from a histogram of
"c of the first B trajectories right" per (D, B), so every reported number is an exact function of
integers that are summed over batches and ranks: results do not depend on sharding.
"""
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass

import torch

from evaluation import selection
from utils.files import atomic_save
from models.eqr import ConfigError
from models.losses import IGNORE_LABEL_ID

FIELDS = ("correct", "total", "token_correct", "token_total", "nfe")


@dataclass(frozen=True)
class GridSpec:
    depths: tuple[int, ...]
    breadths: tuple[int, ...]
    blocks_per_step: int
    top_k: int = 1  # cumulative top-k-by-convergence curve up to k = min(top_k, B)
    window: int = 3  # convergence score: mean change norm over the last `window` steps
    halt: bool = False  # also report answers that stop at the first step with q > halt_threshold
    halt_threshold: float = 0.0

    def __post_init__(self):
        for key in ("depths", "breadths"):
            values = getattr(self, key)
            if not values or any(not isinstance(v, int) or v < 1 for v in values) or list(values) != sorted(set(values)):
                raise ConfigError(f"{key}: expected increasing positive integers, got {list(values)}")
        for key in ("top_k", "window", "blocks_per_step"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ConfigError(f"{key}: expected a positive integer, got {getattr(self, key)!r}")

    @property
    def max_depth(self) -> int:
        return self.depths[-1]

    @property
    def max_breadth(self) -> int:
        return self.breadths[-1]

    @property
    def conv_k(self) -> int:
        return min(self.top_k, self.max_breadth)

    @property
    def rules(self) -> list[str]:
        rules = ["traj1", "all_traj", *[f"conv_top{k}" for k in range(1, self.conv_k + 1)], "majority"]
        return rules + (["traj1+halt", "all_traj+halt", "majority+halt"] if self.halt else [])

    @property
    def cell_shape(self) -> tuple[int, ...]:
        return len(self.depths), len(self.breadths), len(self.rules), len(FIELDS)

    @property
    def hist_shape(self) -> tuple[int, ...]:
        return len(self.depths), len(self.breadths), 2 if self.halt else 1, self.max_breadth + 1

    @property
    def size(self) -> int:
        return torch.Size(self.cell_shape).numel() + torch.Size(self.hist_shape).numel()

    def split(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = torch.Size(self.cell_shape).numel()
        return flat[:n].view(self.cell_shape), flat[n:].view(self.hist_shape)

    def reported(self, depth: int, breadth: int, rule: str) -> bool:
        """Whether a rule means something at (D, B): convergence needs D >= 2 and k <= B > 1; votes need B > 1."""
        base = rule.removesuffix("+halt")
        if base.startswith("conv_top"):
            return depth >= 2 and breadth > 1 and int(base[len("conv_top"):]) <= breadth
        if base == "majority":
            return breadth > 1
        return True

    def to_dict(self) -> dict:
        return asdict(self)


def memory_lower_bound(config, rows: int) -> int:
    """Bytes one process needs at least to run `rows` trajectories: the latents (z_H, z_L) and the next
    step's, and the current and previous logits in float32. Activations come on top, so a run that
    fails this cannot fit; one that passes may still not."""
    latents = 4 * config.seq_len * config.hidden_size * config.dtype.itemsize
    logits = 2 * config.seq_len * config.vocab_size * 4
    return rows * (latents + logits)


# ----------------------------------------------------------------------------- tallies of one depth

def _answer_counts(breadths, real, n_labels, exact, tokens, preds, steps, blocks_per_step):
    """Counts of trajectory 1, all trajectories and the majority vote -> ([nB, 3, 5], spent NFE [nB], hist).

    real, n_labels [L]; exact, tokens, steps [L, Bm]; preds [L, Bm, S]. NFE counts every block
    application of the trajectories a rule looks at (trajectory 1 alone; the first B otherwise).
    """
    nB = len(breadths)
    B = torch.tensor(breadths, device=real.device)
    rm = real.long()
    puzzles, label_total = rm.sum(), (n_labels.long() * rm).sum()
    exact, tokens, nfe = exact.long(), tokens.long(), steps.long() * blocks_per_step

    def over_puzzles(x):  # [L, ...] -> [...]: sum over the real puzzles
        return (x * rm.view(-1, *[1] * (x.dim() - 1))).sum(0)

    first = torch.stack([over_puzzles(exact[:, 0]), puzzles, over_puzzles(tokens[:, 0]), label_total,
                         over_puzzles(nfe[:, 0])]).expand(nB, 5)
    right = selection.prefix_sums(exact, breadths)  # [L, nB]
    spent = over_puzzles(selection.prefix_sums(nfe, breadths))  # [nB]
    every = torch.stack([over_puzzles(right), puzzles * B, over_puzzles(selection.prefix_sums(tokens, breadths)),
                         label_total * B, spent], -1)
    winner = selection.majority_vote(preds, breadths)  # [L, nB]
    vote = torch.stack([over_puzzles(exact.gather(1, winner)), puzzles.expand(nB), over_puzzles(tokens.gather(1, winner)),
                        label_total.expand(nB), spent], -1)
    hist = torch.zeros(nB, breadths[-1] + 1, dtype=torch.long, device=real.device)
    hist.scatter_add_(1, right.T, rm.expand(nB, -1))
    return torch.stack([first, every, vote], 1), spent, hist


def _convergence_counts(breadths, top_k, real, n_labels, exact, tokens, scores, spent):
    """Cumulative top-k-by-convergence counts -> [nB, K, 5] (k = 1..K; total grows with k)."""
    L, nB = real.shape[0], len(breadths)
    order = selection.convergence_order(scores, breadths, top_k)  # [L, nB, K]
    K = order.shape[-1]
    picked = order.reshape(L, -1)
    right = exact.long().gather(1, picked).view(L, nB, K).cumsum(-1)
    toks = tokens.long().gather(1, picked).view(L, nB, K).cumsum(-1)
    rm = real.long().view(L, 1, 1)
    k = torch.arange(1, K + 1, device=real.device).expand(nB, K)
    puzzles, label_total = real.long().sum(), (n_labels.long() * real).sum()
    return torch.stack([(right * rm).sum(0), puzzles * k, (toks * rm).sum(0), label_total * k,
                        spent[:, None].expand(nB, K)], -1)


# ----------------------------------------------------------------------------- the pass

@torch.inference_mode()
def run_batch(inner, batch: dict, spec: GridSpec, sampler,
              answers_out: dict | None = None) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Every cell of the grid on one batch -> (cell counts, histograms, seconds to reach each depth).

    inner: the ReasoningCore; batch: inputs, labels [L, S], mask [L] on its device; sampler: the
    model's randomness for the L * Bm rows (row r = puzzle r // Bm, trajectory r % Bm).
    answers_out: when a dict is given, it receives each puzzle's answer at the largest cell (D, B) under the
    paper's rule (top-1 by convergence at B > 1 and D >= 2, else trajectory 1): "preds" [L, S], the
    picked "trajectory" [L], "settled_step" [L] (the step after which its prediction no longer changed)
    and, with spec.halt, "halt_step" [L] (its first step with q > halt_threshold; 0: none).
    """
    start = time.perf_counter()
    config, device = inner.config, batch["inputs"].device
    Bm, L = spec.max_breadth, batch["inputs"].shape[0]
    labels = batch["labels"]
    labelled = labels != IGNORE_LABEL_ID
    n_labels = labelled.sum(-1)
    real = batch["mask"] & (n_labels > 0)  # padding rows and unlabelled rows are never counted
    inputs = batch["inputs"].repeat_interleave(Bm, 0)
    row_labels, row_labelled = labels.repeat_interleave(Bm, 0), labelled.repeat_interleave(Bm, 0)
    row_n_labels = n_labels.repeat_interleave(Bm, 0)
    rows = L * Bm

    shape = (rows, config.seq_len, config.hidden_size)
    z_H = torch.zeros(shape, dtype=config.dtype, device=device)
    z_L = torch.zeros(shape, dtype=config.dtype, device=device)
    inner.reset_latents(z_H, z_L, torch.ones(rows, dtype=torch.bool, device=device), sampler)

    cells = torch.zeros(spec.cell_shape, dtype=torch.long, device=device)
    hist = torch.zeros(spec.hist_shape, dtype=torch.long, device=device)
    changes = torch.zeros(spec.window, rows, dtype=torch.float32, device=device)  # ring of the last change norms
    previous = None
    if spec.halt:
        halted = torch.zeros(rows, dtype=torch.bool, device=device)
        halt_step = torch.zeros(rows, dtype=torch.long, device=device)
        halt_tokens = torch.zeros(rows, dtype=torch.long, device=device)
        halt_preds = torch.zeros(rows, config.seq_len, dtype=torch.long, device=device)
    if answers_out is not None:
        last_preds = torch.full((rows, config.seq_len), -1, dtype=torch.long, device=device)
        settled = torch.zeros(rows, dtype=torch.long, device=device)
    depth_seconds = []
    view = lambda x: x.view(L, Bm, *x.shape[1:])  # rows -> [puzzle, trajectory, ...]

    for step in range(1, spec.max_depth + 1):
        z_H, z_L, logits, q = inner(z_H, z_L, inputs, sampler)
        preds = logits.argmax(-1)
        tokens = ((preds == row_labels) & row_labelled).sum(-1)
        current = logits.float()
        if previous is not None:  # change norm: L2 over the vocab, mean over tokens
            changes[(step - 2) % spec.window] = (current - previous).norm(dim=-1).mean(-1)
        previous = current
        if spec.halt:
            stop = ~halted & (q > spec.halt_threshold)
            halt_step = torch.where(stop, step, halt_step)
            halt_tokens = torch.where(stop, tokens, halt_tokens)
            halt_preds = torch.where(stop[:, None], preds, halt_preds)
            halted |= stop
        if answers_out is not None:
            settled = torch.where((preds != last_preds).any(-1), step, settled)
            last_preds = preds
        if step not in spec.depths:
            continue

        d = spec.depths.index(step)
        steps = torch.full((L, Bm), step, dtype=torch.long, device=device)
        exact = view(tokens == row_n_labels)
        answers, spent, hist[d, :, 0] = _answer_counts(spec.breadths, real, n_labels, exact, view(tokens),
                                                       view(preds), steps, spec.blocks_per_step)
        filled = min(step - 1, spec.window)
        scores = changes[:filled].mean(0) if filled else torch.zeros(rows, device=device)
        conv = _convergence_counts(spec.breadths, spec.conv_k, real, n_labels, exact, view(tokens), view(scores), spent)
        parts = [answers[:, :2], conv, answers[:, 2:]]
        if spec.halt:  # a row that has not halted by this depth answers with its prediction here
            h_tokens = torch.where(halted, halt_tokens, tokens)
            h_steps = torch.where(halted, halt_step, step)
            h_preds = torch.where(halted[:, None], halt_preds, preds)
            h_answers, _, hist[d, :, 1] = _answer_counts(spec.breadths, real, n_labels, view(h_tokens == row_n_labels),
                                                         view(h_tokens), view(h_preds), view(h_steps),
                                                         spec.blocks_per_step)
            parts.append(h_answers)
        cells[d] = torch.cat(parts, 1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        depth_seconds.append(time.perf_counter() - start)
    if answers_out is not None:
        pick = torch.zeros(L, dtype=torch.long, device=device)
        if spec.reported(spec.max_depth, Bm, "conv_top1"):
            pick = selection.convergence_order(view(scores), [Bm], 1)[:, 0, 0]
        chosen = torch.arange(L, device=device) * Bm + pick
        answers_out.update(preds=preds[chosen], trajectory=pick, settled_step=settled[chosen])
        if spec.halt:
            answers_out["halt_step"] = halt_step[chosen]  # 0 where the row never halted
    return cells, hist, depth_seconds


# ----------------------------------------------------------------------------- partial results (resume)

def fingerprint(identity: dict) -> str:
    """Short hash of everything that decides the counts (config, checkpoint, data, sharding)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def partial_path(output_dir: str, rank: int, world_size: int) -> str:
    return os.path.join(output_dir, "partial", f"rank{rank}-of-{world_size}.pt")


def save_partial(path: str, identity: dict, next_batch: int, counts: torch.Tensor, seconds: float,
                 depth_seconds: list[float]) -> None:
    atomic_save({"fingerprint": fingerprint(identity), "identity": json.loads(json.dumps(identity, default=str)),
                 "next_batch": next_batch, "counts": counts.cpu(), "seconds": seconds,
                 "depth_seconds": list(depth_seconds)}, path)


def load_partial(path: str, identity: dict) -> dict:
    """This rank's saved progress; refuses a file written under any other configuration."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"{path}: unreadable partial result ({type(e).__name__}); delete it to start over") from None
    if state.get("fingerprint") != fingerprint(identity):
        saved = state.get("identity", {})
        now = json.loads(json.dumps(identity, default=str))
        diff = next((k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)), "?")
        raise ConfigError(f"{path}: written with {diff}={saved.get(diff)!r}, this run has {diff}={now.get(diff)!r}; "
                          f"resume with the same settings or use another output_dir")
    return state
