"""The recurrent reasoner: EqR, and TRM / feed-forward as configurations of it.

One supervision step (SPEC "Model"):
    x = sqrt(hidden) * embed(inputs)
    repeat H_cycles times (all but the last without gradient):
        repeat L_cycles times: z_L = f(z_L, z_H + x)
        z_H = f(z_H, z_L)
    logits = lm_head(z_H);  q = q_head(z_H[:, 0])[0]
with the shared block stack f(h, inj) = (1 - lambda) h + lambda blocks(h + inj) + noise_scale N(0, I).

EqR: lambda 0.95, noise 0.01, every row starts from fresh random latents.
TRM: lambda 1, noise 0, every row starts from the same fixed latents.
Feed-forward: `feedforward: true` -> z_H = blocks(x) once through L_layers untied blocks.
"""
import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from models import halting
from models.layers import (Attention, CastedEmbedding, CastedLinear, Rotary, SwiGLU, reuse_weight_casts, rms_norm,
                           trunc_normal_)
from utils.errors import ConfigError
from utils.typecheck import check_range, check_types

# Keys that the reference's arch config carries but that do not shape the model here.
# (Their halting keys act_inference, halt_threshold, halt_confirm_* and no_ACT_continue are fields below.)
REFERENCE_ONLY_KEYS = {"name", "short_name", "loss", "H_layers", "disable_act_halt", "batch_size"}


