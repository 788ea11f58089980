"""The Lyapunov estimator (evaluation/lyapunov.py): known spectra, dense Jacobians on a tiny model, the plain trajectory."""
import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from evaluation.grid import GridSpec, run_batch
from evaluation.keyed_rng import KeyedSampler
from evaluation.lyapunov import (SegmentNoise, initial_frame, lyapunov_exponents, orthonormalise, push_frame,
                                 trace_batch)
from models.eqr import ModelConfig, ReasoningCore
from test_eval_grid import EQR, TRM, build_model, random_batch

TINY = dict(seq_len=4, vocab_size=4, hidden_size=8, num_heads=2, H_cycles=2, L_cycles=1, L_layers=1,
            forward_dtype="float32", H_init_std=0.5, L_init_std=0.5, noise_scale=0.05)


def keyed(seed, rows):
    return KeyedSampler(seed, torch.arange(rows), torch.zeros(rows, dtype=torch.long))


def test_linear_map_recovers_its_singular_values():
    # A = U diag(s) U^T: symmetric, so its singular values are its eigenvalue moduli, and x -> A x has
    # exponents log s. The frame's start shows up as O(1/T): about 0.01 after 300 steps.
    torch.manual_seed(0)
    s = torch.tensor([2.0, 1.3, 0.8, 0.45, 0.2, 0.1], dtype=torch.float64)
    u = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))[0]
    a = u @ torch.diag(s) @ u.T
    state = torch.randn(3, 6, dtype=torch.float64)
    frame = initial_frame(4, state, 0, torch.arange(3), torch.zeros(3, dtype=torch.long))
    exponents = lyapunov_exponents(lambda x: (x @ a.T, ()), state, frame, 300)
    assert torch.allclose(exponents, s[:4].log().expand(3, 4), atol=0.02), exponents


def test_orthonormalise_is_a_qr_step():
    vectors = torch.randn(3, 5, 7, dtype=torch.float64)
    frame, growth = orthonormalise(vectors)
    gram = torch.einsum("irn,jrn->rij", frame, frame)
    assert torch.allclose(gram, torch.eye(3, dtype=torch.float64).expand(5, 3, 3), atol=1e-12)
    assert torch.allclose(growth[:, 0], vectors[0].norm(dim=1).log())  # the first direction's growth is its norm


def dense_reference(inner, inputs, steps, seed):
    """Benettin with every segment's Jacobian formed densely (float64), on the trajectory trace_batch follows."""
    rows, shape = inputs.shape[0], (inputs.shape[0], inner.config.seq_len, inner.config.hidden_size)
    sampler = keyed(seed, rows)
    z_H, z_L = torch.zeros(shape), torch.zeros(shape)
    inner.reset_latents(z_H, z_L, torch.ones(rows, dtype=torch.bool), sampler)
    calls = inner.config.blocks_per_step // inner.config.L_layers
    jacobians = []
    for _ in range(steps):
        noise = SegmentNoise(sampler, z_H, calls)

        def segment(flat, row):  # one row's segment map on its flat state
            noise.used = 0
            h, l = flat.view(2, 1, *shape[1:])
            out_h, out_l = inner.segment(h, l, inputs[row:row + 1], _RowNoise(noise, row))
            return torch.cat([out_h.flatten(), out_l.flatten()])

        state = torch.cat([z_H.flatten(1), z_L.flatten(1)], 1)
        # forward mode: the segment's first H cycles run under no_grad, which reverse mode would stop at
        with sdpa_kernel(SDPBackend.MATH):
            jacobians.append(torch.stack([torch.func.jacfwd(lambda x: segment(x, r))(state[r])
                                          for r in range(rows)]).double())
        noise.used = 0
        with torch.no_grad():
            z_H, z_L = inner.segment(z_H, z_L, inputs, noise)
    return jacobians


class _RowNoise:
    """One row's slice of a segment's keyed draws."""

    def __init__(self, noise, row):
        self.noise_of_all, self.row = noise, row

    def noise(self, like):
        return self.noise_of_all.noise(like)[self.row:self.row + 1]


@pytest.mark.parametrize("arch", [dict(TINY), dict(TINY, mlp_t=True), dict(TINY, noise_scale=0.0),
                                  dict(TINY, lambda_=1.0, noise_scale=0.0, random_init=False)],
                         ids=["eqr-attention", "eqr-token-mlp", "eqr-noise-off", "trm"])
