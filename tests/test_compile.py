"""The compiled path: one supervision step is captured whole by torch.compile (no graph break) and computes
what the eager path computes. The `aot_eager` backend captures and runs the same aten ops without generating
kernels, so it checks the capture in seconds on a CPU; Inductor's own kernels are checked in the slow test
(and on CUDA by tests/test_gpu.py)."""
import pytest
import torch

from evaluation.keyed_rng import KeyedSampler
from models.eqr import ModelConfig, RecurrentReasoner, compile_core
from models.losses import ACTLossHead

TINY = dict(seq_len=16, vocab_size=6, hidden_size=32, num_heads=2, L_layers=1, H_cycles=2, L_cycles=2)
ARCHS = {"attention-rope2d": dict(pos_encodings="rope2d"), "mlp_t": dict(mlp_t=True),
         "trm": dict(lambda_=1.0, noise_scale=0.0, random_init=False)}


def eval_steps(core, z, inputs, steps=3):
    """`steps` supervision steps under inference_mode with keyed noise, as evaluation/grid.py runs them."""
    rows = torch.arange(inputs.shape[0], device=inputs.device)
    sampler = KeyedSampler(7, rows, torch.zeros_like(rows))
    with torch.inference_mode():
        z_H, z_L = z.clone(), z.clone()
        for _ in range(steps):
            z_H, z_L, logits, q = core(z_H, z_L, inputs, sampler)
    return z_H, logits, q


# TRM's step in both dtypes runs by default; the larger captures (seconds of tracing each) in the slow tier.
@pytest.mark.parametrize("dtype,arch", [pytest.param(dtype, arch, marks=() if arch == "trm" else pytest.mark.slow)
                                        for dtype in ["float32", "bfloat16"] for arch in ARCHS])
def test_compiled_eval_step_is_one_graph_and_equals_eager(arch, dtype):
    torch.manual_seed(0)
    core = RecurrentReasoner(ModelConfig(**TINY, **ARCHS[arch], forward_dtype=dtype)).eval().inner
    inputs = torch.randint(1, 6, (4, 16))
    with torch.inference_mode():
        z = torch.randn(4, 16, 32).to(getattr(torch, dtype))
    torch._dynamo.reset()
    compiled = torch.compile(core, fullgraph=True, dynamic=False, backend="aot_eager")  # fails on any graph break
    for a, b in zip(eval_steps(core, z, inputs), eval_steps(compiled, z, inputs)):
        assert torch.equal(a, b)


def test_compiled_training_step_is_one_graph_and_equals_eager():
    """Forward with grad through the compiled core, backward, every parameter's gradient (float32)."""
    def train_step(compile_it):
        torch.manual_seed(0)
        head = ACTLossHead(RecurrentReasoner(ModelConfig(**TINY, forward_dtype="float32", halt_exploration_prob=0)))
        if compile_it:
            torch._dynamo.reset()
            head.model.inner.compile(fullgraph=True, dynamic=False, backend="aot_eager")
        batch = {"inputs": torch.randint(1, 6, (4, 16)), "labels": torch.randint(1, 6, (4, 16)),
                 "puzzle_identifiers": torch.zeros(4, dtype=torch.int32)}
        carry = head.initial_carry(batch)
        losses = []
        for _ in range(2):
            carry, loss, _, _ = head(carry, batch)
            loss.backward()
            losses.append(loss.detach())
        return losses, {n: p.grad for n, p in head.named_parameters()}

    eager_losses, eager_grads = train_step(False)
    compiled_losses, compiled_grads = train_step(True)
    assert eager_grads.keys() == compiled_grads.keys()  # compiling in place keeps the names checkpoints use
    torch.testing.assert_close(compiled_losses, eager_losses, rtol=1e-6, atol=1e-6)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_compile_setting():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for setting, device, expected in [(None, cpu, False), (None, cuda, True), (False, cuda, False), (True, cpu, True)]:
        core = RecurrentReasoner(ModelConfig(**TINY)).inner
        assert compile_core(core, setting, device) is expected
        assert (core._compiled_call_impl is not None) is expected  # compiled lazily: nothing ran yet


@pytest.mark.slow
def test_inductor_eval_step_is_close_to_eager():
    """Inductor's generated kernels (minutes to compile on a CPU): float32 results within rounding of eager."""
    torch.manual_seed(0)
    core = RecurrentReasoner(ModelConfig(**TINY, forward_dtype="float32")).eval().inner
    inputs = torch.randint(1, 6, (4, 16))
    with torch.inference_mode():
        z = torch.randn(4, 16, 32)
    torch._dynamo.reset()
    compiled = torch.compile(core, fullgraph=True, dynamic=False)
    for a, b in zip(eval_steps(core, z, inputs), eval_steps(compiled, z, inputs)):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
