"""The recurrent reasoner: EqR, and TRM / feed-forward as configurations of it.

One supervision step:
    x = sqrt(hidden) * embed(inputs)
    repeat H_cycles times (all but the last without gradient):
        repeat L_cycles times: z_L = f(z_L, z_H + x)
        z_H = f(z_H, z_L)
    logits = lm_head(z_H);  q = q_head(z_H[:, 0])[0]
with the shared block stack f(h, inj) = (1 - lambda) h + lambda blocks(h + inj) + noise_scale N(0, I).

EqR: lambda 0.95, noise 0.01, every row starts from fresh random latents.
TRM: lambda 1, noise 0, every row starts from the same fixed latents.
Feed-forward: `feedforward: true` -> z_H = blocks(x) once through L_layers untied blocks.
The official TRM and HRM (docs/reference_notes.md, "The official TRM and HRM") add a learned
puzzle embedding as prefix positions, and HRM updates z_H with a block stack of its own
(`H_level_layers`), back-propagates through the last z_L and z_H update only (`one_step_grad`) and
halts on q_halt > q_continue, the continue head learning a bootstrapped target (`no_ACT_continue: false`).
"""
import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from models import halting
from models.layers import (Attention, CastedEmbedding, CastedLinear, Rotary, SwiGLU, reuse_weight_casts, rms_norm,
                           trunc_normal_)
from utils.errors import ConfigError
from utils.typecheck import check_fields, choice, must, positive, ranged

# Keys that the reference's arch config carries but that do not shape the model here.
# (Their halting keys act_inference, halt_threshold, halt_confirm_* and no_ACT_continue are fields below.)
REFERENCE_ONLY_KEYS = {"name", "short_name", "loss", "H_layers", "disable_act_halt", "batch_size"}