@dataclass
class ModelConfig:
    seq_len: int
    vocab_size: int
    hidden_size: int = 512
    num_heads: int = 8
    expansion: float = 4.0
    L_layers: int = 2
    H_cycles: int = 3
    L_cycles: int = 6
    mlp_t: bool = False  # Sudoku: mix tokens with a SwiGLU over the sequence axis instead of attention
    pos_encodings: str | None = "rope"  # rope | rope2d | none
    rope_theta: float = 10000.0
    board_height: int | None = None
    board_width: int | None = None
    rms_norm_eps: float = 1e-5
    forward_dtype: str = "bfloat16"
    halt_max_steps: int = 16
    halt_exploration_prob: float = 0.1
    act_halting: bool = True  # False: rows halt only at halt_max_steps, in training too (no ACT)
    # The authors' halting rule (models/halting.py), in training and, with act_inference, in evaluate.py
    act_inference: bool = False  # evaluate.py's default for act_inference: halted trajectories leave the pool
    halt_threshold: float = 0.0
    halt_confirm_steps: int = 0
    halt_confirm_mode: str = "consecutive"  # or cumulative
    no_ACT_continue: bool = True  # False: halt on q_halt > q_continue + threshold (a model with a continue head)
    lambda_: float = 0.95
    noise_scale: float = 0.01
    random_init: bool = True  # False: TRM's fixed initial latents
    H_init_std: float = 1.0
    L_init_std: float = 1.0
    feedforward: bool = False

    def __post_init__(self):
        def fail(key, msg):
            raise ConfigError(f"arch.{key}: {msg}")

        check_types(self, prefix="arch.")
        for key in ("expansion", "rope_theta", "rms_norm_eps"):
            check_range("arch.", key, getattr(self, key), low=0, low_open=True)
        for key in ("H_init_std", "L_init_std"):
            check_range("arch.", key, getattr(self, key), low=0)

        for key in ("seq_len", "vocab_size", "hidden_size", "num_heads", "L_layers", "H_cycles", "halt_max_steps"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                fail(key, f"expected a positive integer, got {getattr(self, key)!r}")
        if self.L_cycles < 0:
            fail("L_cycles", f"expected >= 0, got {self.L_cycles}")
        if self.pos_encodings is None:
            self.pos_encodings = "none"
        if self.pos_encodings not in ("rope", "rope2d", "none"):
            fail("pos_encodings", f"expected one of rope, rope2d, none, got {self.pos_encodings!r}")
        if not self.mlp_t:
            if self.hidden_size % self.num_heads:
                fail("num_heads", f"{self.num_heads} does not divide hidden_size {self.hidden_size}")
            if self.pos_encodings != "none" and (self.hidden_size // self.num_heads) % (4 if self.pos_encodings == "rope2d" else 2):
                fail("num_heads", f"head dim {self.hidden_size // self.num_heads} is too odd for {self.pos_encodings}")
            if self.pos_encodings == "rope2d" and math.prod(self.board) != self.seq_len:
                fail("board_height", f"rope2d needs board_height * board_width == seq_len {self.seq_len}, got {self.board}")
        if self.forward_dtype not in ("bfloat16", "float16", "float32"):
            fail("forward_dtype", f"expected bfloat16, float16 or float32, got {self.forward_dtype!r}")
        if not 0 < self.lambda_ <= 1:
            fail("lambda_", f"expected 0 < lambda_ <= 1, got {self.lambda_}")
        if self.noise_scale < 0:
            fail("noise_scale", f"expected >= 0, got {self.noise_scale}")
        if not 0 <= self.halt_exploration_prob <= 1:
            fail("halt_exploration_prob", f"expected a probability, got {self.halt_exploration_prob}")
        try:
            rule = self.halt_rule
        except ConfigError as e:
            raise ConfigError(f"arch.{e}") from None
        self.halt_confirm_mode = halting.CONFIRM_MODES[self.halt_confirm_mode.lower()]  # the authors' aliases too

    @property
    def halt_rule(self) -> halting.HaltRule:
        return halting.HaltRule(self.halt_threshold, self.halt_confirm_steps, self.halt_confirm_mode)

    @property
    def board(self) -> tuple[int, int]:
        if self.board_height is not None and self.board_width is not None:
            return self.board_height, self.board_width
        side = math.isqrt(self.seq_len)
        if side * side != self.seq_len:
            raise ConfigError(f"arch.board_height: seq_len {self.seq_len} is not square; set board_height and board_width")
        return side, side

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.forward_dtype)

    @property
    def blocks_per_step(self) -> int:
        """Block applications (the NFE unit) in one supervision step."""
        calls = 1 if self.feedforward else self.H_cycles * (self.L_cycles + 1)
        return calls * self.L_layers

    @classmethod
    def from_dict(cls, arch: dict, strict: bool = True, **overrides) -> "ModelConfig":
        """Build from an arch config dict (ours or the reference's); unknown keys fail when `strict`."""
        known = {f.name for f in fields(cls)}
        merged = {**arch, **overrides}
        unknown = set(merged) - known - REFERENCE_ONLY_KEYS
        if unknown and strict:
            raise ConfigError(f"arch.{sorted(unknown)[0]}: unknown model option (known: {', '.join(sorted(known))})")
        missing = {"seq_len", "vocab_size"} - set(merged)
        if missing:
            raise ConfigError(f"arch.{sorted(missing)[0]}: required (normally taken from the dataset)")
        return cls(**{k: v for k, v in merged.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


class Block(nn.Module):
    """Post-norm block: h = norm(h + mix(h)); h = norm(h + SwiGLU(h))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.eps = config.rms_norm_eps
        if config.mlp_t:
            self.mlp_t = SwiGLU(config.seq_len, config.expansion)
        else:
            self.self_attn = Attention(config.hidden_size, config.num_heads)
        self.mlp = SwiGLU(config.hidden_size, config.expansion)

    def forward(self, h: torch.Tensor, rotary: Rotary | None) -> torch.Tensor:
        if hasattr(self, "mlp_t"):  # token mixing over the sequence axis, normed per hidden channel
            h = h.transpose(1, 2)
            h = rms_norm(h + self.mlp_t(h), self.eps).transpose(1, 2)
        else:
            h = rms_norm(h + self.self_attn(h, rotary), self.eps)
        return rms_norm(h + self.mlp(h), self.eps)


class BlockStack(nn.Module):
    """The shared module f(h, inj) = (1 - lambda) h + lambda blocks(h + inj) + noise_scale eps."""

    def __init__(self, config: ModelConfig, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(Block(config) for _ in range(num_layers))
        self.lambda_ = config.lambda_
        self.noise_scale = config.noise_scale

    def forward(self, h: torch.Tensor, injection: torch.Tensor, rotary: Rotary | None, sampler) -> torch.Tensor:
        u = h + injection
        for layer in self.layers:
            u = layer(u, rotary)
        if self.lambda_ == 1 and self.noise_scale == 0:  # TRM: the plain update, bit for bit
            return u
        return (1 - self.lambda_) * h + self.lambda_ * u + self.noise_scale * sampler.noise(h)


class TorchSampler:
    """Default source of the model's randomness: torch's global generator.

    Evaluation can pass another object with the same two methods (e.g. one keyed by puzzle
    and trajectory index) so that answers do not depend on batching.
    """

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn_like(like)

    def initial_state(self, rows: torch.Tensor, shape: tuple, dtype: torch.dtype, device, std: float) -> torch.Tensor:
        return trunc_normal_(torch.empty((len(rows), *shape), dtype=dtype, device=device), std=std)


TORCH_SAMPLER = TorchSampler()


class ReasoningCore(nn.Module):
    """One supervision step of the recursion, from latents (z_H, z_L) and inputs to logits and q."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        hidden, dtype = config.hidden_size, config.dtype
        self.embed_scale = math.sqrt(hidden)
        self.embed_tokens = CastedEmbedding(config.vocab_size, hidden, init_std=1 / self.embed_scale, dtype=dtype)
        self.lm_head = CastedLinear(hidden, config.vocab_size)
        self.q_head = CastedLinear(hidden, 2, bias=True)
        with torch.no_grad():
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5)
        self.L_level = BlockStack(config, config.L_layers)
        self.rotary = None
        if not config.mlp_t and config.pos_encodings != "none":
            board = config.board if config.pos_encodings == "rope2d" else None
            self.rotary = Rotary(hidden // config.num_heads, config.seq_len, config.rope_theta, board)
        if not config.random_init:  # TRM: fixed latents drawn once; saved so that a reload keeps them
            self.register_buffer("H_init", trunc_normal_(torch.empty(hidden, dtype=dtype), std=config.H_init_std))
            self.register_buffer("L_init", trunc_normal_(torch.empty(hidden, dtype=dtype), std=config.L_init_std))

    def reset_latents(self, z_H: torch.Tensor, z_L: torch.Tensor, reset: torch.Tensor, sampler,
                      fresh_std: float | None = None) -> None:
        """Overwrite, in place, the latents of the rows where `reset` is true with fresh initial states.

        fresh_std: a model with fixed initial latents (TRM) starts these rows from fresh truncated-normal
        draws of this std instead (evaluation at B > 1, as the reference). A model trained from random
        latents always draws with its own H_init_std / L_init_std.
        """
        if not self.config.random_init and fresh_std is None:
            mask = reset.view(-1, 1, 1)
            z_H.copy_(torch.where(mask, self.H_init, z_H))
            z_L.copy_(torch.where(mask, self.L_init, z_L))
            return
        H_std, L_std = (self.config.H_init_std, self.config.L_init_std) if self.config.random_init else (fresh_std,) * 2
        rows = reset.nonzero().flatten()
        if len(rows):
            shape = z_H.shape[1:]
            z_H[rows] = sampler.initial_state(rows, shape, z_H.dtype, z_H.device, H_std)
            z_L[rows] = sampler.initial_state(rows, shape, z_L.dtype, z_L.device, L_std)

    def recursion(self, z_H, z_L, x, sampler):
        for _ in range(self.config.L_cycles):
            z_L = self.L_level(z_L, z_H + x, self.rotary, sampler)
        z_H = self.L_level(z_H, z_L, self.rotary, sampler)
        return z_H, z_L

    def forward(self, z_H: torch.Tensor, z_L: torch.Tensor, inputs: torch.Tensor, sampler=None):
        """-> (z_H, z_L) detached, logits [batch, seq, vocab] in forward dtype, q [batch] float32."""
        sampler = TORCH_SAMPLER if sampler is None else sampler
        if torch.compiler.is_compiling():  # the compiler fuses the weight casts itself
            return self.step(z_H, z_L, inputs, sampler)
        with reuse_weight_casts():
            return self.step(z_H, z_L, inputs, sampler)

    def step(self, z_H, z_L, inputs, sampler):
        z_H, z_L = self.segment(z_H, z_L, inputs, sampler)
        logits, q = self.readout(z_H)
        return z_H.detach(), z_L.detach(), logits, q

    def segment(self, z_H, z_L, inputs, sampler):
        """The segment map (z_H, z_L) -> the latents after one supervision step, not detached.

        Backward reaches only the last H cycle (no_grad); forward-mode AD (torch.func.jvp) passes
        through all of them, which is what evaluation/lyapunov.py differentiates.
        """
        x = self.embed_scale * self.embed_tokens(inputs)
        if self.config.feedforward:
            return self.L_level(z_H, x, self.rotary, sampler), z_L
        with torch.no_grad():
            for _ in range(self.config.H_cycles - 1):
                z_H, z_L = self.recursion(z_H, z_L, x, sampler)
        return self.recursion(z_H, z_L, x, sampler)

    def readout(self, z_H):
        """-> logits [batch, seq, vocab] in forward dtype, halting logit q [batch] float32."""
        return self.lm_head(z_H), self.q_head(z_H[:, 0]).float()[:, 0]

    def q_continue(self, z_H):
        """The continue logit [batch] float32 of a model that halts on q_halt > q_continue + threshold, else None."""
        return None if self.config.no_ACT_continue else self.q_head(z_H[:, 0]).float()[:, 1]


def compile_core(core: ReasoningCore, setting: bool | None, device: torch.device) -> bool:
    """torch.compile one supervision step of `core` in place (parameter names, so checkpoints, stay the same).

    setting None: compile on CUDA only; on a CPU compiling takes minutes and runs no faster.
    The eager path (False) is the one that is bit-identical to the authors' model; compiled
    kernels fuse and reorder floating-point work, so their rounding differs slightly.
    """
    enabled = device.type == "cuda" if setting is None else setting
    if enabled:
        core.compile(dynamic=False)
    return enabled


@dataclass
class Carry:
    """Per-row state kept across training steps: latents, step counts, halted flags and the row's puzzle."""
    z_H: torch.Tensor
    z_L: torch.Tensor
    steps: torch.Tensor  # int32 [batch]
    halted: torch.Tensor  # bool [batch]; a halted row is replaced by a fresh puzzle at the next step
    data: dict  # inputs, labels, puzzle_identifiers of the puzzle each row is working on
    counter: torch.Tensor | None = None  # int32 [batch]: halting signals counted (models/halting.py); None: 0

    def to_dict(self) -> dict:
        return {"z_H": self.z_H, "z_L": self.z_L, "steps": self.steps, "halted": self.halted, "data": dict(self.data),
                "counter": self.counter}

    @classmethod
    def from_dict(cls, d: dict) -> "Carry":
        return cls(d["z_H"], d["z_L"], d["steps"], d["halted"], dict(d["data"]), d.get("counter"))


class RecurrentReasoner(nn.Module):
    """The ACT wrapper: keeps a carry per row, resets halted rows and decides which rows halt."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.inner = ReasoningCore(config)

    def initial_carry(self, batch: dict) -> Carry:
        n, device = batch["inputs"].shape[0], batch["inputs"].device
        shape = (n, self.config.seq_len, self.config.hidden_size)
        return Carry(
            z_H=torch.zeros(shape, dtype=self.config.dtype, device=device),
            z_L=torch.zeros(shape, dtype=self.config.dtype, device=device),
            steps=torch.zeros(n, dtype=torch.int32, device=device),
            halted=torch.ones(n, dtype=torch.bool, device=device),  # every row starts by taking a puzzle
            data={k: torch.zeros_like(v) for k, v in batch.items()},
            counter=torch.zeros(n, dtype=torch.int32, device=device),
        )

    def forward(self, carry: Carry, batch: dict, sampler=None) -> tuple[Carry, dict]:
        sampler = TORCH_SAMPLER if sampler is None else sampler
        reset = carry.halted
        z_H, z_L = carry.z_H.clone(), carry.z_L.clone()
        self.inner.reset_latents(z_H, z_L, reset, sampler)
        data = {k: torch.where(reset.view(-1, *[1] * (v.dim() - 1)), batch[k], v) for k, v in carry.data.items()}
        steps = torch.where(reset, 0, carry.steps) + 1

        counter = torch.zeros_like(steps) if carry.counter is None else torch.where(reset, 0, carry.counter)

        z_H, z_L, logits, q = self.inner(z_H, z_L, data["inputs"], sampler)

        with torch.no_grad():
            config, max_steps = self.config, self.config.halt_max_steps
            halted = steps >= max_steps
            if self.training and max_steps > 1 and config.act_halting:
                # The halting rule, but with probability halt_exploration_prob only after a random minimum.
                explore = torch.rand_like(q) < config.halt_exploration_prob
                min_steps = explore * torch.randint_like(steps, low=2, high=max_steps + 1)
                vote = halting.signal(q, self.inner.q_continue(z_H), config.halt_threshold)
                counter = halting.count(counter, vote, config.halt_confirm_mode == "cumulative")
                halted = halting.halts(halting.fired(counter, vote, config.halt_confirm_steps), steps, max_steps, min_steps)
        return Carry(z_H, z_L, steps, halted, data, counter), {"logits": logits, "q_halt_logits": q}