def test_exponents_match_dense_jacobians_on_a_tiny_model(arch):
    torch.manual_seed(1)
    inner = ReasoningCore(ModelConfig(**arch)).eval()
    rows, depth, seed, k = 2, 4, 3, 6
    inputs = torch.randint(1, 4, (rows, 4), dtype=torch.int32)
    batch = {"inputs": inputs, "labels": inputs.clone(), "index": torch.arange(rows)}
    traced = trace_batch(inner, batch, depth, k, 1, keyed(seed, rows), seed, prefix=2)

    with torch.no_grad():
        jacobians = dense_reference(inner, inputs, depth, seed)
    start = initial_frame(k, torch.zeros(rows, 2 * 4 * 8), seed, torch.arange(rows), torch.zeros(rows, dtype=torch.long))

    def benettin(jacobians):
        frame, total = start.double(), torch.zeros(rows, k, dtype=torch.float64)
        for j in jacobians:
            frame, growth = orthonormalise(torch.einsum("rmn,krn->krm", j, frame))
            total += growth
        return total / len(jacobians)

    # float32 tangents against float64 products of dense Jacobians (directions contracting faster than
    # about e^-15 per segment would drown in float32 rounding; the top 6 here stay well above that)
    assert torch.allclose(traced["lyap"], benettin(jacobians), atol=1e-4), (traced["lyap"], benettin(jacobians))
    assert torch.allclose(traced["lyap1_prefix"], benettin(jacobians[:2])[:, 0], atol=1e-4)


def test_push_frame_equals_the_dense_jacobian_times_the_frame():
    torch.manual_seed(2)
    w = torch.randn(5, 5, dtype=torch.float64)
    step = lambda x: (torch.tanh(x @ w.T), (x.sum(1),))
    state, frame = torch.randn(3, 5, dtype=torch.float64), torch.randn(2, 3, 5, dtype=torch.float64)
    next_state, images, (total,) = push_frame(step, state, frame)
    dense = torch.stack([torch.autograd.functional.jacobian(lambda x: torch.tanh(w @ x), s) for s in state])
    assert torch.allclose(images, torch.einsum("rmn,krn->krm", dense, frame))
    assert torch.equal(next_state, torch.tanh(state @ w.T)) and torch.equal(total, state.sum(1))


@pytest.mark.parametrize("arch,fresh_std", [(EQR, None), (TRM, 1.0)])  # TRM at B > 1: fresh starts, as evaluate
def test_trace_follows_the_trajectory_that_evaluate_scores(arch, fresh_std):
    head = build_model(arch, q_weight_std=0.5)
    batch = random_batch(head, 5, pad=1)
    batch["labels"][:5, ::2] = batch["labels"][:5, ::2] % 3 + 1  # not every answer right at every depth
    breadth, depth, seed = 2, 4, 99
    rows = lambda: KeyedSampler(seed, batch["index"].repeat_interleave(breadth), torch.arange(breadth).repeat(6))
    traced = trace_batch(head.model.inner, batch, depth, 2, breadth, rows(), seed, prefix=2, fresh_std=fresh_std)
    spec = GridSpec(depths=tuple(range(1, depth + 1)), breadths=(breadth,), blocks_per_step=1, fresh_init_std=fresh_std)
    cells, _, _, _ = run_batch(head.model.inner, batch, spec, rows())
    all_traj = spec.rules.index("all_traj")
    real = batch["mask"].repeat_interleave(breadth)
    assert [int(cells[d, 0, all_traj, 0]) for d in range(depth)] == traced["solved"][real].sum(0).tolist()
    assert traced["lyap"].shape == (12, 2) and math.isfinite(traced["lyap"][real].sum())
    assert not traced["lyap1_prefix"].isnan().any()  # set, since depth > prefix


def test_the_whole_spectrum_sums_to_the_volume_growth():
    # k = the state's dimension (64 here): the exponents' sum is the mean log |det J| of the segment maps
    torch.manual_seed(4)
    inner = ReasoningCore(ModelConfig(**TINY)).eval()
    rows, depth, seed, n = 1, 2, 5, 2 * 4 * 8
    inputs = torch.randint(1, 4, (rows, 4), dtype=torch.int32)
    batch = {"inputs": inputs, "labels": inputs.clone(), "index": torch.arange(rows)}
    traced = trace_batch(inner, batch, depth, n, 1, keyed(seed, rows), seed, prefix=2)
    with torch.no_grad():
        jacobians = dense_reference(inner, inputs, depth, seed)
    volume = sum(torch.linalg.slogdet(j)[1] for j in jacobians) / depth
    assert traced["lyap"].shape == (rows, n)
    assert torch.allclose(traced["lyap"].sum(1), volume, rtol=1e-3), (traced["lyap"].sum(1), volume)
