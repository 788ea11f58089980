import pytest
import torch

from models.ema import EMA


def test_ema_tracks_parameters_and_copies_back():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, rate=0.9)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for n, p in model.named_parameters():
        assert torch.allclose(ema.shadow[n], 0.9 * start[n] + 0.1 * p.detach())
    target = torch.nn.Linear(3, 2)
    ema.copy_to(target)
    assert torch.allclose(target.weight, ema.shadow["weight"])


def test_ema_state_round_trip_and_bad_rate():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, rate=0.99)
    other = EMA(torch.nn.Linear(3, 2), rate=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.rate == 0.99 and torch.equal(other.shadow["bias"], ema.shadow["bias"])
    with pytest.raises(ValueError, match="ema_rate"):
        EMA(model, rate=1.5)
