import io
import math
import sys

import torch

from models import optim
from models.optim import AdamATan2, lr_at, make_optimizer


def reference_steps(p0, grads, lr, b1, b2, wd):
    """The AdamATan2 rule written out in plain Python floats, one element at a time."""
    p, m, v, out = list(p0), [0.0] * len(p0), [0.0] * len(p0), []
    for t, g in enumerate(grads, start=1):
        for i in range(len(p)):
            p[i] *= 1 - lr * wd
            m[i] = b1 * m[i] + (1 - b1) * g[i]
            v[i] = b2 * v[i] + (1 - b2) * g[i] ** 2
            p[i] -= lr / (1 - b1**t) * math.atan2(m[i], math.sqrt(v[i]) / math.sqrt(1 - b2**t))
        out.append(list(p))
    return out


def test_adam_atan2_matches_the_formula():
    torch.manual_seed(0)
    p0 = torch.randn(7, dtype=torch.float64)
    grads = [torch.randn(7, dtype=torch.float64) for _ in range(5)]
    grads[2][3] = 0.0  # atan2(0, 0) = 0: no epsilon needed
    param = torch.nn.Parameter(p0.clone())
    opt = AdamATan2([param], lr=0.01, betas=(0.9, 0.95), weight_decay=1.0)
    expected = reference_steps(p0.tolist(), [g.tolist() for g in grads], 0.01, 0.9, 0.95, 1.0)
    for g, want in zip(grads, expected):
        param.grad = g.clone()
        opt.step()
        assert torch.allclose(param.detach(), torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-12)


def test_adam_atan2_fits_a_toy_regression():
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    w_true = torch.randn(8, 1)
    y = x @ w_true
    model = torch.nn.Linear(8, 1, bias=False)
    opt = AdamATan2(model.parameters(), lr=0.02, betas=(0.9, 0.95), weight_decay=0.0)
    first = None
    for _ in range(300):
        loss = torch.nn.functional.mse_loss(model(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 1e-3 * first


def test_state_dict_round_trip_resumes_identically():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(4))
    opt = AdamATan2([a], lr=0.1)
    for _ in range(3):
        a.grad = torch.randn(4)
        opt.step()
    b = torch.nn.Parameter(a.detach().clone())
    opt_b = AdamATan2([b], lr=0.1)
    buffer = io.BytesIO()  # through a file, as a resume does
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    opt_b.load_state_dict(torch.load(buffer, weights_only=True))
    g = torch.randn(4)
    a.grad, b.grad = g.clone(), g.clone()
    opt.step()
    opt_b.step()
    assert torch.equal(a, b)


def test_missing_or_broken_cuda_package_falls_back_silently(monkeypatch, recwarn):
    # a broken install: the python package imports but its CUDA backend is missing
    broken = type(sys)("adam_atan2")
    broken.AdamATan2 = object
    monkeypatch.setitem(sys.modules, "adam_atan2", broken)
    monkeypatch.setitem(sys.modules, "adam_atan2_backend", None)  # import raises ImportError
    assert optim.cuda_adam_atan2() is None
    opt = make_optimizer([torch.nn.Parameter(torch.zeros(3))], lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    assert type(opt) is AdamATan2 and len(recwarn) == 0


def test_lr_schedule_warmup_then_cosine_to_floor():
    assert lr_at(1, 1e-4, 2000, 50_000, 1.0) == 1e-4 / 2000
    assert lr_at(2000, 1e-4, 2000, 50_000, 1.0) == 1e-4
    assert lr_at(40_000, 1e-4, 2000, 50_000, 1.0) == 1e-4  # lr_min_ratio 1: flat after warm-up
    assert math.isclose(lr_at(50_000, 1.0, 0, 50_000, 0.1), 0.1)
    assert math.isclose(lr_at(25_000, 1.0, 0, 50_000, 0.0), 0.5)
