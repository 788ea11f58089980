import pytest
import torch

from models.eqr import ConfigError, ModelConfig, RecurrentReasoner, TorchSampler
from models.losses import ACTLossHead

SUDOKU = dict(seq_len=81, vocab_size=11, mlp_t=True)  # the paper's Sudoku preset (ModelConfig defaults)
MAZE = dict(seq_len=900, vocab_size=6, L_layers=1, L_cycles=4, hidden_size=128)
TINY = dict(seq_len=16, vocab_size=6, hidden_size=32, num_heads=4, H_cycles=2, L_cycles=2, forward_dtype="float32")


def build(**kw):
    return ACTLossHead(RecurrentReasoner(ModelConfig(**kw)))


def batch_for(cfg, n=2):
    return {
        "inputs": torch.randint(1, cfg["vocab_size"], (n, cfg["seq_len"]), dtype=torch.int32),
        "labels": torch.randint(1, cfg["vocab_size"], (n, cfg["seq_len"]), dtype=torch.int32),
        "puzzle_identifiers": torch.zeros(n, dtype=torch.int32),
    }


@pytest.mark.parametrize("preset,count", [(SUDOKU, 4_855_298), (MAZE, 263_938)])
def test_preset_parameter_count_names_and_output_shapes(preset, count):
    model = build(**preset)
    assert sum(p.numel() for p in model.parameters()) == count
    names = set(model.state_dict())
    assert {"model.inner.embed_tokens.embedding_weight", "model.inner.lm_head.weight",
            "model.inner.q_head.weight", "model.inner.q_head.bias"} <= names
    block = "mlp_t.gate_up_proj.weight" if preset.get("mlp_t") else "self_attn.qkv_proj.weight"
    assert f"model.inner.L_level.layers.0.{block}" in names
    assert all(p.dtype == torch.float32 for p in model.parameters())
    batch = batch_for(preset)
    with torch.no_grad():
        carry, loss, metrics, out = model(model.initial_carry(batch), batch)
    assert out["logits"].shape == (2, preset["seq_len"], preset["vocab_size"])
    assert out["logits"].dtype == torch.bfloat16
    assert out["q_halt_logits"].shape == (2,) and out["q_halt_logits"].dtype == torch.float32
    assert carry.z_H.shape == (2, preset["seq_len"], preset.get("hidden_size", 512))
    assert torch.isfinite(loss)


def test_q_head_starts_at_minus_five():
    model = build(**TINY)
    assert torch.all(model.model.inner.q_head.weight == 0) and torch.all(model.model.inner.q_head.bias == -5)


def test_trm_update_is_plain_blocks_of_h_plus_injection():
    cfg = ModelConfig(**TINY, lambda_=1.0, noise_scale=0.0, random_init=False)
    stack = RecurrentReasoner(cfg).inner.L_level
    h, inj = torch.randn(2, 16, 32), torch.randn(2, 16, 32)
    expected = h + inj
    for layer in stack.layers:
        expected = layer(expected, None)
    torch.manual_seed(1)
    assert torch.equal(stack(h, inj, None, TorchSampler()), expected)


def test_eqr_update_is_damped_and_noisy():
    cfg = ModelConfig(**TINY, lambda_=0.95, noise_scale=0.01)
    stack = RecurrentReasoner(cfg).inner.L_level
    h, inj = torch.randn(2, 16, 32), torch.randn(2, 16, 32)
    u = h + inj
    for layer in stack.layers:
        u = layer(u, None)
    torch.manual_seed(3)
    noise = torch.randn_like(h)
    torch.manual_seed(3)
    out = stack(h, inj, None, TorchSampler())
    assert torch.allclose(out, 0.05 * h + 0.95 * u + 0.01 * noise, atol=1e-6)


