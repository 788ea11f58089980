"""Building blocks of the EqR block: norm, SwiGLU, rotary positions, attention.

Every tensor shape below is [batch, seq_len, hidden] unless stated. Weights are
float32 masters; each forward casts them to the dtype of its input, so the model
runs in whatever dtype the latents are kept in (bfloat16 by default).
"""
import math
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn

try:  # optional CUDA kernels; SDPA is used whenever they are absent
    from flash_attn_interface import flash_attn_func  # flash-attn 3
except ImportError:
    try:
        from flash_attn import flash_attn_func  # flash-attn 2
    except ImportError:
        flash_attn_func = None


def trunc_normal_params(std: float, bound: float = 2.0) -> tuple[float, float, float]:
    """(lo, hi, scale) for a normal truncated at +-bound sigma with std `std`: draw u uniform in
    (lo, hi), then x = sqrt(2) * scale * erfinv(u), clamped to +-bound * scale.

    Truncation at 2 sigma shrinks the std to ~0.88; `scale` divides by that factor so that `std`
    is the std of the samples, not of the untruncated normal.
    """
    lo, hi = math.erf(-bound / math.sqrt(2)), math.erf(bound / math.sqrt(2))
    pdf = math.exp(-0.5 * bound**2) / math.sqrt(2 * math.pi)
    mass = (hi - lo) / 2
    truncated_var = 1.0 - 2 * bound * pdf / mass
    return lo, hi, std / math.sqrt(truncated_var)


def trunc_normal_(tensor: torch.Tensor, std: float = 1.0, bound: float = 2.0, generator=None) -> torch.Tensor:
    """Fill `tensor` in place with a normal truncated at +-bound sigma whose std is `std` (trunc_normal_params)."""
    with torch.no_grad():
        if std == 0:
            return tensor.zero_()
        lo, hi, scale = trunc_normal_params(std, bound)
        tensor.uniform_(lo, hi, generator=generator).erfinv_().mul_(math.sqrt(2) * scale)
        return tensor.clamp_(-bound * scale, bound * scale)


def rms_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """RMS norm over the last axis, no weight; computed in float32, returned in x's dtype."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + eps)).to(x.dtype)


def find_multiple(value: int, divisor: int) -> int:
    return -(value // -divisor) * divisor


_weight_casts: ContextVar[dict | None] = ContextVar("weight_casts", default=None)


@contextmanager
def reuse_weight_casts():
    """Inside this block, a weight used without grad is cast to the forward dtype once, not at every call.

    Meant to span one forward (a supervision step runs the same blocks up to 42 times): the
    cache holds copies, so it must never outlive a change of the weights (an optimizer step).
    Calls with grad still cast every time, so each use keeps its own cast in the graph and the
    weight gradient is summed in float32 exactly as without the cache.
    """
    token = _weight_casts.set({})
    try:
        yield
    finally:
        _weight_casts.reset(token)


def cast_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if weight.dtype == dtype:
        return weight
    if torch.compiler.is_compiling() or torch.is_grad_enabled():  # compiled code dedupes the casts itself
        return weight.to(dtype)
    cache = _weight_casts.get()
    if cache is None:
        return weight.to(dtype)
    key = (id(weight), dtype)
    if key not in cache:
        cache[key] = weight.to(dtype)
    return cache[key]


class CastedLinear(nn.Module):
    """Linear layer with float32 master weights, truncated-normal init with std 1/sqrt(fan_in)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(trunc_normal_(torch.empty(out_features, in_features), std=in_features**-0.5))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else cast_weight(self.bias, x.dtype)
        return F.linear(x, cast_weight(self.weight, x.dtype), bias)


class CastedEmbedding(nn.Module):
    """Token embedding with a float32 master table, looked up in `dtype`."""

    def __init__(self, num_embeddings: int, dim: int, init_std: float, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype
        self.embedding_weight = nn.Parameter(trunc_normal_(torch.empty(num_embeddings, dim), std=init_std))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embedding_weight.to(self.dtype))


class SwiGLU(nn.Module):
    """down(silu(gate) * up); inner width = expansion * width * 2/3 rounded up to a multiple of 256."""

    def __init__(self, width: int, expansion: float):
        super().__init__()
        inner = find_multiple(round(expansion * width * 2 / 3), 256)
        self.gate_up_proj = CastedLinear(width, 2 * inner)
        self.down_proj = CastedLinear(inner, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


def rotary_tables(head_dim: int, positions: torch.Tensor, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [len(positions), head_dim] of the rotate-half form (frequencies repeated twice)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    freqs = torch.outer(positions.float(), inv_freq)
    table = torch.cat([freqs, freqs], dim=-1)
    return table.cos(), table.sin()


class Rotary(nn.Module):
    """Rotary position tables, computed once at construction.

    `1d`: positions 0..seq_len-1 over the whole head. `2d`: the first half of each head
    rotates by the row index, the second half by the column index of a height x width board.
    """

    def __init__(self, head_dim: int, seq_len: int, theta: float, board: tuple[int, int] | None = None):
        super().__init__()
        if board is None:
            cos, sin = rotary_tables(head_dim, torch.arange(seq_len), theta)
        else:
            height, width = board
            half = head_dim // 2
            rows = torch.arange(seq_len) // width
            cols = torch.arange(seq_len) % width
            cos_r, sin_r = rotary_tables(half, rows, theta)
            cos_c, sin_c = rotary_tables(half, cols, theta)
            cos, sin = torch.cat([cos_r, cos_c], -1), torch.cat([sin_r, sin_c], -1)
        self.split_halves = board is not None
        self.register_buffer("cos", cos[:, None, :], persistent=False)  # [seq, 1, head_dim]
        self.register_buffer("sin", sin[:, None, :], persistent=False)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """x: [batch, seq, heads, head_dim] -> same, rotated; computed in float32."""
        x32 = x.float()
        if self.split_halves:  # each half rotates on its own, by row and by column
            a, b = x32.chunk(2, dim=-1)
            rotated = torch.cat([rotate_half(a), rotate_half(b)], dim=-1)
        else:
            rotated = rotate_half(x32)
        return (x32 * self.cos + rotated * self.sin).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


class Attention(nn.Module):
    """Non-causal multi-head self-attention with a fused qkv projection and optional rotary positions."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.qkv_proj = CastedLinear(hidden_size, 3 * hidden_size)
        self.o_proj = CastedLinear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor, rotary: Rotary | None) -> torch.Tensor:
        batch, seq, _ = x.shape
        q, k, v = self.qkv_proj(x).view(batch, seq, 3, self.num_heads, self.head_dim).unbind(2)
        if rotary is not None:
            q, k = rotary.apply(q), rotary.apply(k)
        if (flash_attn_func is not None and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)
                and not torch.compiler.is_compiling()):  # an extension call would split the compiled graph
            y = flash_attn_func(q, k, v, causal=False)
            y = y[0] if isinstance(y, tuple) else y
        else:
            y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        return self.o_proj(y.reshape(batch, seq, -1))
