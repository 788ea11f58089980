"""The halting rule (models/halting.py) against a plain loop written from the authors' models/trm.py."""

import pytest
import torch

from models import halting
from models.eqr import ModelConfig, RecurrentReasoner
from utils.errors import ConfigError


def first_halt(rule: halting.HaltRule, q_halt: list[float], q_continue: list[float] | None, max_steps: int) -> int:
    """The step (1-based) at which one trajectory halts, one step at a time as the authors' forward does."""
    counter = 0
    for step in range(1, max_steps + 1):
        q = q_halt[step - 1]
        vote = q > (rule.threshold if q_continue is None else q_continue[step - 1] + rule.threshold)
        if vote:
            counter += 1
        elif rule.confirm_mode == "consecutive" or rule.confirm_steps == 0:
            counter = 0
        fire = counter >= 1 + rule.confirm_steps if rule.confirm_steps > 0 else vote
        if step >= max_steps or (fire and step >= rule.min_steps):
            return step
    raise AssertionError("unreachable: the cap always halts")


RULES = halting.rules_from([-0.5, 0.0, 0.7], [0, 1, 3], ["consecutive", "cumulative"], [1, 3])


@pytest.mark.parametrize("with_continue", [False, True])
def test_vectorised_rules_equal_the_step_by_step_loop(with_continue):
    g = torch.Generator().manual_seed(0)
    rows, max_steps = 300, 9
    # Values on a coarse grid, so that ties with the threshold happen (q == threshold does not halt).
    q_halt = (torch.randint(-6, 7, (rows, max_steps), generator=g) * 0.25).float()
    q_cont = (torch.randint(-2, 3, (rows, max_steps), generator=g) * 0.25).float() if with_continue else None
    rules = halting.stack(RULES, "cpu")
    counter = torch.zeros(len(RULES), rows, dtype=torch.int32)
    halted_at = torch.zeros(len(RULES), rows, dtype=torch.long)
    for step in range(1, max_steps + 1):
        steps = torch.full((rows,), step, dtype=torch.int32)
        counter, halted = halting.step(rules, counter, q_halt[:, step - 1], None if q_cont is None else q_cont[:, step - 1],
                                       steps, max_steps)
        halted_at = torch.where((halted_at == 0) & halted, step, halted_at)
    assert (halted_at[:, :] == max_steps).any() and (halted_at < max_steps).any()
    for r, rule in enumerate(RULES):
        expected = [first_halt(rule, q_halt[i].tolist(), None if q_cont is None else q_cont[i].tolist(), max_steps)
                    for i in range(rows)]
        assert halted_at[r].tolist() == expected, rule


def test_the_modes_differ_and_the_minimum_delays():
    rule = lambda **kw: halting.HaltRule(**{"threshold": 0.0, **kw})
    qs = [1, -1, 1, -1, 1, -1, -1, -1]  # signals at steps 1, 3, 5
    assert first_halt(rule(), qs, None, 8) == 1
    assert first_halt(rule(confirm_steps=2, confirm_mode="cumulative"), qs, None, 8) == 5
    assert first_halt(rule(confirm_steps=1), qs, None, 8) == 8  # never two in a row: the cap
    assert first_halt(rule(min_steps=2), qs, None, 8) == 3
    assert first_halt(rule(min_steps=6), qs, None, 8) == 8  # no signal from step 6 on
    assert first_halt(rule(confirm_steps=1, confirm_mode="cumulative", min_steps=6), qs, None, 8) == 6  # counted before


def test_rules_are_checked_and_spelled_as_the_authors():
    assert halting.HaltRule(0, 2, "accumulate").confirm_mode == "cumulative"
    assert halting.HaltRule(0, 0, "cumulative") == halting.HaltRule()  # no confirmation: the mode changes nothing
    assert len(halting.rules_from(0.0, 0, ["consecutive", "cumulative"], 1)) == 1
    assert halting.HaltRule(0.5, 2, "cumulative", 3).label == "q>0.5 x3 cum min3"
    for kwargs, key in [({"confirm_mode": "sometimes"}, "halt_confirm_mode"), ({"confirm_steps": -1}, "halt_confirm_steps"),
                        ({"min_steps": 0}, "halt_min_steps"), ({"threshold": "x"}, "halt_threshold")]:
        with pytest.raises(ConfigError, match=key):
            halting.HaltRule(**kwargs)
    with pytest.raises(ConfigError, match="arch.halt_confirm_mode"):
        ModelConfig(seq_len=4, vocab_size=3, hidden_size=8, num_heads=2, halt_confirm_mode="never")
    config = ModelConfig.from_dict({"seq_len": 4, "vocab_size": 3, "act_inference": True, "halt_threshold": 0.5,
                                    "halt_confirm_steps": 2, "halt_confirm_mode": "total", "no_ACT_continue": True})
    assert config.halt_rule == halting.HaltRule(0.5, 2, "cumulative") and config.act_inference


def test_training_halts_by_the_configured_rule():
    """Training reads the authors' keys (no exploration here): a row halts once 1 + confirm signals are counted."""
    tiny = dict(seq_len=4, vocab_size=3, hidden_size=8, num_heads=2, H_cycles=1, L_cycles=1, L_layers=1,
                forward_dtype="float32", halt_max_steps=6, halt_exploration_prob=0.0)
    batch = {"inputs": torch.ones(3, 4, dtype=torch.int32), "labels": torch.ones(3, 4, dtype=torch.int32)}
    for confirm, expected in [(0, 1), (2, 3)]:
        model = RecurrentReasoner(ModelConfig(**tiny, halt_confirm_steps=confirm)).train()
        with torch.no_grad():
            model.inner.q_head.bias.fill_(1.0)  # q > 0 at every step
        carry = model.initial_carry(batch)
        for step in range(1, expected + 1):
            carry, _ = model(carry, batch)
            assert bool(carry.halted.all()) == (step == expected)
