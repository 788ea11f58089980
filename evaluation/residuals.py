"""Fixed-point residuals of the latent update, as integer counts that add up exactly across batches and ranks.

The residual of step t of one trajectory is the authors' `residual_of_t_steps` (their evaluators/eval_fn.py):
    r_t = || z_t - z_{t-1} ||_2  over the joint state z = (z_H, z_L)
one number per trajectory (not per token): the L2 norm over every latent position (the puzzle-embedding
prefix included) and hidden channel of both latents, the difference taken in the forward dtype and the norm
in float32, absolute. Also reported relative, r_t / ||z_t||. z_0 is the state the trajectory starts from
(theirs at step 1 is taken against the carry before its first reset, which holds no state).

Per cell (D, B) and per group, split by whether the trajectory's answer at step D is exactly right:
  "all"    the first B trajectories of every puzzle (as the `all_traj` rule), residual r_D of each;
  "picked" the trajectory the cell's headline rule answers with (top-1 by convergence where reported,
           trajectory 1 otherwise), one per puzzle.
FIELDS per (cell, group): trajectories solved and failed, and the sums of r_D and of r_D / ||z_D|| over each,
as int64 in units of 1 / SCALE (each value rounded once, so sums do not depend on how rows are batched).
Values are clamped to [0, MAX] (NaN counts as MAX): a diverged model's means are lower bounds.

AUC: a histogram of r_D over BINS fixed log-spaced bins (BINS_PER_OCTAVE per factor 2 from 2^LOW_OCTAVE to
2^HIGH_OCTAVE, one bin below, one at or above) per (cell, group, solved / failed) gives the AUC of "lower
residual, right answer" -- P(r of a solved < r of a failed trajectory) + P(same bin) / 2 -- exactly as
integers, and `tie` = P(same bin): the AUC of the unbinned residuals lies within AUC +- tie / 2. A histogram
keeps the counts of fixed size, summed like every other count and saved in the partial files for resume;
pooled per-row values would grow with the test set and need their own gather and resume.
"""
import math

import torch

GROUPS = ("all", "picked")
FIELDS = ("solved", "failed", "residual_solved", "residual_failed", "relative_solved", "relative_failed")
SCALE = 2 ** 20
MAX = 2.0 ** 16  # a row adds at most MAX * SCALE = 2^36: 2^26 rows stay below 2^63
BINS_PER_OCTAVE, LOW_OCTAVE, HIGH_OCTAVE = 8, -16, 16
BINS = BINS_PER_OCTAVE * (HIGH_OCTAVE - LOW_OCTAVE) + 2


def shapes(n_depths: int, n_breadths: int) -> tuple[tuple, tuple]:
    """(sums, histograms) per depth and breadth."""
    return (n_depths, n_breadths, len(GROUPS), len(FIELDS)), (n_depths, n_breadths, len(GROUPS), 2, BINS)


