"""AdamATan2 (Everett et al. 2024): Adam with atan2 in place of the epsilon-guarded division.

Per parameter, at step t:
    p <- p * (1 - lr * weight_decay)
    m <- b1 m + (1 - b1) g
    v <- b2 v + (1 - b2) g^2
    p <- p - lr / (1 - b1^t) * atan2(m, sqrt(v) / sqrt(1 - b2^t))
This is the rule of the CUDA package `adam-atan2` 0.0.3, which the authors trained with; both
moments are updated as lerps (m.lerp(g, 1 - b1), v.lerp(g^2, 1 - b2)), as that kernel does.
`make_optimizer` uses that package when it works on the parameters' device and this
torch version otherwise, so a missing or broken CUDA build never stops training.

Parameters marked `sign_sgd` (the official TRM's and HRM's puzzle embedding) take their
sign-SGD instead, on the rows a gradient reached: p <- p * (1 - lr * weight_decay) - lr * sign(g),
with the same lr and weight decay (their puzzle_emb_lr and puzzle_emb_weight_decay equal lr and
weight_decay in all their Sudoku and maze commands); they are always updated by this file's class.
"""
import math

import torch


class AdamATan2(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.99), weight_decay: float = 1e-2):
        if lr < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"AdamATan2: bad hyper-parameters lr={lr}, betas={betas}, weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            if group.get("sign_sgd"):
                sign_sgd_step(group["params"], lr, wd)
                continue
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] = state["step"] + 1  # not in place: a loaded state may share the tensor
                t = state["step"].item()
                m, v, g = state["exp_avg"], state["exp_avg_sq"], p.grad
                p.mul_(1 - lr * wd)
                m.lerp_(g, 1 - b1)
                v.lerp_(g * g, 1 - b2)
                denom = v.sqrt().div_(math.sqrt(1 - b2**t))
                p.add_(torch.atan2(m, denom), alpha=-lr / (1 - b1**t))
        return loss


def sign_sgd_step(params, lr: float, weight_decay: float) -> None:
    """Their sparse-embedding update, on the rows (identifiers) whose gradient is not all zero."""
    for p in params:
        if p.grad is None:
            continue
        rows = p.grad.ne(0).any(-1)
        p[rows] = p[rows].mul_(1.0 - lr * weight_decay).add_(torch.sign(p.grad[rows]), alpha=-lr)


def cuda_adam_atan2():
    """The `adam_atan2` CUDA package's optimizer class, or None when it is absent or its backend is broken."""
    try:
        from adam_atan2 import AdamATan2 as CudaAdamATan2
        import adam_atan2_backend  # noqa: F401  (the part that is missing on broken installs)
    except Exception:
        return None
    return CudaAdamATan2


def make_optimizer(params, lr: float, betas, weight_decay: float) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    sign = [p for p in params if getattr(p, "sign_sgd", False)]
    if sign:
        rest = [p for p in params if not getattr(p, "sign_sgd", False)]
        groups = [{"params": rest}, {"params": sign, "sign_sgd": True}]
        return AdamATan2(groups, lr=lr, betas=betas, weight_decay=weight_decay)
    cuda_cls = cuda_adam_atan2()
    if cuda_cls is not None and params and all(p.is_cuda for p in params):
        return cuda_cls(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    return AdamATan2(params, lr=lr, betas=betas, weight_decay=weight_decay)


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up over `warmup_steps` (step 1 uses base_lr / warmup_steps), then cosine down to min_ratio * base_lr."""
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