def test_reset_rows_get_fresh_random_states_and_others_keep_theirs():
    core = RecurrentReasoner(ModelConfig(**TINY)).inner
    z_H, z_L = torch.full((3, 16, 32), 7.0), torch.full((3, 16, 32), 7.0)
    core.reset_latents(z_H, z_L, torch.tensor([True, False, True]), TorchSampler())
    assert torch.all(z_H[1] == 7) and torch.all(z_L[1] == 7)
    for z in (z_H, z_L):
        assert not torch.equal(z[0], z[2])  # every row its own draw
        assert not torch.equal(z[0, 0], z[0, 1])  # every position its own draw
        assert abs(z[[0, 2]].std().item() - 1.0) < 0.1 and z[[0, 2]].abs().max() < 2.5


def test_trm_rows_reset_to_the_fixed_vectors():
    core = RecurrentReasoner(ModelConfig(**TINY, random_init=False, lambda_=1.0, noise_scale=0.0)).inner
    z_H, z_L = torch.zeros(3, 16, 32), torch.zeros(3, 16, 32)
    core.reset_latents(z_H, z_L, torch.tensor([True, False, True]), TorchSampler())
    assert torch.equal(z_H[0], core.H_init.expand(16, 32)) and torch.equal(z_H[2], core.H_init.expand(16, 32))
    assert torch.equal(z_L[0], core.L_init.expand(16, 32)) and torch.all(z_H[1] == 0)
    assert "model.inner.H_init" in ACTLossHead(RecurrentReasoner(core.config)).state_dict()


def test_halting_rule_with_exploration(monkeypatch):
    model = RecurrentReasoner(ModelConfig(**TINY, halt_max_steps=4, halt_exploration_prob=0.0))
    batch = batch_for(TINY, n=4)
    inner = model.inner
    with torch.no_grad():  # q > 0 for every row
        inner.q_head.bias.fill_(5.0)
    model.train()
    carry = model.initial_carry(batch)
    carry, _ = model(carry, batch)
    assert carry.halted.all() and (carry.steps == 1).all()  # no exploration: halt as soon as q > 0

    model.config.halt_exploration_prob = 1.0  # always explore: a minimum step count drawn from [2, 4]
    carry = model.initial_carry(batch)
    carry, _ = model(carry, batch)
    assert not carry.halted.any()  # step 1 is below every minimum

    with torch.no_grad():  # q < 0: only the step limit halts
        inner.q_head.bias.fill_(-5.0)
    model.config.halt_exploration_prob = 0.1
    carry = model.initial_carry(batch)
    for step in range(1, 5):
        carry, _ = model(carry, batch)
        assert carry.halted.all() == (step == 4) and not (carry.halted.any() and step < 4)

    model.eval()  # evaluation ignores q: every row runs halt_max_steps steps
    with torch.no_grad():
        inner.q_head.bias.fill_(5.0)
    carry = model.initial_carry(batch)
    for step in range(1, 5):
        with torch.no_grad():
            carry, _ = model(carry, batch)
        assert carry.halted.all() == (step == 4)


def test_exploration_minimum_is_drawn_in_range():
    torch.manual_seed(0)
    model = RecurrentReasoner(ModelConfig(**TINY, halt_max_steps=4, halt_exploration_prob=1.0))
    with torch.no_grad():
        model.inner.q_head.bias.fill_(5.0)
    batch = batch_for(TINY, n=64)
    carry = model.initial_carry(batch)
    halt_step = torch.zeros(64, dtype=torch.int32)
    for step in range(1, 5):
        carry, _ = model(carry, batch)
        halt_step = torch.where((halt_step == 0) & carry.halted, step, halt_step)
        carry.halted = carry.halted & False  # keep every row running to see when it first may halt
    assert halt_step.min() >= 2 and halt_step.max() <= 4 and len(set(halt_step.tolist())) == 3


