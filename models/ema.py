"""Exponential moving average of a model's parameters (not its buffers, nor parameters marked `sign_sgd`,
which the official TRM / HRM keep as buffers: models/eqr.PuzzleEmbedding)."""
import torch
from torch import nn


class EMA:
    """shadow = rate * shadow + (1 - rate) * param after every optimizer step; starts at the initial weights.

    `state_dict()` is `{"rate": float, "shadow": {name: tensor}}`, the shape the authors'
    checkpoints use for their `ema` entry (`shadow` with the same names as the model).
    """

    def __init__(self, model: nn.Module, rate: float = 0.999):
        if not 0 < rate <= 1:
            raise ValueError(f"ema_rate: expected 0 < rate <= 1, got {rate}")
        self.rate = rate
        self.shadow = {name: p.detach().clone().float() for name, p in model.named_parameters()
                       if p.requires_grad and not getattr(p, "sign_sgd", False)}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        names, params = zip(*[(n, p) for n, p in model.named_parameters() if n in self.shadow])
        shadows = [self.shadow[n] for n in names]
        # Two products and a sum, not a lerp: rounds exactly like the authors' (1 - rate) * param + rate * shadow.
        torch._foreach_mul_(shadows, self.rate)
        torch._foreach_add_(shadows, torch._foreach_mul([p.detach().float() for p in params], 1 - self.rate))

    def state_dict(self) -> dict:
        return {"rate": self.rate, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) - set(state["shadow"])
        if missing:
            raise KeyError(f"ema.shadow: missing parameter {sorted(missing)[0]}")
        self.rate = state.get("rate", self.rate)
        for name, tensor in state["shadow"].items():
            if name in self.shadow:
                self.shadow[name].copy_(tensor)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the shadow weights into `model` (for evaluation or export)."""
        for name, p in model.named_parameters():
            if name in self.shadow:
                p.copy_(self.shadow[name])
