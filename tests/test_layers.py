import math

import torch

from models import layers
from models.layers import Attention, Rotary, SwiGLU, rms_norm, rotate_half, trunc_normal_


def test_rms_norm_unit_rms_and_dtype():
    x = torch.randn(3, 5, 64).bfloat16() * 7
    y = rms_norm(x)
    assert y.dtype == torch.bfloat16
    rms = y.float().square().mean(-1).sqrt()
    assert torch.allclose(rms, torch.ones_like(rms), atol=1e-2)


def test_swiglu_inner_width_rule():
    # round(4 * 512 * 2/3) = 1365 -> 1536; round(4 * 81 * 2/3) = 216 -> 256; round(4 * 128 * 2/3) = 341 -> 512
    assert SwiGLU(512, 4).down_proj.weight.shape == (512, 1536)
    assert SwiGLU(81, 4).down_proj.weight.shape == (81, 256)
    assert SwiGLU(128, 4).gate_up_proj.weight.shape == (1024, 128)


def test_trunc_normal_has_requested_std_and_bounds():
    t = trunc_normal_(torch.empty(200_000), std=1.5)
    assert abs(t.std().item() - 1.5) < 0.02
    bound = 2 * 1.5 / math.sqrt(1 - 2 * 2 * math.exp(-2) / math.sqrt(2 * math.pi) / math.erf(2 / math.sqrt(2)))
    assert t.abs().max().item() <= bound + 1e-5


def test_rotary_matches_rotate_half_formula():
    head_dim, seq = 8, 5
    rot = Rotary(head_dim, seq, theta=10000.0)
    x = torch.randn(2, seq, 3, head_dim)
    inv = 1.0 / 10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim)
    ang = torch.arange(seq).float()[:, None] * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    expected = x * cos[:, None] + rotate_half(x) * sin[:, None]
    assert torch.allclose(rot.apply(x), expected, atol=1e-6)
    assert rotate_half(torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist() == [-3.0, -4.0, 1.0, 2.0]


def test_rotary_preserves_norm_and_relative_positions():
    rot = Rotary(16, 10, theta=10000.0, board=(2, 5))
    x = torch.randn(1, 10, 2, 16)
    assert torch.allclose(rot.apply(x).norm(dim=-1), x.norm(dim=-1), atol=1e-5)


def test_attention_is_non_causal_and_uses_sdpa_on_cpu(monkeypatch):
    monkeypatch.setattr(layers, "flash_attn_func", lambda *a, **k: (_ for _ in ()).throw(AssertionError("flash used on CPU")))
    attn = Attention(32, 4)
    x = torch.randn(2, 6, 32)
    y = attn(x, None)
    # changing the last token must change the first output (no causal mask)
    x2 = x.clone()
    x2[:, -1] += 1
    assert not torch.allclose(attn(x2, None)[:, 0], y[:, 0])


def test_casted_linear_computes_in_input_dtype():
    lin = layers.CastedLinear(8, 4)
    assert lin.weight.dtype == torch.float32
    assert lin(torch.randn(2, 8).bfloat16()).dtype == torch.bfloat16