def norms(before: tuple, after: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_H, z_L) before and after one step [rows, positions, hidden] -> (r, r / ||z_after||), float32 [rows]."""
    square = lambda x: torch.linalg.vector_norm(x, dim=(1, 2), dtype=torch.float32).square()
    residual = sum(square(a - b) for a, b in zip(after, before)).sqrt()
    return residual, residual / sum(square(a) for a in after).sqrt()


def fixed_point(values: torch.Tensor) -> torch.Tensor:
    """float values -> int64 in units of 1 / SCALE, clamped to [0, MAX], NaN as MAX."""
    values = torch.where(values.isnan(), MAX, values.double().clamp(0, MAX))
    return (values * SCALE).round().long()


def bin_of(values: torch.Tensor) -> torch.Tensor:
    """float values -> histogram bin: 0 below 2^LOW_OCTAVE (and 0), BINS - 1 at or above 2^HIGH_OCTAVE (and NaN)."""
    values = torch.where(values.isnan(), math.inf, values.double())
    octaves = (values.log2() - LOW_OCTAVE) * BINS_PER_OCTAVE
    return (octaves.clamp(-1, BINS - 2).floor() + 1).long()


def _group_counts(member, real, exact, residual, relative, bins):
    """member [L, nB, Bm] (which trajectories a cell's group holds) -> sums [nB, F], histograms [nB, 2, BINS]."""
    nB = member.shape[1]
    held = member & real.view(-1, 1, 1)
    solved, failed = held & exact[:, None], held & ~exact[:, None]
    total = lambda mask, x=None: (mask.long() if x is None else mask.long() * x[:, None]).sum((0, 2))
    sums = torch.stack([total(solved), total(failed), total(solved, residual), total(failed, residual),
                        total(solved, relative), total(failed, relative)], -1)
    cell = torch.arange(nB, device=real.device).view(1, -1, 1)
    index = (cell * 2 + (~exact[:, None]).long()) * BINS + bins[:, None]  # [L, nB, Bm] -> (breadth, outcome, bin)
    hist = torch.zeros(nB * 2 * BINS, dtype=torch.long, device=real.device)
    hist.scatter_add_(0, index.expand_as(held).flatten(), held.long().flatten())
    return sums, hist.view(nB, 2, BINS)


def cell_counts(spec, breadths, depth: int, real, exact, residual, relative, scores):
    """One depth's residual counts -> sums [nB, GROUPS, FIELDS], histograms [nB, GROUPS, 2, BINS].

    real [L]; exact [L, Bm] bool, residual and relative [L, Bm] float, scores [L, Bm] (convergence scores).
    """
    from evaluation.selection import convergence_order

    L, Bm = exact.shape
    device = exact.device
    first = torch.arange(Bm, device=device)[None, :] < torch.tensor(breadths, device=device)[:, None]  # [nB, Bm]
    conv = torch.tensor([spec.headline_rule(depth, b) == "conv_top1" for b in breadths], device=device)
    picked = torch.where(conv, convergence_order(scores, breadths, 1)[..., 0], 0)  # [L, nB]
    chosen = picked[..., None] == torch.arange(Bm, device=device)  # [L, nB, Bm]
    values = fixed_point(residual), fixed_point(relative), bin_of(residual)
    parts = [_group_counts(member, real, exact, *values) for member in (first.expand(L, -1, -1), chosen)]
    return torch.stack([s for s, _ in parts], 1), torch.stack([h for _, h in parts], 1)


def tally(spec, depth: int, real, now: dict, view, fixed_view):
    """cell_counts for every breadth from per-row values (exact, residual, relative, scores), laid out as the
    grid's rows (grid.row_views); with spec.fixed_row the B = 1 column reads the row from the fixed latents."""
    keys = ("exact", "residual", "relative", "scores")
    sums, hist = cell_counts(spec, spec.breadths, depth, real, *(view(now[k]) for k in keys))
    if spec.fixed_row:
        sums[:1], hist[:1] = cell_counts(spec, (1,), depth, real, *(fixed_view(now[k]) for k in keys))
    return sums, hist


# ----------------------------------------------------------------------------- reading the counts

def auc_from_histograms(solved: list[int], failed: list[int]) -> tuple[float, float]:
    """(AUC, tie): P(bin of a solved < bin of a failed) + P(same bin) / 2, and P(same bin); NaN without both."""
    pairs = sum(solved) * sum(failed)
    if not pairs:
        return float("nan"), float("nan")
    below, same, failed_above = 0, 0, sum(failed)
    for s, f in zip(solved, failed):
        failed_above -= f
        below += s * failed_above
        same += s * f
    return (below + same / 2) / pairs, same / pairs


def rows(spec, sums, hist) -> list[dict]:
    """One row per (D, B, group): trajectories solved / failed, mean residual and relative residual of each,
    and the AUC of the residual for correctness (with its bin-tie share)."""
    out = []
    for d, depth in enumerate(spec.depths):
        for b, breadth in enumerate(spec.breadths):
            for g, group in enumerate(GROUPS):
                c = dict(zip(FIELDS, (int(x) for x in sums[d, b, g].tolist())))
                mean = lambda total, n: total / SCALE / n if n else None
                auc, tie = auc_from_histograms(*(hist[d, b, g, o].tolist() for o in (0, 1)))
                out.append({"depth": depth, "breadth": breadth, "group": group, "solved": c["solved"],
                            "failed": c["failed"],
                            "residual": mean(c["residual_solved"] + c["residual_failed"], c["solved"] + c["failed"]),
                            "residual_solved": mean(c["residual_solved"], c["solved"]),
                            "residual_failed": mean(c["residual_failed"], c["failed"]),
                            "relative_solved": mean(c["relative_solved"], c["solved"]),
                            "relative_failed": mean(c["relative_failed"], c["failed"]),
                            "auc": None if math.isnan(auc) else auc, "auc_tie": None if math.isnan(tie) else tie})
    return out


def sparse_histograms(hist) -> list:
    """The histograms [D][B][group][solved, failed][bin] with each last axis as [bin, count] pairs of the bins
    that hold any (most are empty), for results.json."""
    return [[[[[[b, c] for b, c in enumerate(outcome) if c] for outcome in group] for group in cell] for cell in depth]
            for depth in hist.tolist()]


def format_table(spec, residual_rows: list[dict]) -> str:
    """Mean residual of the headline answers (solved / failed) over D x B, and the AUC of all trajectories."""
    header = "    B \\ D " + "".join(f"{d:>15}" for d in spec.depths)
    num = lambda x, f: "-" if x is None else format(x, f)
    lines = ["Fixed-point residual ||z_D - z_(D-1)|| of the joint (z_H, z_L) state (the authors' residual_of_D_steps):",
             "mean for the answer the paper's metric picks, solved / failed", header]
    find = lambda d, b, g: next(r for r in residual_rows if (r["depth"], r["breadth"], r["group"]) == (d, b, g))
    for breadth in spec.breadths:
        cells = [find(d, breadth, "picked") for d in spec.depths]
        lines.append(f"{breadth:>9} " + "".join(
            f"{num(r['residual_solved'], '.3g') + ' / ' + num(r['residual_failed'], '.3g'):>15}" for r in cells))
    lines += ["", "AUC of the residual for correctness (lower residual = right answer; 0.5: no signal), all B trajectories",
              header]
    for breadth in spec.breadths:
        lines.append(f"{breadth:>9} " + "".join(f"{num(find(d, breadth, 'all')['auc'], '.3f'):>15}" for d in spec.depths))
    return "\n".join(lines)
