"""The depth x breadth grid in one pass, as integer counts that add up across batches and ranks.

One pass runs Bm = max(breadths) trajectories per puzzle for Dm = max(depths) supervision steps.
Cell (D, B) reads the first B trajectories after their first D steps; with keyed randomness
(evaluation/keyed_rng.py) that is exactly what a separate run of the cell would compute.

A model trained from fixed initial latents (TRM) starts every trajectory of a B > 1 run from a fresh
truncated-normal state instead (`fresh_init_std`, as the reference's evaluator), and its B = 1 cells
from its fixed latents. One pass then runs one more row per puzzle, from the fixed latents, for the
B = 1 column, so that column still equals a separate B = 1 run.

Memory does not grow with D: per row we keep the latents, the previous step's logits, the last
`window` change norms and, with halting, per rule the answer and step at which the row halted.

Halting (models/halting.py): each rule of `spec.halting_rules` decides for every trajectory by itself;
at depth D a trajectory the rule has not halted by D answers with its step-D answer (D is the cap).
A rule's puzzle answer at B > 1 is read from its trajectories' halted answers (trajectory 1, the vote,
pass@k) and costs the sum of their steps: the puzzle stops when its last trajectory has halted.
evaluation/pool.py runs the same rules and stops computing a trajectory once every rule has decided.

Counts (int64) per depth, breadth and rule: FIELDS below. pass@k comes from a histogram of
"c of the first B trajectories right" per (D, B), so every reported number is an exact function of
integers that are summed over batches and ranks: results do not depend on sharding. The fixed-point
residuals of the latent update (evaluation/residuals.py) are counted the same way, beside them.
"""
import time
from dataclasses import asdict, dataclass

import torch

from evaluation import residuals as residual_counts, selection
from evaluation.keyed_rng import trajectory_keys
from models import halting
from models.halting import HaltRule
from utils.constants import IGNORE_LABEL_ID
from utils.errors import ConfigError
from utils.typecheck import check_fields, must, positive

FIELDS = ("correct", "total", "token_correct", "token_total", "nfe")


def _increasing(values) -> bool:
    return bool(values) and all(isinstance(v, int) and v >= 1 for v in values) and list(values) == sorted(set(values))


