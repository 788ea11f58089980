"""Token losses and the ACT loss head that wraps the recurrent model for training.

Labels use IGNORE_LABEL_ID (-100) for padding; every other cell counts.
"""
import torch
import torch.nn.functional as F
from torch import nn

from utils.constants import IGNORE_LABEL_ID
from models.eqr import Carry


def log_stablemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log of stablemax: s(x) = x + 1 for x >= 0, 1 / (1 - x) otherwise, normalised over `dim`."""
    # clamp keeps the unused branch finite (x = 1 would give 1/0 and a NaN gradient)
    s = torch.where(x < 0, 1 / (1 - x.clamp(max=0)), x + 1)
    return torch.log(s / s.sum(dim=dim, keepdim=True))


def stablemax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token stablemax cross-entropy, computed in float64; 0 where labels are ignored."""
    valid = labels != IGNORE_LABEL_ID
    logp = log_stablemax(logits.double())
    picked = logp.gather(-1, torch.where(valid, labels, 0).long().unsqueeze(-1)).squeeze(-1)
    return torch.where(valid, -picked, 0)


def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token softmax cross-entropy in float32; 0 where labels are ignored."""
    flat = F.cross_entropy(logits.float().flatten(0, -2), labels.long().flatten(),
                           ignore_index=IGNORE_LABEL_ID, reduction="none")
    return flat.view(labels.shape)


LOSSES = {"stablemax_cross_entropy": stablemax_cross_entropy, "softmax_cross_entropy": softmax_cross_entropy}


class ACTLossHead(nn.Module):
    """LM loss (mean over each row's labelled tokens, summed over rows) + 0.5 * BCE(q, row exactly right).

    Both terms cover every row at every step. Metrics are sums over the rows that halted at
    this step (`count` of them), so they add up across steps and ranks before dividing.
    """

    def __init__(self, model: nn.Module, loss_type: str = "stablemax_cross_entropy"):
        super().__init__()
        if loss_type not in LOSSES:
            raise ValueError(f"arch.loss.loss_type: expected one of {', '.join(LOSSES)}, got {loss_type!r}")
        self.model = model
        self.token_loss = LOSSES[loss_type]

    def initial_carry(self, batch: dict) -> Carry:
        return self.model.initial_carry(batch)

    def forward(self, carry: Carry, batch: dict, sampler=None) -> tuple[Carry, torch.Tensor, dict, dict]:
        carry, outputs = self.model(carry, batch, sampler)
        logits, q = outputs["logits"], outputs["q_halt_logits"]
        labels = carry.data["labels"]

        with torch.no_grad():
            mask = labels != IGNORE_LABEL_ID
            n_labels = mask.sum(-1)
            correct = mask & (logits.argmax(-1) == labels)
            row_correct = correct.sum(-1) == n_labels
            counted = carry.halted & (n_labels > 0)
            metrics = {
                "count": counted.sum(),
                "accuracy": torch.where(counted, correct.sum(-1) / n_labels.clamp_min(1), 0).sum(),
                "exact_accuracy": (counted & row_correct).sum(),
                "q_halt_accuracy": (counted & ((q > 0) == row_correct)).sum(),
                "steps": torch.where(counted, carry.steps, 0).sum(),
            }

        lm_loss = (self.token_loss(logits, labels) / n_labels.clamp_min(1).unsqueeze(-1)).sum()
        q_halt_loss = F.binary_cross_entropy_with_logits(q, row_correct.to(q.dtype), reduction="sum")
        loss = lm_loss + 0.5 * q_halt_loss
        metrics.update(lm_loss=lm_loss.detach(), q_halt_loss=q_halt_loss.detach())
        if "target_q_continue" in outputs:  # HRM's continue head (no_ACT_continue: false), in training
            q_continue_loss = F.binary_cross_entropy_with_logits(outputs["q_continue_logits"],
                                                                 outputs["target_q_continue"], reduction="sum")
            loss = lm_loss + 0.5 * (q_halt_loss + q_continue_loss)
            metrics.update(q_continue_loss=q_continue_loss.detach())
        return carry, loss, metrics, outputs


def summarize_metrics(sums: dict, global_batch_size: int) -> dict:
    """Turn summed step metrics into the numbers a log shows (losses per global batch row)."""
    count = max(float(sums["count"]), 1.0)
    return {
        "lm_loss": float(sums["lm_loss"]) / global_batch_size,
        "q_halt_loss": float(sums["q_halt_loss"]) / global_batch_size,
        "accuracy": float(sums["accuracy"]) / count,
        "exact_accuracy": float(sums["exact_accuracy"]) / count,
        "q_halt_accuracy": float(sums["q_halt_accuracy"]) / count,
        "steps": float(sums["steps"]) / count,
        "count": float(sums["count"]),
    }