def prefix_positions(puzzle_emb_ndim: int, puzzle_emb_len: int, hidden_size: int) -> int:
    """Positions a puzzle embedding of puzzle_emb_ndim takes: puzzle_emb_len, or by default as few as hold it."""
    if puzzle_emb_ndim == 0:
        return 0
    return puzzle_emb_len or -(puzzle_emb_ndim // -hidden_size)


POS_ENCODINGS = ("rope", "rope2d", "learned", "none")


def _not_below(low, default):  # 'arch.noise_scale: expected >= 0, got -1' (NaN passes, as it always did)
    return must(lambda v: not v < low, f">= {low}", default)


@dataclass
class ModelConfig:
    seq_len: int = positive()
    vocab_size: int = positive()
    hidden_size: int = positive(512)
    num_heads: int = positive(8)
    expansion: float = ranged(0, low_open=True, default=4.0)
    L_layers: int = positive(2)
    H_cycles: int = positive(3)
    L_cycles: int = _not_below(0, 6)
    mlp_t: bool = False  # Sudoku: mix tokens with a SwiGLU over the sequence axis instead of attention
    pos_encodings: str | None = must(lambda v: v in POS_ENCODINGS, f"one of {', '.join(POS_ENCODINGS)}", "rope")
    rope_theta: float = ranged(0, low_open=True, default=10000.0)
    board_height: int | None = None
    board_width: int | None = None
    rms_norm_eps: float = ranged(0, low_open=True, default=1e-5)
    forward_dtype: str = choice("bfloat16", "float16", "float32", default="bfloat16")
    halt_max_steps: int = positive(16)
    halt_exploration_prob: float = must(lambda v: 0 <= v <= 1, "a probability", 0.1)
    act_halting: bool = True  # False: rows halt only at halt_max_steps, in training too (no ACT)
    # The authors' halting rule (models/halting.py), in training and, with act_inference, in evaluate.py
    act_inference: bool = False  # evaluate.py's default for act_inference: halted trajectories leave the pool
    halt_threshold: float = 0.0
    halt_confirm_steps: int = 0
    halt_confirm_mode: str = "consecutive"  # or cumulative
    no_ACT_continue: bool = True  # False (HRM): halt on q_halt > q_continue + threshold; the continue head
    # learns a bootstrapped Q target in training
    lambda_: float = must(lambda v: 0 < v <= 1, "0 < lambda_ <= 1", 0.95)
    noise_scale: float = _not_below(0, 0.01)
    random_init: bool = True  # False: TRM's fixed initial latents
    H_init_std: float = ranged(0, default=1.0)
    L_init_std: float = ranged(0, default=1.0)
    feedforward: bool = False
    # The official TRM's and HRM's options; the defaults build EqR / our TRM as before. (HRM's H_layers is
    # H_level_layers here: in the EqR authors' configs that key builds nothing, config/reference_keys.py.)
    puzzle_emb_ndim: int = _not_below(0, 0)  # width of a learned embedding per puzzle identifier, put before the tokens (0: none)
    puzzle_emb_len: int = _not_below(0, 0)  # positions it takes (0: ceil(puzzle_emb_ndim / hidden_size)); the official TRM uses 16
    num_puzzle_identifiers: int = _not_below(1, 1)
    H_level_layers: int = _not_below(0, 0)  # HRM: > 0 gives z_H a block stack of its own, of this many blocks (z_L keeps L_layers)
    one_step_grad: bool = False  # HRM: gradient through the last z_L and z_H update only

    def __post_init__(self):
        def fail(key, msg):
            raise ConfigError(f"arch.{key}: {msg}")

        check_fields(self, prefix="arch.")
        if self.pos_encodings is None:
            self.pos_encodings = "none"
        if not self.mlp_t:
            if self.hidden_size % self.num_heads:
                fail("num_heads", f"{self.num_heads} does not divide hidden_size {self.hidden_size}")
            if self.pos_encodings in ("rope", "rope2d") and (self.hidden_size // self.num_heads) % (4 if self.pos_encodings == "rope2d" else 2):
                fail("num_heads", f"head dim {self.hidden_size // self.num_heads} is too odd for {self.pos_encodings}")
            if self.pos_encodings == "rope2d" and math.prod(self.board) != self.seq_len:
                fail("board_height", f"rope2d needs board_height * board_width == seq_len {self.seq_len}, got {self.board}")
        if self.puzzle_emb_ndim > self.prefix_len * self.hidden_size:
            fail("puzzle_emb_len", f"{self.puzzle_emb_len} positions of {self.hidden_size} cannot hold "
                                   f"puzzle_emb_ndim {self.puzzle_emb_ndim}")
        if self.prefix_len and self.pos_encodings == "rope2d":
            fail("pos_encodings", "rope2d has no place for puzzle-embedding positions (puzzle_emb_ndim > 0)")
        if self.one_step_grad and self.L_cycles < 1:
            fail("L_cycles", "one_step_grad needs L_cycles >= 1")
        try:
            self.halt_rule  # builds (and so checks) the rule
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
    def prefix_len(self) -> int:
        """Puzzle-embedding positions before the tokens (their logits are dropped)."""
        return prefix_positions(self.puzzle_emb_ndim, self.puzzle_emb_len, self.hidden_size)

    @property
    def latent_len(self) -> int:
        """Positions of z_H and z_L: the puzzle-embedding prefix, then seq_len tokens."""
        return self.prefix_len + self.seq_len

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.forward_dtype)

    @property
    def blocks_per_step(self) -> int:
        """Block applications (the NFE unit) in one supervision step."""
        if self.H_level_layers:
            return self.H_cycles * (self.L_cycles * self.L_layers + self.H_level_layers)
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
            self.mlp_t = SwiGLU(config.latent_len, config.expansion)
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


class PuzzleEmbedding(nn.Module):
    """A learned vector per puzzle identifier, zero at the start (the official TRM's and HRM's `puzzle_emb`).

    Theirs is a buffer outside the EMA, updated by a sign-SGD of its own; here `weights` is a
    parameter marked `sign_sgd`, which models/optim.py updates the same way and models/ema.py leaves out.
    """

    def __init__(self, num_identifiers: int, dim: int):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(num_identifiers, dim))
        self.weights.sign_sgd = True

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weights[ids]


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
        if config.H_level_layers:
            self.H_level = BlockStack(config, config.H_level_layers)
        if config.puzzle_emb_ndim:
            self.puzzle_emb = PuzzleEmbedding(config.num_puzzle_identifiers, config.puzzle_emb_ndim)
        if config.pos_encodings == "learned":
            self.embed_pos = CastedEmbedding(config.latent_len, hidden, init_std=1 / self.embed_scale, dtype=dtype)
        self.rotary = None
        if not config.mlp_t and config.pos_encodings in ("rope", "rope2d"):
            board = config.board if config.pos_encodings == "rope2d" else None
            self.rotary = Rotary(hidden // config.num_heads, config.latent_len, config.rope_theta, board)
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
        z_H = self.H_update(z_H, z_L, sampler)
        return z_H, z_L

    def H_update(self, z_H, z_L, sampler):
        level = self.H_level if self.config.H_level_layers else self.L_level
        return level(z_H, z_L, self.rotary, sampler)

    def forward(self, z_H: torch.Tensor, z_L: torch.Tensor, inputs: torch.Tensor, sampler=None,
                puzzle_identifiers: torch.Tensor | None = None, q_both: bool = False):
        """-> (z_H, z_L) detached, logits [batch, seq, vocab] in forward dtype, q [batch] float32
        (q_both: [batch, 2], the halt and the continue logit). puzzle_identifiers None: identifier 0."""
        sampler = TORCH_SAMPLER if sampler is None else sampler
        if torch.compiler.is_compiling():  # the compiler fuses the weight casts itself
            return self.step(z_H, z_L, inputs, sampler, puzzle_identifiers, q_both)
        with reuse_weight_casts():
            return self.step(z_H, z_L, inputs, sampler, puzzle_identifiers, q_both)

    def step(self, z_H, z_L, inputs, sampler, puzzle_identifiers=None, q_both=False):
        z_H, z_L = self.segment(z_H, z_L, inputs, sampler, puzzle_identifiers)
        logits, q = self.readout(z_H, q_both)
        return z_H.detach(), z_L.detach(), logits, q

    def embed(self, inputs, puzzle_identifiers=None):
        """Input injection x [batch, latent_len, hidden]: the puzzle-embedding prefix (if any), then the tokens."""
        x = self.embed_tokens(inputs)
        if self.config.puzzle_emb_ndim:
            if puzzle_identifiers is None:
                puzzle_identifiers = torch.zeros(len(inputs), dtype=torch.int32, device=inputs.device)
            prefix = self.config.prefix_len
            p = self.puzzle_emb(puzzle_identifiers).to(x.dtype)
            p = F.pad(p, (0, prefix * self.config.hidden_size - p.shape[-1])).view(-1, prefix, self.config.hidden_size)
            x = torch.cat((p, x), dim=-2)
        if self.config.pos_encodings == "learned":  # 1/sqrt(2) keeps the variance of the sum, as theirs
            x = 0.707106781 * (x + self.embed_pos.embedding_weight.to(x.dtype))
        return self.embed_scale * x

    def segment(self, z_H, z_L, inputs, sampler, puzzle_identifiers=None):
        """The segment map (z_H, z_L) -> the latents after one supervision step, not detached.

        Backward reaches only the last H cycle (no_grad), or with one_step_grad only the last z_L
        and z_H update; forward-mode AD (torch.func.jvp) passes through all of them, which is what
        evaluation/lyapunov.py differentiates.
        """
        if self.config.puzzle_emb_ndim or self.config.pos_encodings == "learned":
            x = self.embed(inputs, puzzle_identifiers)
        else:
            x = self.embed_scale * self.embed_tokens(inputs)
        if self.config.feedforward:
            return self.L_level(z_H, x, self.rotary, sampler), z_L
        if self.config.one_step_grad:
            with torch.no_grad():
                for _ in range(self.config.H_cycles - 1):
                    z_H, z_L = self.recursion(z_H, z_L, x, sampler)
                for _ in range(self.config.L_cycles - 1):
                    z_L = self.L_level(z_L, z_H + x, self.rotary, sampler)
            z_L = self.L_level(z_L, z_H + x, self.rotary, sampler)
            return self.H_update(z_H, z_L, sampler), z_L
        with torch.no_grad():
            for _ in range(self.config.H_cycles - 1):
                z_H, z_L = self.recursion(z_H, z_L, x, sampler)
        return self.recursion(z_H, z_L, x, sampler)

    def readout(self, z_H, q_both: bool = False):
        """-> logits [batch, seq, vocab] in forward dtype, halting logit q [batch] float32
        (q_both: [batch, 2], halt and continue). Puzzle-embedding positions have no logits."""
        if self.config.prefix_len:
            q = self.q_head(z_H[:, 0]).float()
            return self.lm_head(z_H)[:, self.config.prefix_len:], q if q_both else q[:, 0]
        if q_both:
            return self.lm_head(z_H), self.q_head(z_H[:, 0]).float()
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
        shape = (n, self.config.latent_len, self.config.hidden_size)
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
        ids = data.get("puzzle_identifiers")
        continue_head = not self.config.no_ACT_continue
        z_H, z_L, logits, q = self.inner(z_H, z_L, data["inputs"], sampler, ids, q_both=continue_head)
        q_halt, q_continue = (q[:, 0], q[:, 1]) if continue_head else (q, None)
        outputs = {"logits": logits, "q_halt_logits": q_halt}
        if continue_head:
            outputs["q_continue_logits"] = q_continue

        with torch.no_grad():
            config, max_steps = self.config, self.config.halt_max_steps
            last = steps >= max_steps
            halted = last
            if self.training and max_steps > 1 and config.act_halting:
                # The halting rule, but with probability halt_exploration_prob only after a random minimum.
                explore = torch.rand_like(q_halt) < config.halt_exploration_prob
                min_steps = explore * torch.randint_like(steps, low=2, high=max_steps + 1)
                vote = halting.signal(q_halt, q_continue, config.halt_threshold)
                counter = halting.count(counter, vote, config.halt_confirm_mode == "cumulative")
                halted = halting.halts(halting.fired(counter, vote, config.halt_confirm_steps), steps, max_steps, min_steps)
                if continue_head:
                    # HRM's continue target: the sigmoid of the next step's best Q (its halt Q alone at the
                    # last step), from one more step without gradient, with no replay buffer or target network.
                    next_q = self.inner(z_H, z_L, data["inputs"], sampler, ids, q_both=True)[3]
                    best = torch.where(last, next_q[:, 0], torch.maximum(next_q[:, 0], next_q[:, 1]))
                    outputs["target_q_continue"] = torch.sigmoid(best)
        return Carry(z_H, z_L, steps, halted, data, counter), outputs