@dataclass(frozen=True)
class GridSpec:
    depths: tuple[int, ...] = must(_increasing, "increasing positive integers", got=list)
    breadths: tuple[int, ...] = must(_increasing, "increasing positive integers", got=list)
    blocks_per_step: int = positive()
    top_k: int = positive(1)  # cumulative top-k-by-convergence curve up to k = min(top_k, B)
    window: int = positive(3)  # convergence score: mean change norm over the last `window` steps
    halt: bool = False  # also report the answers of halting rules: halt_rules, else q > halt_threshold alone
    halt_threshold: float = 0.0
    fresh_init_std: float | None = None  # set for fixed-init models: B > 1 trajectories start from fresh draws
    halt_rules: tuple[HaltRule, ...] = ()
    elastic: bool = False  # evaluation/pool.py's counts: the halting rules only, at the one depth cap

    def __post_init__(self):
        check_fields(self, typed=False)
        if self.fresh_init_std is not None and not self.fresh_init_std > 0:
            raise ConfigError(f"different_init_reset_std: expected a positive number or null, got {self.fresh_init_std!r}")
        if self.elastic and (len(self.depths) > 1 or not self.halting_rules):
            raise ConfigError("act_inference: the elastic evaluator takes one depth cap (halt_max_steps) and a halting rule")

    @property
    def halting_rules(self) -> tuple[HaltRule, ...]:
        if self.halt_rules:
            return tuple(self.halt_rules)
        return (HaltRule(self.halt_threshold),) if self.halt or self.elastic else ()

    @property
    def halt_suffixes(self) -> list[str]:
        """Rule-name suffix of each halting rule: '+halt' for the first, '+halt2', '+halt3', ... after it."""
        return ["+halt" if i == 0 else f"+halt{i + 1}" for i in range(len(self.halting_rules))]

    @property
    def hist_suffixes(self) -> list[str]:
        """What each pass@k histogram counts: '' the plain answers, then one per halting rule."""
        return ([] if self.elastic else [""]) + self.halt_suffixes

    @property
    def max_depth(self) -> int:
        return self.depths[-1]

    @property
    def max_breadth(self) -> int:
        return self.breadths[-1]

    @property
    def fixed_row(self) -> bool:
        """Whether each puzzle runs one extra row from the model's fixed latents, for the B = 1 column."""
        return self.fresh_init_std is not None and self.max_breadth > 1 and self.breadths[0] == 1

    @property
    def rows_per_puzzle(self) -> int:
        return self.max_breadth + self.fixed_row

    @property
    def conv_k(self) -> int:
        return min(self.top_k, self.max_breadth)

    @property
    def rules(self) -> list[str]:
        rules = [] if self.elastic else ["traj1", "all_traj", *[f"conv_top{k}" for k in range(1, self.conv_k + 1)],
                                         "majority"]
        return rules + [f"{rule}{suffix}" for suffix in self.halt_suffixes for rule in ("traj1", "all_traj", "majority")]

    @property
    def cell_shape(self) -> tuple[int, ...]:
        return len(self.depths), len(self.breadths), len(self.rules), len(FIELDS)

    @property
    def hist_shape(self) -> tuple[int, ...]:
        return len(self.depths), len(self.breadths), len(self.hist_suffixes), self.max_breadth + 1

    @property
    def residual_shapes(self) -> list[tuple[int, ...]]:
        """evaluation/residuals.py's sums and histograms; none for the elastic evaluator."""
        return [] if self.elastic else list(residual_counts.shapes(len(self.depths), len(self.breadths)))

    @property
    def size(self) -> int:
        return sum(torch.Size(s).numel() for s in [self.cell_shape, self.hist_shape, *self.residual_shapes])

    def _parts(self, flat: torch.Tensor) -> list[torch.Tensor]:
        shapes = [self.cell_shape, self.hist_shape, *self.residual_shapes]
        return [part.view(s) for part, s in zip(flat.split([torch.Size(s).numel() for s in shapes]), shapes)]

    def split(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The flat counts (spec.size) -> views of the cell counts and the pass@k histograms."""
        return tuple(self._parts(flat)[:2])

    def residual_parts(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The flat counts -> views of the residual sums and histograms (None for the elastic evaluator)."""
        return tuple(self._parts(flat)[2:]) or None

    def reported(self, depth: int, breadth: int, rule: str) -> bool:
        """Whether a rule means something at (D, B): convergence needs D >= 2 and k <= B > 1; votes need B > 1."""
        base = rule.split("+")[0]
        if base.startswith("conv_top"):
            return depth >= 2 and breadth > 1 and int(base[len("conv_top"):]) <= breadth
        if base == "majority":
            return breadth > 1
        return True

    def headline_rule(self, depth: int, breadth: int) -> str:
        """The paper's metric for a cell: top-1 by convergence where it is reported, trajectory 1 otherwise;
        the elastic evaluator's: the first halting rule's answer (trajectory 1, or the vote at B > 1)."""
        if self.elastic:
            return "majority+halt" if breadth > 1 else "traj1+halt"
        return "conv_top1" if self.reported(depth, breadth, "conv_top1") else "traj1"

    def to_dict(self) -> dict:
        return asdict(self)


def base_rule(rule: str) -> str:
    """'majority+halt2' -> 'majority' (the same answer without halting)."""
    return rule.split("+")[0]


def fresh_init_std(model_config, reset_std: float | None) -> float | None:
    """GridSpec.fresh_init_std for a model, as the reference: at B > 1 a model trained from fixed latents (TRM)
    starts each trajectory from a fresh draw of std `reset_std`; a model trained from random latents keeps its
    own init std, and the feed-forward model has no latent to draw."""
    fixed_init = not model_config.random_init and not model_config.feedforward
    return float(reset_std) if fixed_init and reset_std is not None else None


def row_keys(spec: GridSpec, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Puzzle index and trajectory number of every row run_batch runs for a batch with puzzle indices `index`:
    rows [r * Bm, (r + 1) * Bm) are puzzle r's trajectories 0..Bm-1; with `spec.fixed_row`, row L * Bm + r
    is puzzle r's trajectory 0 again, started from the fixed latents."""
    Bm = spec.max_breadth
    puzzles, trajectories = trajectory_keys(index, Bm)
    if spec.fixed_row:
        puzzles, trajectories = torch.cat([puzzles, index]), torch.cat([trajectories, torch.zeros_like(index)])
    return puzzles, trajectories


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

def _depth_counts(spec: GridSpec, breadths, real, n_labels, step: int, per_row: dict):
    """Every rule's counts at one depth for `breadths` -> ([nB, rules, 5], pass histograms [nB, H, Bm + 1]).

    per_row holds [L, Bm, ...] views: tokens, exact, preds, scores (absent for spec.elastic) and, with
    halting, each rule's answers h_tokens, h_exact, h_steps [R, L, Bm], h_preds [R, L, Bm, S].
    """
    L, Bm = per_row["h_tokens" if spec.elastic else "tokens"].shape[-2:]
    hist = torch.zeros(len(breadths), spec.hist_shape[2], Bm + 1, dtype=torch.long, device=real.device)
    parts = []
    if not spec.elastic:
        steps = torch.full((L, Bm), step, dtype=torch.long, device=real.device)
        answers, spent, hist[:, 0, :breadths[-1] + 1] = _answer_counts(
            breadths, real, n_labels, per_row["exact"], per_row["tokens"], per_row["preds"], steps, spec.blocks_per_step)
        conv = _convergence_counts(breadths, spec.conv_k, real, n_labels, per_row["exact"], per_row["tokens"],
                                   per_row["scores"], spent)
        parts = [answers[:, :2], conv, answers[:, 2:]]
    first = 0 if spec.elastic else 1
    for r in range(len(spec.halting_rules)):
        h_answers, _, hist[:, first + r, :breadths[-1] + 1] = _answer_counts(
            breadths, real, n_labels, *(per_row[k][r] for k in ("h_exact", "h_tokens", "h_preds", "h_steps")),
            spec.blocks_per_step)
        parts.append(h_answers)
    return torch.cat(parts, 1), hist


def row_views(spec: GridSpec, L: int):
    """Two maps from a batch's rows (laid out as row_keys says; `lead` axes before the row axis, e.g. one
    per halting rule) to [..., puzzle, trajectory, ...]: all Bm trajectories, and the B = 1 column's, where
    trajectory 0 is the row from the fixed latents (spec.fixed_row)."""
    Bm = spec.max_breadth

    def view(x, lead=0):
        return x.narrow(lead, 0, L * Bm).reshape(*x.shape[:lead], L, Bm, *x.shape[lead + 1:])

    def fixed_view(x, lead=0):
        fixed = x.narrow(lead, L * Bm, L).reshape(*x.shape[:lead], L, 1, *x.shape[lead + 1:])
        return torch.cat([fixed, view(x, lead).narrow(lead + 1, 1, Bm - 1)], lead + 1)

    return view, fixed_view


def tally(spec: GridSpec, real, n_labels, step: int, now: dict, view, fixed_view):
    """One depth's counts of a batch from its per-row values `now` (h_* entries carry a leading rule axis)."""
    lead = lambda key: 1 if key.startswith("h_") else 0
    cells, hist = _depth_counts(spec, spec.breadths, real, n_labels, step, {k: view(v, lead(k)) for k, v in now.items()})
    if spec.fixed_row:
        cells[:1], hist[:1] = _depth_counts(spec, (1,), real, n_labels, step,
                                            {k: fixed_view(v, lead(k)) for k, v in now.items()})
    return cells, hist


def batch_rows(spec: GridSpec, batch: dict):
    """The per-row copies of a batch (inputs, labels, labelled, n_labels) and which puzzles count (real [L])."""
    Bm = spec.max_breadth
    labelled = batch["labels"] != IGNORE_LABEL_ID
    n_labels = labelled.sum(-1)
    real = batch["mask"] & (n_labels > 0)  # padding rows and unlabelled rows are never counted

    def per_row(x):  # [L, ...] -> one copy per row
        rows = x.repeat_interleave(Bm, 0)
        return torch.cat([rows, x]) if spec.fixed_row else rows

    return [per_row(x) for x in (batch["inputs"], batch["labels"], labelled, n_labels)], real, n_labels


@torch.inference_mode()
def run_batch(inner, batch: dict, spec: GridSpec, sampler, residuals: tuple | None = None):
    """Every cell of the grid on one batch -> (cell counts, histograms, seconds to reach each depth, headline).

    inner: the ReasoningCore; batch: inputs, labels [L, S], mask [L] on its device; sampler: the
    model's randomness for the rows laid out as row_keys(spec, batch["index"]) says.
    headline: the answer of the headline cell (max depth, max breadth, spec.headline_rule) per puzzle:
    trajectory [L] (0-based), answer [L, S] (argmax tokens), solved [L] (bool; False for uncounted rows),
    settled_step [L] (the step after which that trajectory's answer no longer changed) and, with halting,
    halt_step [L] (the step at which the first halting rule stopped it; 0: not before the cap).
    residuals: (sums, histograms) shaped as spec.residual_shapes (e.g. spec.residual_parts(counts)), to which
    this batch's residual counts (evaluation/residuals.py) are added; None: they are not computed.
    """
    start = time.perf_counter()
    config, device = inner.config, batch["inputs"].device
    Bm, L = spec.max_breadth, batch["inputs"].shape[0]
    (inputs, row_labels, row_labelled, row_n_labels), real, n_labels = batch_rows(spec, batch)
    rows = inputs.shape[0]

    shape = (rows, config.latent_len, config.hidden_size)
    z_H = torch.zeros(shape, dtype=config.dtype, device=device)
    z_L = torch.zeros(shape, dtype=config.dtype, device=device)
    fresh = torch.arange(rows, device=device) < L * Bm
    inner.reset_latents(z_H, z_L, fresh, sampler, fresh_std=spec.fresh_init_std if Bm > 1 else None)
    if spec.fixed_row:
        inner.reset_latents(z_H, z_L, ~fresh, sampler)

    cells = torch.zeros(spec.cell_shape, dtype=torch.long, device=device)
    hist = torch.zeros(spec.hist_shape, dtype=torch.long, device=device)
    changes = torch.zeros(spec.window, rows, dtype=torch.float32, device=device)  # ring of the last change norms
    previous = None
    R = len(spec.halting_rules)
    if R:
        rules = halting.stack(spec.halting_rules, device)
        counter = torch.zeros(R, rows, dtype=torch.int32, device=device)
        halted = torch.zeros(R, rows, dtype=torch.bool, device=device)
        halt_step = torch.zeros(R, rows, dtype=torch.long, device=device)
        halt_tokens = torch.zeros(R, rows, dtype=torch.long, device=device)
        halt_preds = torch.zeros(R, rows, config.seq_len, dtype=torch.long, device=device)
    last_preds = torch.full((rows, config.seq_len), -1, dtype=torch.long, device=device)
    settled = torch.zeros(rows, dtype=torch.long, device=device)
    depth_seconds = []
    view, fixed_view = row_views(spec, L)

    for step in range(1, spec.max_depth + 1):
        before = (z_H, z_L) if residuals is not None else None  # otherwise the old latents are freed at once
        z_H, z_L, logits, q = inner(z_H, z_L, inputs, sampler)
        preds = logits.argmax(-1)
        tokens = ((preds == row_labels) & row_labelled).sum(-1)
        current = logits.float()
        if previous is not None:  # change norm: L2 over the vocab, mean over tokens
            changes[(step - 2) % spec.window] = (current - previous).norm(dim=-1).mean(-1)
        previous = current
        if R:  # the cap is applied at each depth below, so here max_steps never fires
            counter, stop = halting.step(rules, counter, q, inner.q_continue(z_H), torch.full_like(q, step, dtype=torch.int32), spec.max_depth + 1)
            stop &= ~halted
            halt_step = torch.where(stop, step, halt_step)
            halt_tokens = torch.where(stop, tokens, halt_tokens)
            halt_preds = torch.where(stop[..., None], preds, halt_preds)
            halted |= stop
        settled = torch.where((preds != last_preds).any(-1), step, settled)
        last_preds = preds
        if step not in spec.depths:
            continue

        d = spec.depths.index(step)
        filled = min(step - 1, spec.window)
        scores = changes[:filled].mean(0) if filled else torch.zeros(rows, device=device)
        now = {"tokens": tokens, "exact": tokens == row_n_labels, "preds": preds, "scores": scores}
        if R:  # a row that has not halted by this depth answers with its prediction here
            h_tokens = torch.where(halted, halt_tokens, tokens)
            now.update(h_tokens=h_tokens, h_exact=h_tokens == row_n_labels, h_steps=torch.where(halted, halt_step, step),
                       h_preds=torch.where(halted[..., None], halt_preds, preds))
        cells[d], hist[d] = tally(spec, real, n_labels, step, now, view, fixed_view)
        if residuals is not None:
            now["residual"], now["relative"] = residual_counts.norms(before, (z_H, z_L))
            sums, histograms = residual_counts.tally(spec, step, real, now, view, fixed_view)
            residuals[0][d] += sums
            residuals[1][d] += histograms
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        depth_seconds.append(time.perf_counter() - start)

    # After the last depth: `now` holds its rows. The headline cell reads the first Bm rows of each puzzle.
    if spec.headline_rule(spec.max_depth, Bm) == "conv_top1":
        trajectory = selection.convergence_order(view(now["scores"]), (Bm,), 1)[:, 0, 0]
    else:
        trajectory = torch.zeros(L, dtype=torch.long, device=device)
    pick = lambda x: view(x)[torch.arange(L, device=device), trajectory]
    headline = {"trajectory": trajectory, "answer": pick(now["preds"]), "solved": pick(now["exact"]) & real,
                "settled_step": pick(settled)}
    if R:
        headline["halt_step"] = pick(halt_step[0])
    return cells, hist, depth_seconds, headline