def test_halted_rows_take_new_puzzles_and_restart_counting():
    model = RecurrentReasoner(ModelConfig(**TINY, halt_max_steps=2))
    model.eval()
    first, second = batch_for(TINY), batch_for(TINY)
    carry = model.initial_carry(first)
    with torch.no_grad():
        carry, _ = model(carry, first)
        assert torch.equal(carry.data["inputs"], first["inputs"])
        carry, _ = model(carry, second)  # not halted yet: keeps its puzzle
        assert torch.equal(carry.data["inputs"], first["inputs"]) and carry.halted.all()
        carry, _ = model(carry, second)
        assert torch.equal(carry.data["inputs"], second["inputs"]) and (carry.steps == 1).all()


def test_feedforward_is_one_pass_of_untied_blocks():
    cfg = ModelConfig(**{**TINY, "L_layers": 3, "H_cycles": 1}, feedforward=True, halt_max_steps=1, lambda_=1.0,
                      noise_scale=0.0, random_init=False, H_init_std=0.0, L_init_std=0.0)
    model = RecurrentReasoner(cfg)
    assert cfg.blocks_per_step == 3 and len(model.inner.L_level.layers) == 3
    batch = batch_for(TINY)
    with torch.no_grad():
        carry, out = model(model.initial_carry(batch), batch)
        x = model.inner.embed_scale * model.inner.embed_tokens(batch["inputs"])
        for layer in model.inner.L_level.layers:
            x = layer(x, model.inner.rotary)
    assert torch.allclose(out["logits"], model.inner.lm_head(x)) and carry.halted.all()


def test_gradient_flows_only_through_the_last_recursion():
    model = build(**TINY)
    batch = batch_for(TINY)
    carry, loss, _, _ = model(model.initial_carry(batch), batch)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert not carry.z_H.requires_grad


def test_blocks_per_step():
    assert ModelConfig(seq_len=81, vocab_size=11, mlp_t=True).blocks_per_step == 3 * 7 * 2
    assert ModelConfig(**MAZE).blocks_per_step == 3 * 5 * 1


@pytest.mark.parametrize("bad,key", [
    (dict(num_heads=7), "arch.num_heads"),
    (dict(pos_encodings="alibi"), "arch.pos_encodings"),
    (dict(pos_encodings="rope2d", seq_len=15), "arch.board_height"),
    (dict(forward_dtype="float8"), "arch.forward_dtype"),
    (dict(lambda_=0.0), "arch.lambda_"),
    (dict(hidden_size=0), "arch.hidden_size"),
])
def test_bad_config_fails_with_one_clear_line(bad, key):
    with pytest.raises(ConfigError) as err:
        ModelConfig(**{**TINY, **bad})
    msg = str(err.value)
    assert msg.startswith(key) and "\n" not in msg


def test_from_dict_ignores_reference_keys_and_rejects_unknown_ones():
    arch = {"name": "eqr@EqRModel", "loss": {"name": "losses@ACTLossHead"}, "H_layers": 0, "hidden_size": 32, "num_heads": 4}
    assert ModelConfig.from_dict(arch, seq_len=16, vocab_size=6).hidden_size == 32
    with pytest.raises(ConfigError, match="arch.hiden_size"):
        ModelConfig.from_dict({"hiden_size": 32}, seq_len=16, vocab_size=6)
    with pytest.raises(ConfigError, match="arch.seq_len"):
        ModelConfig.from_dict({"hidden_size": 32})


def test_without_act_halting_rows_run_to_the_step_limit_in_training():
    model = RecurrentReasoner(ModelConfig(**TINY, halt_max_steps=3, act_halting=False))
    with torch.no_grad():
        model.inner.q_head.bias.fill_(5.0)  # q > 0 would halt every row at once with ACT
    model.train()
    batch = batch_for(TINY, n=4)
    carry = model.initial_carry(batch)
    for step in range(1, 4):
        carry, _ = model(carry, batch)
        assert carry.halted.all() == (step == 3) and not (carry.halted.any() and step < 3)
