"""Finite-time Lyapunov exponents of a map's trajectory, and the per-segment diagnostics of a reasoner.

Benettin's method: carry k orthonormal tangent directions Q along the trajectory x_{t+1} = F(x_t);
each step pushes them through the Jacobian with Jacobian-vector products (torch.func.jvp, all k at
once under torch.func.vmap; no Jacobian is ever formed), then re-orthonormalises with a QR
decomposition, J Q_t = Q_{t+1} R_t. The finite-time exponents after T steps are
    lambda_i = (1 / T) sum_t log |R_t[i, i]|      (per application of F, natural log),
lambda_1 the growth rate of the leading direction. Every row of a batch is its own trajectory.

For the reasoner, F is one supervision segment (models/eqr.py ReasoningCore.segment) acting on the
joint state x = (z_H, z_L) flattened per row. Path noise enters F additively and does not depend on
x, so drawing it once per segment (as the primal pass does) holds it fixed for the tangent map: F is
then a deterministic map along each trajectory and the tangents see the Jacobian at the noisy states.
"""
import torch
from torch.func import jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from evaluation.keyed_rng import KeyedSampler, trajectory_keys
from utils.constants import IGNORE_LABEL_ID

FRAME_SEED_OFFSET = 7919  # the initial tangent frame is keyed by (seed + this, puzzle, trajectory)


