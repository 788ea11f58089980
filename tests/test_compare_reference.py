"""The comparison inside scripts/compare_reference.py (the authors' code itself is not needed here)."""
import math
import os
import sys

import torch

from models.eqr import ModelConfig, RecurrentReasoner
from models.losses import ACTLossHead

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import compare_reference as cr  # noqa: E402


def runs(steps=4):
    torch.manual_seed(0)
    one = [{"loss": torch.randn((), dtype=torch.float64), "logits": torch.randn(2, 3, 5).bfloat16(),
            "halted": torch.rand(2) < 0.5, "grad/w": torch.randn(3, 4), "weight/w": torch.randn(3, 4),
            "ema/w": torch.randn(3, 4)} for _ in range(steps)]
    return one, [{name: t.clone() for name, t in step.items()} for step in one]


def nudge(t: torch.Tensor, index=(0, 0)) -> torch.Tensor:
    """t with one element moved to the next representable value."""
    t = t.clone()
    t[index] = torch.nextafter(t[index], torch.tensor(math.inf, dtype=t.dtype))
    return t


def test_identical_runs_compare_equal_nan_included():
    theirs, ours = runs()
    theirs[1]["weight/w"][2, 3] = ours[1]["weight/w"][2, 3] = math.nan
    assert cr.compare_runs(theirs, ours) is None


def test_one_ulp_in_one_tensor_is_found_with_its_step_and_name():
    theirs, ours = runs()
    ours[2]["grad/w"] = nudge(ours[2]["grad/w"])
    ulp = (ours[2]["grad/w"][0, 0] - theirs[2]["grad/w"][0, 0]).abs().item()
    assert ulp > 0
    assert cr.compare_runs(theirs, ours) == ((3, "grad/w", ulp), (3, "grad/w", ulp))


def test_first_difference_follows_the_order_of_a_step_and_largest_is_kept_apart():
    theirs, ours = runs()
    ours[1]["ema/w"] = nudge(ours[1]["ema/w"])
    ours[1]["logits"] = nudge(ours[1]["logits"], (0, 0, 0))  # made before the EMA in a step, though "ema" < "logits"
    ours[3]["weight/w"] = ours[3]["weight/w"] + 0.5
    (first_step, first_name, _), (big_step, big_name, big) = cr.compare_runs(theirs, ours)
    assert (first_step, first_name) == (2, "logits")
    assert (big_step, big_name) == (4, "weight/w") and abs(big - 0.5) < 1e-6


def test_mismatches_that_have_no_size_count_as_infinite():
    theirs, ours = runs()
    ours[0]["halted"] = ~ours[0]["halted"]
    assert cr.compare_runs(theirs, ours)[0] == (1, "halted", 1.0)
    for change in (lambda s: s.pop("ema/w"), lambda s: s.update(loss=s["loss"].float()),
                   lambda s: s["weight/w"].__setitem__((0, 0), math.nan)):
        theirs, ours = runs()
        change(ours[1])
        assert cr.compare_runs(theirs, ours)[0][0] == 2 and cr.compare_runs(theirs, ours)[0][2] == math.inf
    theirs, ours = runs()
    assert cr.compare_runs(theirs, ours[:3])[0] == (4, "halted", math.inf)


def tiny_head(dtype="float32"):
    config = ModelConfig.from_dict(dict(seq_len=16, vocab_size=6, hidden_size=16, num_heads=2, L_layers=1,
                                        H_cycles=2, L_cycles=1, halt_max_steps=3, forward_dtype=dtype))
    return ACTLossHead(RecurrentReasoner(config))


def test_our_training_step_is_deterministic_and_a_one_ulp_weight_change_shows_in_the_first_logits():
    torch.manual_seed(0)
    a = tiny_head()
    b, c = tiny_head(), tiny_head()
    b.load_state_dict(a.state_dict())
    c.load_state_dict(a.state_dict())
    with torch.no_grad():
        c.model.inner.lm_head.weight.copy_(nudge(c.model.inner.lm_head.weight))
    batches = cr.make_batches(3, seq_len=16, vocab=6)
    first = cr.run_ours(a, batches, seed=5)
    assert sorted(first[0]) == sorted(["lr", "loss", "logits", "q_halt_logits", "halted", "steps", "z_H", "z_L"]
                                      + [f"{kind}/{n}" for kind in ("grad", "weight", "ema")
                                         for n, _ in a.named_parameters()])
    assert cr.compare_runs(first, cr.run_ours(b, batches, seed=5)) is None
    assert "identical, 3 steps" in cr.describe("eqr tiny", None, first)
    result = cr.compare_runs(first, cr.run_ours(c, batches, seed=5))
    assert result[0][:2] == (1, "logits")
    assert "DIFFERS, first at step 1 in logits" in cr.describe("eqr tiny", result, first)
