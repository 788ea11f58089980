import math

import torch
import torch.nn.functional as F

from models.eqr import ModelConfig, RecurrentReasoner
from models.losses import ACTLossHead, log_stablemax, softmax_cross_entropy, stablemax_cross_entropy
from utils.constants import IGNORE_LABEL_ID


def stablemax_by_hand(row):
    s = [x + 1 if x >= 0 else 1 / (1 - x) for x in row]
    return [math.log(v / sum(s)) for v in s]


def test_log_stablemax_matches_formula():
    x = torch.tensor([[-3.0, -0.5, 0.0, 0.7, 2.0]], dtype=torch.float64)
    assert torch.allclose(log_stablemax(x), torch.tensor([stablemax_by_hand(x[0].tolist())], dtype=torch.float64))


def test_stablemax_cross_entropy_float64_and_ignored_labels():
    logits = torch.randn(2, 3, 5).bfloat16()
    labels = torch.tensor([[1, 4, IGNORE_LABEL_ID], [0, 2, 3]])
    loss = stablemax_cross_entropy(logits, labels)
    assert loss.dtype == torch.float64 and loss[0, 2] == 0
    expected = -stablemax_by_hand(logits[1, 2].double().tolist())[3]
    assert math.isclose(loss[1, 2].item(), expected, rel_tol=1e-12)


def test_stablemax_gradient_is_finite_at_one():
    logits = torch.ones(1, 1, 4, dtype=torch.float64, requires_grad=True)  # 1/(1-x) would divide by zero
    stablemax_cross_entropy(logits, torch.tensor([[2]])).sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_softmax_cross_entropy_matches_torch():
    logits, labels = torch.randn(2, 3, 5), torch.tensor([[1, 4, IGNORE_LABEL_ID], [0, 2, 3]])
    loss = softmax_cross_entropy(logits, labels)
    assert loss[0, 2] == 0
    assert torch.allclose(loss[1], F.cross_entropy(logits[1], labels[1], reduction="none"))


def test_act_loss_is_row_mean_lm_plus_half_bce():
    cfg = ModelConfig(seq_len=4, vocab_size=5, hidden_size=16, num_heads=2, H_cycles=1, L_cycles=1,
                      halt_max_steps=2, forward_dtype="float32")
    head = ACTLossHead(RecurrentReasoner(cfg))
    head.eval()
    batch = {"inputs": torch.randint(1, 5, (3, 4), dtype=torch.int32),
             "labels": torch.tensor([[1, 2, 3, 4], [1, IGNORE_LABEL_ID, IGNORE_LABEL_ID, 2], [IGNORE_LABEL_ID] * 4]),
             "puzzle_identifiers": torch.zeros(3, dtype=torch.int32)}
    torch.manual_seed(0)
    carry, loss, metrics, out = head(head.initial_carry(batch), batch)
    logits, q, labels = out["logits"], out["q_halt_logits"], batch["labels"]
    per_token = stablemax_cross_entropy(logits, labels)
    counts = (labels != IGNORE_LABEL_ID).sum(-1).clamp_min(1)
    lm = (per_token.sum(-1) / counts).sum()
    pred = logits.argmax(-1)
    row_right = torch.tensor([bool(((pred[i] == labels[i]) | (labels[i] == IGNORE_LABEL_ID)).all()) for i in range(3)])
    assert row_right[2]  # a row with no labels counts as right
    bce = F.binary_cross_entropy_with_logits(q, row_right.float(), reduction="sum")
    assert torch.allclose(loss, lm + 0.5 * bce)
    assert metrics["count"] == 0  # nothing halted at step 1 of 2 in eval mode
    carry, loss, metrics, out = head(carry, batch)
    assert metrics["count"] == 2  # both labelled rows halted; the empty row is not counted
    assert 0 <= metrics["accuracy"] <= 2 and metrics["steps"] == 4