def orthonormalise(vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """vectors [k, rows, n] -> (orthonormal frame [k, rows, n], log |R_ii| [rows, k]), one QR per row."""
    q, r = torch.linalg.qr(vectors.permute(1, 2, 0))  # [rows, n, k], [rows, k, k]
    return q.permute(2, 0, 1), r.diagonal(dim1=-2, dim2=-1).abs().log()


def initial_frame(k: int, like: torch.Tensor, seed: int, puzzles: torch.Tensor, trajectories: torch.Tensor) -> torch.Tensor:
    """k orthonormal directions per row of `like` [rows, n], keyed by (seed, puzzle, trajectory)."""
    if not 1 <= k <= like.shape[1]:
        raise ValueError(f"lyapunov_k: expected 1 to {like.shape[1]} (the state's dimension), got {k}")
    sampler = KeyedSampler(seed + FRAME_SEED_OFFSET, puzzles, trajectories)
    draws = torch.stack([sampler.noise(like.float()) for _ in range(k)])
    return orthonormalise(draws)[0].to(like.dtype)


def push_frame(step, state: torch.Tensor, frame: torch.Tensor):
    """One step of the map `step(state) -> (next state, aux tuple of tensors)` with its tangents.

    state [rows, n]; frame [k, rows, n] -> (next state, J frame [k, rows, n], aux), the map run once.
    """
    next_state, images, aux = vmap(lambda t: jvp(step, (state,), (t,), has_aux=True))(frame)
    # vmap runs the map once; the outputs that do not depend on the tangent come back repeated k times
    return next_state[0], images, tuple(a[0] for a in aux)


def lyapunov_exponents(step, state: torch.Tensor, frame: torch.Tensor, steps: int) -> torch.Tensor:
    """The top-k finite-time exponents [rows, k] of `steps` applications of `step` from `state`."""
    total = torch.zeros(state.shape[0], frame.shape[0], dtype=torch.float64, device=state.device)
    for _ in range(steps):
        state, images, _ = push_frame(step, state, frame)
        frame, growth = orthonormalise(images)
        total += growth.double()
    return total / steps


def to_fill(inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Labelled cells whose input differs from the answer: blanks (Sudoku), path cells between S and G (maze)."""
    return ((labels != IGNORE_LABEL_ID) & (inputs != labels)).sum(-1)


class SegmentNoise:
    """One segment's path noise, drawn from the keyed sampler before the transform, handed out in order.

    torch.func refuses a sampler that counts its draws in a tensor inside jvp; the draws are the
    same ones, in the same order, that the plain forward pass makes (they do not depend on the state).
    """

    def __init__(self, sampler, like: torch.Tensor, calls: int):
        self.draws = [sampler.noise(like) for _ in range(calls)]
        self.used = 0

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        if not self.draws:  # noise_scale 0 (noise=off): the block stack scales this by 0
            return torch.zeros_like(like)
        draw = self.draws[self.used]
        self.used += 1
        return draw


@torch.no_grad()  # no reverse-mode graph; forward-mode tangents still flow (they ignore grad mode)
def trace_batch(inner, batch: dict, depth: int, k: int, breadth: int, sampler, seed: int, prefix: int,
                fresh_std: float | None = None) -> dict:
    """Run `breadth` trajectories per puzzle for `depth` segments, carrying k tangent directions.

    inner: the ReasoningCore; batch: inputs, labels [L, S], index [L] on its device; sampler: the
    model's randomness for the L * breadth rows (row r = puzzle r // breadth, trajectory r % breadth).
    Returns per row: lyap [rows, k] float64, lyap1_prefix [rows] (lambda_1 over the first `prefix`
    segments), disp / reldisp / q_halt [rows, depth] float64, solved [rows, depth] bool, to_fill [rows].
    fresh_std: as evaluation.grid.fresh_init_std, so trajectories start where evaluate.py starts them.
    """
    config, device = inner.config, batch["inputs"].device
    rows = batch["inputs"].shape[0] * breadth
    inputs = batch["inputs"].repeat_interleave(breadth, 0)
    labels = batch["labels"].repeat_interleave(breadth, 0)
    labelled = labels != IGNORE_LABEL_ID
    shape = (rows, config.latent_len, config.hidden_size)
    z_H = torch.zeros(shape, dtype=config.dtype, device=device)
    z_L = torch.zeros(shape, dtype=config.dtype, device=device)
    inner.reset_latents(z_H, z_L, torch.ones(rows, dtype=torch.bool, device=device), sampler, fresh_std)
    state = torch.cat([z_H.flatten(1), z_L.flatten(1)], 1)
    half = z_H[0].numel()

    calls = config.blocks_per_step // config.L_layers if config.noise_scale > 0 else 0  # noisy block-stack calls

    def segment(x, noise):
        z_H, z_L = inner.segment(x[:, :half].view(shape), x[:, half:].view(shape), inputs, noise)
        return torch.cat([z_H.flatten(1), z_L.flatten(1)], 1), inner.readout(z_H)

    frame = initial_frame(k, state, seed, *trajectory_keys(batch["index"], breadth))
    log_growth = torch.zeros(rows, k, dtype=torch.float64, device=device)
    out = {name: torch.zeros(rows, depth, dtype=torch.float64, device=device) for name in ("disp", "reldisp", "q_halt")}
    out["solved"] = torch.zeros(rows, depth, dtype=torch.bool, device=device)
    out["lyap1_prefix"] = torch.full((rows,), float("nan"), dtype=torch.float64, device=device)
    for t in range(depth):
        noise = SegmentNoise(sampler, z_H, calls)
        with sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels have no forward-mode derivative
            next_state, images, (logits, q) = push_frame(lambda x: segment(x, noise), state, frame)
        if calls and noise.used != calls:
            raise RuntimeError(f"a segment drew path noise {noise.used} times, expected {calls}")
        frame, growth = orthonormalise(images)
        log_growth += growth.double()
        step = (next_state - state).double().norm(dim=1)
        out["disp"][:, t] = step
        out["reldisp"][:, t] = step / state.double().norm(dim=1)
        out["q_halt"][:, t] = q.double()
        out["solved"][:, t] = ((logits.argmax(-1) == labels) | ~labelled).all(-1) & labelled.any(-1)
        if t + 1 == prefix:
            out["lyap1_prefix"] = log_growth[:, 0] / prefix
        state = next_state
    out["lyap"] = log_growth / depth
    out["to_fill"] = to_fill(inputs, labels)
    return out
